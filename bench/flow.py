"""Simulation-flow benchmark: Verilator build time, and what exposing only the top-level ports
gains over cocotb's default ``--public-flat-rw`` (every signal visible).

Writes build/bench/flow.json: per design, build seconds and simulated cycles per second of a
free-running clock, for both visibilities, and their ratio (median of several runs).
"""

import json
import statistics
import sys
import time

from hdl.tops import elaborate_top
from sim import runner

DESIGNS = [("matmul_engine", "default"), ("softmax_unit", "default"), ("kv_cache", "default")]


def measure(top, config, public, cycles=200_000, repeats=3):
    t0 = time.monotonic()
    design = runner.build(lambda: elaborate_top(top, config), top, {"config": config}, public=public)
    build_s = time.monotonic() - t0
    rates = []
    for _ in range(repeats):
        out = runner.run(design, "sim.tb.idle", data={"cycles": cycles})
        rates.append(cycles / float(out["seconds"]))
    return {"build_seconds_incl_cache": round(build_s, 1), "cycles_per_second": round(statistics.median(rates))}


def main(argv=None):
    results = {}
    for top, config in DESIGNS:
        try:
            flat = measure(top, config, public=True)
            top_only = measure(top, config, public=False)
        except Exception as exc:  # a design that does not build is reported, not hidden
            results[top] = {"error": str(exc)[:500]}
            print(f"{top:16s} ERROR {exc}", file=sys.stderr)
            continue
        ratio = top_only["cycles_per_second"] / flat["cycles_per_second"]
        results[top] = {"config": config, "public_flat_rw": flat, "top_only": top_only,
                        "speedup_top_only": round(ratio, 2)}
        print(f"{top:16s} --public-flat-rw {flat['cycles_per_second']:>9,} cyc/s   "
              f"top-only {top_only['cycles_per_second']:>9,} cyc/s   ×{ratio:.2f}")
    out = runner.BUILD / "bench" / "flow.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
