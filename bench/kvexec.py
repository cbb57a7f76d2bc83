"""KV unit benchmark: KV instructions on the Verilated chip (sim.chip_kv, traced build); writes
build/bench/kvexec.json.

Per configuration (``tiny``, ``default``):

* **prefill**: one APPEND of ``n`` tokens whose rows are in the scratchpad: K/V memory words
  written per cycle from the first write to the last (the ideal is 1), the largest gap between
  writes, and the cycles the instruction is held (``kv_exec_busy``) against its beats;
* **decode**: ``n`` APPEND instructions of one token each (one sequence): cycles held per
  instruction, and its overhead over the token's ``2 · row_words`` beats;
* **alloc/free**: cycles held by an ALLOC and by a FREE (of a sequence of ``n`` tokens).

Each program runs after the LOADs of its rows have finished (the KV instructions wait for them),
so the figures are the KV unit's. ``python -m bench.kvexec [--config NAME]``.
"""

import argparse
import sys

import numpy as np

from bench import write_json
from hdl.config import get_config
from sim.chip_api import ChipSim
from sim.chip_kv import KVPrograms
from spec.codes import KVOp

#: Tokens of the prefill APPEND and of the one-token APPENDs (two sequences: both fit the pool).
TOKENS = {"tiny": 24, "default": 160}


def _gaps(cycles):
    d = np.diff(np.asarray(cycles))
    return int(d.max()) if len(d) else 0


def measure(config):
    cfg = get_config(config)
    n = TOKENS.get(cfg.name, 64)
    sim = ChipSim(cfg, kv_trace=True)
    b = KVPrograms(cfg, seed=7)
    a = b.rows(n)
    b.end()                                       # program 0: the LOADs only
    b.kv(KVOp.ALLOC, 1)
    b.kv(KVOp.APPEND, 1, n, **a)                  # program 1: one APPEND of n tokens
    b.kv(KVOp.ALLOC, 2)
    b.end()
    for t in range(n):                            # program 2: n APPENDs of one token
        b.kv(KVOp.APPEND, 2, 1, **b.at(a, t))
    b.end()
    b.kv(KVOp.FREE, 1)                            # program 3: FREE of n tokens
    b.end()
    b.kv(KVOp.ALLOC, 3)                           # program 4: ALLOC
    b.end()
    res = b.run(sim, seed=7)
    b.check(sim, res)
    names = sim.chip().counter_names
    counters = [dict(zip(names, (int(x) for x in res.outputs[f"run{r}_counters"]), strict=True)) for r in range(5)]
    cycles = res.outputs["trace_kv_write_cycle"]
    runs = res.outputs["trace_kv_write_run"]
    beats = 2 * b.row_words
    pre = cycles[runs == 1]
    prefill = {"tokens": n, "beats": int(len(pre)),
               "writes_per_cycle": round(len(pre) / (int(pre[-1] - pre[0]) + 1), 4), "largest_gap": _gaps(pre)}
    busy = counters[2]["kv_exec_busy"]
    decode = {"instructions": n, "beats_per_token": beats, "busy_cycles_per_instruction": round(busy / n, 2),
              "overhead_cycles_per_instruction": round((busy - n * beats) / n, 2)}
    return {"config": cfg.name, "kv": cfg.kvcache.to_dict(), "row_words": b.row_words, "prefill": prefill,
            "decode": decode, "free_tokens": n, "free_busy_cycles": counters[3]["kv_exec_busy"],
            "alloc_busy_cycles": counters[4]["kv_exec_busy"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", help="configurations (default: tiny and default)")
    args = ap.parse_args(argv)
    out = {}
    for name in args.config or ["tiny", "default"]:
        r = out[name] = measure(name)
        p, d = r["prefill"], r["decode"]
        print(f"KV unit, config {name}: {r['row_words']} words per K or V row")
        print(f"  APPEND of {p['tokens']} tokens: {p['writes_per_cycle']:.3f} K/V words/cycle "
              f"(largest gap {p['largest_gap']}) over {p['beats']} beats")
        print(f"  one-token APPENDs: {d['busy_cycles_per_instruction']} cycles each, "
              f"{d['overhead_cycles_per_instruction']} over the {d['beats_per_token']} beats")
        print(f"  FREE of {r['free_tokens']} tokens: held {r['free_busy_cycles']} cycles; ALLOC: "
              f"{r['alloc_busy_cycles']} cycles")
    write_json("kvexec", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
