# amaranth: UnusedElaboratable=no
"""Softmax unit benchmark: throughput, row latency and accuracy; writes build/bench/softmax.json.

Figures are simulated cycles of the Verilated RTL (deterministic) and golden-model accuracy
against a float64 softmax. ``python -m bench.softmax`` runs everything on the ``default``
configuration; ``--widths`` only runs the table/width measurement behind docs/numerics.md;
``--fpga`` adds ECP5 synthesis and place-and-route of the unit (LUTs, DSPs, block RAMs, Fmax).

* **throughput**: rows of one length back to back, no stalls; elements per cycle from the
  first input beat to the last output beat (includes filling the three-pass pipeline once),
  and sustained (output beats' rate once the first row is out). Target ≥ 0.95·P for rows ≥ 64.
* **latency**: an isolated row, first score beat taken → last probability beat out, against
  ``SoftmaxUnit.row_latency``.
* **accuracy**: max and mean |q/255 − p| (int8) and max relative error (bf16) of golden against
  float64 on synthetic attention rows; the RTL equals golden bit for bit (checked here too).
"""

import argparse
import re
import sys
import time

import numpy as np

from bench import write_json
from golden import softmax as gsm
from hdl.config import get_config
from hdl.softmax import SoftmaxUnit
from sim import run_softmax


def _attention_logits(rng, rows, length, spread):
    q = rng.normal(0, 1, (rows, 64))
    k = rng.normal(0, 1, (length, 64))
    return q @ k.T / 8 * spread


def _int8_row(rng, length, spread=3.0):
    z = _attention_logits(rng, 1, length, spread)[0]
    sc = max(np.abs(z).max(), 1e-9) / 2 ** 20
    return np.round(z / sc).astype(np.int32), gsm.softmax_scale_int8(sc)


def widths(rows_per_length=16, seed=5):
    """Accuracy of candidate (F, EB, SG, RB = RI) against float64 (the docs/numerics.md table)."""
    rng = np.random.default_rng(seed)
    data = []
    for length in (16, 64, 256, 1024, 4096):
        z = _attention_logits(rng, rows_per_length, length, 1.0) * rng.uniform(0.5, 4, (rows_per_length, 1))
        data.append(z)
    table = []
    for f, eb, sg, rb in [(6, 12, 8, 12), (8, 12, 8, 12), (8, 16, 12, 16), (10, 16, 12, 16),
                          (12, 16, 12, 16), (14, 20, 16, 20)]:
        e8 = eb_rel = 0.0
        for z in data:
            sc = np.abs(z).max() / 2 ** 20
            s = np.round(z / sc).astype(np.int64)
            m, sh = gsm.softmax_scale_int8(sc, frac_bits=f)
            vis = np.ones(s.shape, bool)
            core = gsm.softmax_core(gsm.softmax_x_int8(s, m, sh), vis, frac_bits=f, exp_bits=eb,
                                    sum_guard=sg, rcp_bits=rb, rcp_in_bits=rb)
            q = gsm.softmax_out_int8(core["V"], core["k"])
            ref = gsm.softmax_reference(s, sc)
            e8 = max(e8, float(np.abs(q / 255 - ref).max() * 256))
            c = np.float32(sc * np.log2(np.e))
            zf = s.astype(np.float32)
            xb, _ = gsm.softmax_x_bf16(zf.view(np.uint32), np.full(len(zf), c.view(np.uint32)), frac_bits=f)
            core = gsm.softmax_core(xb, vis, frac_bits=f, exp_bits=eb, sum_guard=sg, rcp_bits=rb,
                                    rcp_in_bits=rb)
            pb = gsm.bf16_from_bits(gsm.softmax_out_bf16(core["V"], core["k"])).astype(np.float64)
            ref = gsm.softmax_reference(zf.astype(np.float64), float(c) / np.log2(np.e))
            ok = ref > 2.0 ** -120
            eb_rel = max(eb_rel, float((np.abs(pb - ref)[ok] / ref[ok]).max()))
        table.append({"frac_bits": f, "exp_bits": eb, "sum_guard": sg, "rcp_bits": rb,
                      "int8_max_err_x256": round(e8, 3), "bf16_max_rel_err_x2^8": round(eb_rel * 256, 3)})
    return table


def accuracy(seed=11):
    rng = np.random.default_rng(seed)
    stats = {}
    for spread in (1.0, 3.0, 8.0):
        e8, mean8, rel = [], [], []
        for length in (16, 64, 256, 1024):
            z = _attention_logits(rng, 32, length, spread)
            sc = np.abs(z).max() / 2 ** 20
            s = np.round(z / sc).astype(np.int32)
            causal = rng.integers(0, length, 32)
            q = gsm.softmax_int8(s, gsm.softmax_scale_int8(sc), None, causal)
            ref = gsm.softmax_reference(s, sc, None, causal)
            err = np.abs(q / 255 - ref)
            e8.append(err.max())
            mean8.append(err[ref > 0].mean())
            zf = z.astype(np.float32)
            pb = gsm.softmax_bf16(zf, gsm.softmax_scale_bf16(1.0), None, causal).astype(np.float64)
            ref = gsm.softmax_reference(zf.astype(np.float64), 1.0, None, causal)
            ok = ref > 2.0 ** -120
            rel.append((np.abs(pb - ref)[ok] / ref[ok]).max())
        stats[f"logit_std_{spread}"] = {
            "int8_max_abs_err": float(max(e8)), "int8_max_abs_err_x256": round(float(max(e8)) * 256, 3),
            "int8_mean_abs_err": float(np.mean(mean8)), "bf16_max_rel_err": float(max(rel)),
        }
    return stats


def throughput(config, lengths, rows_per_length, seed=3):
    cfg = get_config(config)
    unit = SoftmaxUnit.from_config(cfg)
    rng = np.random.default_rng(seed)
    results = []
    for length in lengths:
        rows = [_int8_row(rng, length) for _ in range(rows_per_length)]
        scores, scales = [r[0] for r in rows], [r[1] for r in rows]
        t0 = time.monotonic()
        res = run_softmax(scores, scales, dtype=["int8"] * rows_per_length, config=cfg, seed=seed)
        wall = time.monotonic() - t0
        exact = all(np.array_equal(p, gsm.softmax_int8(s, sq)) for p, s, sq in zip(res.output, scores, scales,
                                                                                     strict=True))
        elements = length * rows_per_length
        span = int(res.o_cycles[-1] - res.i_cycles[0] + 1)
        beats = -(-length // cfg.softmax.lanes)
        first_out_end = beats - 1  # index of the first row's last output beat
        steady = int(res.o_cycles[-1] - res.o_cycles[first_out_end])
        steady_elems = length * (rows_per_length - 1)
        results.append({
            "length": length, "rows": rows_per_length, "lanes": cfg.softmax.lanes,
            "elements_per_cycle_total": round(elements / span, 3),
            "elements_per_cycle_sustained": round(steady_elems / max(steady, 1), 3) if rows_per_length > 1 else None,
            "fraction_of_P_sustained": round(steady_elems / max(steady, 1) / cfg.softmax.lanes, 4)
            if rows_per_length > 1 else None,
            "cycles": span, "row_latency_measured": int(res.o_cycles[beats - 1] - res.i_cycles[0]),
            "row_latency_documented": unit.row_latency(length),
            "bit_exact": exact, "host_seconds": round(wall, 2), "counters": res.counters,
        })
    return results


def fpga(config):
    """ECP5 synthesis and place-and-route of the softmax unit alone (bench.fpga's tools and
    device), in build/fpga/softmax-<config>/."""
    from amaranth.back import verilog

    from bench.fpga import implement
    from sim.runner import ROOT
    cfg = get_config(config)
    work = ROOT / "build" / "fpga" / f"softmax-{cfg.name}"
    work.mkdir(parents=True, exist_ok=True)
    path = work / "softmax_unit.v"
    path.write_text(verilog.convert(SoftmaxUnit.from_config(cfg), name="softmax_unit", emit_src=False))
    stats = implement(path, "softmax_unit", work)
    log = work / "softmax_unit_board.nextpnr.log"
    if "fmax_mhz" not in stats and log.exists():  # nextpnr fails when the 100 MHz target is missed
        found = re.findall(r"Max frequency for clock '([^']*)': ([0-9.]+) MHz", log.read_text(errors="replace"))
        if found:
            stats["fmax_mhz"] = {"clk": float(found[-1][1])}
            stats.pop("pnr_error", None)
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.softmax", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--widths", action="store_true", help="only the table/width measurement")
    ap.add_argument("--fpga", action="store_true",
                    help="also ECP5 synthesis + place and route (needs `pip install -e .[fpga]`; minutes)")
    args = ap.parse_args(argv)
    out = {"widths": widths()}
    print("F  EB SG RB | int8 max|q/255-p|·256 | bf16 max rel err ·2^8")
    for r in out["widths"]:
        print(f"{r['frac_bits']:2d} {r['exp_bits']:2d} {r['sum_guard']:2d} {r['rcp_bits']:2d} | "
              f"{r['int8_max_err_x256']:21.3f} | {r['bf16_max_rel_err_x2^8']:.3f}")
    if not args.widths:
        out["accuracy"] = accuracy()
        print("\naccuracy (golden = RTL) against float64:")
        for k, v in out["accuracy"].items():
            print(f"  {k}: int8 max |dp| = {v['int8_max_abs_err_x256']}/256, "
                  f"mean {v['int8_mean_abs_err']:.2e}; bf16 max rel {v['bf16_max_rel_err']:.2e}")
        cfg = get_config(args.config)
        lengths = [n for n in (1, 16, 64, 256, 1024, 4096) if n <= cfg.softmax.max_len]
        out["config"] = cfg.to_dict()
        out["throughput"] = throughput(cfg, lengths, rows_per_length=8)
        print(f"\nthroughput and latency, config {cfg.name} (P = {cfg.softmax.lanes}):")
        print("length | elem/cycle total | sustained | ·P      | row latency (meas/doc) | exact")
        for r in out["throughput"]:
            print(f"{r['length']:6d} | {r['elements_per_cycle_total']:16.3f} | "
                  f"{r['elements_per_cycle_sustained']!s:9} | {r['fraction_of_P_sustained']!s:7} | "
                  f"{r['row_latency_measured']:>10d} / {r['row_latency_documented']:<9d} | {r['bit_exact']}")
    if args.fpga:
        out["fpga"] = fpga(args.config)
        f = out["fpga"]
        print(f"\nECP5 LFE5U-85F, config {args.config}: LUT4 {f.get('luts')}, FF {f.get('flip_flops')}, "
              f"MULT18X18D {f.get('dsp_mult18')}, DP16KD {f.get('bram_dp16kd')}, Fmax {f.get('fmax_mhz')}")
    write_json("softmax", out)
    ok = all(r["bit_exact"] for r in out.get("throughput", []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
