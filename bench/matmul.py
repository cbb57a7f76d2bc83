"""Matmul engine benchmark: array utilization and decode weight bandwidth, from the RTL's own
performance counters (``sim.run_matmul`` in Verilator). Writes build/bench/matmul.json.

Cases:

* prefill: M = K = N = 256 on the default 8×8 array (int8 and bf16), M = K = N = 512 on the
  ``large`` 16×16 array (int8 and bf16); utilization = useful MACs / (R·C·cycles);
* decode: M = 1, K = N = 576 (a SmolLM2 projection) on 8×8: weight bytes per cycle against the
  weight port's width (C elements per beat, one beat per cycle).

Every result is also checked bit-exactly against golden. ``--skip-large`` leaves out the 16×16
cases (its Verilator build takes several minutes).
"""

import argparse
import json
import sys
import time

import ml_dtypes
import numpy as np

import golden
from sim.matmul_api import design_for, run_matmul
from sim.runner import BUILD

CASES = [
    # name, config, M, K, N, dtype
    ("prefill_256_int8", "default", 256, 256, 256, "int8"),
    ("prefill_256_bf16", "default", 256, 256, 256, "bf16"),
    ("decode_576_int8", "default", 1, 576, 576, "int8"),
    ("decode_576_bf16", "default", 1, 576, 576, "bf16"),
    ("prefill_512_int8", "large", 512, 512, 512, "int8"),
    ("prefill_512_bf16", "large", 512, 512, 512, "bf16"),
]
TARGETS = {"default": 0.90, "large": 0.95}


def _operands(rng, M, K, N, dtype):
    if dtype == "int8":
        return (rng.integers(-128, 128, (M, K)).astype(np.int8), rng.integers(-128, 128, (K, N)).astype(np.int8))
    return (rng.standard_normal((M, K)).astype(ml_dtypes.bfloat16),
            rng.standard_normal((K, N)).astype(ml_dtypes.bfloat16))


def run_case(name, config, M, K, N, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a, w = _operands(rng, M, K, N, dtype)
    t0 = time.monotonic()
    design_for(config)
    t_build = time.monotonic() - t0
    t0 = time.monotonic()
    got, c = run_matmul(a, w, config=config, seed=seed)
    t_sim = time.monotonic() - t0
    if dtype == "int8":
        exact = bool(np.array_equal(got, golden.matmul_int8(a, w)))
    else:
        exact = bool(np.array_equal(got.view(np.uint32), golden.matmul_bf16(a, w).view(np.uint32)))
    row = {"case": name, "config": config, "M": M, "K": K, "N": N, "dtype": dtype,
           "bit_exact": exact, "build_s": round(t_build, 1), "sim_s": round(t_sim, 1),
           "sim_cycles_per_s": round(c["cycles"] / t_sim), **{k: v for k, v in c.items()}}
    row["utilization"] = round(c["utilization"], 4)
    row["weight_bytes_per_cycle"] = round(c["weight_bytes_per_cycle"], 3)
    if M > 1:
        row["target_utilization"] = TARGETS[config]
    else:
        row["weight_port_fraction"] = round(c["weight_bytes_per_cycle"] / c["weight_port_bytes_per_cycle"], 3)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.matmul", description=__doc__.splitlines()[0])
    parser.add_argument("--skip-large", action="store_true", help="leave out the 16×16 cases")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    rows = []
    for case in CASES:
        if args.skip_large and case[1] == "large":
            continue
        print(f"running {case[0]} on {case[1]} ...", flush=True)
        rows.append(run_case(*case))
    hdr = f"{'case':18} {'cfg':8} {'M×K×N':>13} {'cycles':>9} {'util':>7} {'W B/cyc':>8} {'port':>5} " \
          f"{'st_in':>6} {'st_out':>6} {'st_w':>6} {'st_dep':>6} {'exact':>5} {'sim s':>6}"
    print(hdr)
    for r in rows:
        print(f"{r['case']:18} {r['config']:8} {r['M']:>4}×{r['K']}×{r['N']:<4} {r['cycles']:>9} "
              f"{r['utilization']:>7.2%} {r['weight_bytes_per_cycle']:>8.3f} {r['weight_port_bytes_per_cycle']:>5} "
              f"{r['stall_input']:>6} {r['stall_output']:>6} {r['stall_weight']:>6} {r['stall_dependency']:>6} "
              f"{str(r['bit_exact']):>5} {r['sim_s']:>6}")
    out = BUILD / "bench" / "matmul.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cases": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
