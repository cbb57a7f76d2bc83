# amaranth: UnusedElaboratable=no
"""Vector unit benchmark: elements per cycle per op and latency; writes build/bench/vector.json.

Figures are simulated cycles of the Verilated RTL (``default``: V = 8, max_len 1536), one run of
back-to-back commands, no stalls. Per op and dtype:

* **rate**: one command of 64 rows of 64 elements and one of 8 rows of 1536; elements per cycle
  from the command's first ``a`` beat taken to its last output beat (``end_to_end``, includes the
  pipeline fill) and over the output beats (``sustained``: beats / (last − first + 1) · V).
  Targets: sustained ≥ 0.95·V element-wise, ≥ 0.90·V for RMSNORM, QUANT_TOKEN and HADAMARD.
  QUANT_TOKEN and DEQUANT also run with ROW_SCALE (``_rowscale``, the layer's scale tables,
  written by two TABLE commands first). RMSNORM_FP32 (``rmsnorm_fp32``, fp32 rows whatever the
  dtype) runs once, as ``rmsnorm_fp32_int8``.
* **latency**: a one-row command of 64 elements: cycles from its first ``a`` beat taken to its
  first output beat, against ``VectorUnit.first_out_latency``.

The results are compared with golden (bit-exact) too. ``python -m bench.vector OP ...`` runs only
the named ops (``OPS`` names) and prints their figures without writing the JSON. The ECP5 figures
are ``make fpga TOP=vector_unit``'s (bench/fpga.py, minutes to hours): the JSON's ``fpga`` entry
copies them from build/bench/fpga-default.json and fpga-fpga.json (V = 2, the unit that fits
the device) when they exist, with ``current`` false when they
are of another netlist than today's; docs/vector.md quotes them.
"""

import json
import sys

import numpy as np

import golden
from hdl.config import get_config
from hdl.vector import VectorUnit
from sim.runner import BUILD
from sim.vector_api import OPS, run_commands

sys.path.insert(0, str(BUILD.parent / "tests"))
from vector_cases import random_case, table_cases  # noqa: E402

OPLIST = ([(op, dt, False) for op in OPS for dt in (("int8",) if op == "rmsnorm_fp32" else ("bf16", "int8"))]
          + [("quant_token", "bf16", True), ("quant_token", "int8", True), ("dequant", "int8", True)])


def main(argv=None):
    only = set(sys.argv[1:] if argv is None else argv)
    if only - set(OPS):
        print(f"unknown op(s) {', '.join(sorted(only - set(OPS)))}: choose from {', '.join(OPS)}")
        return 2
    cfg = get_config("default")
    V, L = cfg.vector.lanes, cfg.vector.max_len
    unit = VectorUnit.from_config(cfg)
    rng = np.random.default_rng(1)
    table = golden.rope_table(head_dim=64, max_pos=128, base=10000.0)
    plan, cases = [], []
    for op, dt, scaled in OPLIST:
        if only and op not in only:
            continue
        for tag, rows, length in (("latency", 1, 64), ("rows64x64", 64, 64), ("rows8x1536", 8, L)):
            cases.append(random_case(rng, op, dt, rows, length, lanes=V, max_len=L, table=table, scaled=scaled))
            plan.append((op + ("_rowscale" if scaled else ""), dt, tag, rows, length))
    tables = table_cases(lanes=V, max_len=L)
    res = run_commands([c[0] for c in tables + cases], config=cfg, seed=1)
    res["o"] = res["o"][len(tables):]
    report = {"config": "default", "lanes": V, "max_len": L, "ops": {}}
    ob = ab = 0
    ok = res["status"] == [0] * (len(tables) + len(cases))
    for (op, dt, tag, rows, length), (_cmd, want, _), got in zip(plan, cases, res["o"], strict=True):
        ok &= bool(np.array_equal(got, want))
        beats = rows * -(-length // V)
        oc = res["o_cycle"][ob:ob + beats]
        ac = res["a_cycle"][ab:ab + beats]
        ob += beats
        ab += beats
        entry = report["ops"].setdefault(f"{op}_{dt}", {})
        if tag == "latency":
            hd = 64 if op == "rope" else None
            entry["latency"] = int(oc[0] - ac[0])
            entry["latency_documented"] = unit.first_out_latency(OPS[op.removesuffix("_rowscale")], length=length,
                                                                 head_dim=hd)
        else:
            entry[tag] = {"end_to_end": round(rows * length / (oc[-1] - ac[0] + 1), 3),
                          "sustained": round(beats * V / (oc[-1] - oc[0] + 1), 3)}
    report["bit_exact"] = bool(ok)
    # `make fpga TOP=vector_unit`'s figures per preset, if measured ("current": of today's netlist)
    from bench.fpga import entry_of
    report["fpga"] = {preset: entry_of(preset, "vector_unit") for preset in ("default", "fpga")}
    print(json.dumps(report, indent=1))
    if not only:
        out = BUILD / "bench" / "vector.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
