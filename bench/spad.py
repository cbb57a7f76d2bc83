"""Scratchpad benchmark: words per cycle of every mover with and without bank conflicts, and the
movers' latencies, on the Verilated harness (sim/spad_api.py: three SpadReaders and two
SpadWriters on the configuration's scratchpad); writes build/bench/spad.json.

Every figure is counted in simulated cycles (deterministic), no stalls on any stream; a
mover's rate is its words over the cycles from its first word to its last:

* **separate banks**: each reader on its own bank, the writers on the other bank and on a
  bank a reader reads (a bank's read and write ports are separate): one word per cycle each;
* **shared bank**: the three readers on one bank, the two writers on another: the bank's word
  per cycle is shared round robin;
* **one bank**: all five movers on one bank: reads and writes do not compete;
* **unit walks**: the walks of docs/chip.md (K-tile-major activations, rows, a stride-0
  parameter loop, results) back to back on separate banks;
* **latency**: descriptor accepted → first word (reader), last word taken → done (writer).

``python -m bench.spad [--config NAME] [--words N]``.
"""

import argparse
import sys

import numpy as np

from bench import write_json
from hdl.config import get_config
from sim.spad_api import run_spad


def _rate(stamps):
    return len(stamps) / (int(stamps[-1]) - int(stamps[0]) + 1) if len(stamps) else 0.0


def _run(cfg, reads, writes):
    lanes = cfg.memory.spad_lanes
    w = []
    for descs in writes:
        n = sum(d.get("count0", 1) * d.get("count1", 1) * d.get("count2", 1) for d in descs)
        w.append({"descs": descs, "data": np.arange(n * lanes, dtype=np.uint32).reshape(n, lanes)})
    res = run_spad(writes=w, reads=[{"descs": d} for d in reads], config=cfg, seed=1)
    rates = {f"r{i}": _rate(res.stamps[f"r{i}"]) for i in range(len(reads))}
    rates.update({f"w{j}": _rate(res.stamps[f"w{j}"]) for j in range(len(writes))})
    waits = {k: v for k, v in res.counters.items() if k.endswith("_wait")}
    return res, {"words_per_cycle": rates, "sum_words_per_cycle": sum(rates.values()),
                 "wait_cycles": waits, "cycles": res.cycles}


def scenarios(cfg, n):
    W, B = cfg.memory.spad_words, cfg.memory.spad_banks
    n = min(n, W)

    def line(bank, count=n):
        return [dict(base=bank * W, count0=count)]
    out = {}
    if B >= 2:
        r_banks = [b % B for b in range(3)]
        w_banks = [(B - 1) % B, 2 % B]
        _, out["separate_banks"] = _run(cfg, [line(b) for b in r_banks], [line(b) for b in w_banks])
        out["separate_banks"].update(read_banks=r_banks, write_banks=w_banks)
        _, out["shared_bank"] = _run(cfg, [line(0)] * 3, [line(1)] * 2)
    _, out["one_bank"] = _run(cfg, [line(0)] * 3, [line(0)] * 2)
    # unit walks (docs/chip.md), row stride 16 words, 64 rows
    rows, rs = 64, 16
    act = [dict(base=0, count0=rows, count1=4, stride0=rs, stride1=1)]                   # K-tile-major
    vec = [dict(base=W % (B * W), count0=8, count1=rows, stride0=1, stride1=rs)]            # rows
    rope = [dict(base=(2 % B) * W, count0=4, count1=3, count2=rows, stride0=1, stride1=0, stride2=4)]
    res_w = [dict(base=(3 % B) * W, count0=rows, count1=4, stride0=rs, stride1=1)]          # results
    kv = [dict(base=W // 2, count0=8, count1=rows, stride0=1, stride1=rs)]                   # append rows
    _, out["unit_walks"] = _run(cfg, [act * 2, vec * 2, rope * 2], [res_w * 2, kv * 2])
    # latency: one descriptor per mover on an idle scratchpad
    res, _ = _run(cfg, [[dict(base=0, count0=16)]], [[dict(base=W % (B * W), count0=16)]])
    out["latency"] = {"read_desc_to_first_word": int(res.stamps["r0"][0] - res.stamps["r0_desc"][0]),
                      "write_last_word_to_done": int(res.stamps["w0_done"][0] - res.stamps["w0"][-1])}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--words", type=int, default=2048, help="words per mover in the rate scenarios")
    args = ap.parse_args(argv)
    cfg = get_config(args.config)
    out = {"config": cfg.name, "memory": cfg.memory.to_dict(), "words_per_mover": args.words,
           **scenarios(cfg, args.words)}
    m = cfg.memory
    print(f"scratchpad, config {cfg.name}: {m.spad_banks} banks × {m.spad_words} words × {m.spad_lanes} lanes; "
          f"3 readers, 2 writers")
    for name in ("separate_banks", "shared_bank", "one_bank", "unit_walks"):
        if name in out:
            r = out[name]["words_per_cycle"]
            print(f"  {name:15s} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items())
                  + f"   sum {out[name]['sum_words_per_cycle']:.2f} words/cycle")
    lat = out["latency"]
    print(f"  latency: read descriptor → first word {lat['read_desc_to_first_word']} cycles, "
          f"write last word → done {lat['write_last_word_to_done']} cycles")
    write_json("spad", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
