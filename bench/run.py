"""`make bench`: every benchmark in turn; each writes build/bench/<name>.json.

Figures are simulated cycles and counters from the RTL (deterministic), plus host wall-clock
rates (noisy on a shared machine: compare medians and ratios, not single runs).
"""

import importlib
import json
import sys
import time
import traceback

from sim.runner import BUILD

#: (name, module) in the order they run. golden.accuracy writes build/accuracy.json too.
BENCHES = [
    ("arith", "bench.arith"),
    ("matmul", "bench.matmul"),
    ("softmax", "bench.softmax"),
    ("kvcache", "bench.kvcache"),
    ("kvexec", "bench.kvexec"),
    ("spad", "bench.spad"),
    ("dma", "bench.dma"),
    ("chip", "bench.chip"),
    ("vector", "bench.vector"),
    ("chip_units", "bench.chip_units"),
    ("layer", "bench.layer"),
    ("decode", "bench.decode"),
    ("accuracy", "golden.accuracy"),
    ("flow", "bench.flow"),
]


def main(argv=None):
    only = set(argv if argv is not None else sys.argv[1:])
    summary, failed = {}, []
    for name, module in BENCHES:
        if only and name not in only:
            continue
        print(f"=== {name} ({module}) ===", flush=True)
        t0 = time.monotonic()
        try:
            rc = importlib.import_module(module).main([])
        except Exception:
            traceback.print_exc()
            rc = 1
        summary[name] = {"exit": rc or 0, "seconds": round(time.monotonic() - t0, 1)}
        if rc:
            failed.append(name)
    out = BUILD / "bench" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    if failed:
        print(f"make bench: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
