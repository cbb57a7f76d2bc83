"""KV-cache controller benchmark: streaming rates, command overhead, read latency and page
packing on the Verilated RTL; writes build/bench/kvcache.json.

Every figure is counted in simulated cycles (deterministic), no stalls on any stream:

* **read**: READ_K/READ_V of whole sequences, all heads back to back (rows cross page
  boundaries, one READ follows another): beats per cycle from the first beat to the last.
  Also short READs, which are bounded by the command decoder (``command_cycles``).
* **tiled read**: READs in the matmul weight loader's order (golden.kvcache.read_order) for
  the configuration's array (``kvcache.beat_elems = array.cols`` = C, R×C): Q·Kᵀ (READ_K, ``block =
  C``, ``group = R / C``) and P·V (READ_V, ``block = 0``, ``group = 1``), over positions that
  cross pages of a sequence with non-contiguous pages and end in a partial block: beats per
  cycle within each READ and over all of them back to back.
* **append**: APPEND beats per cycle inside a command and over runs of APPENDs: the next
  APPEND is accepted and checked while the previous one's beats stream, so a run of
  back-to-back APPENDs (64: 40 to one sequence across pages, then two sequences alternating)
  streams ``append_beats`` beats per token with no cycle between commands, after the first
  one's ``append_latency``.
* **latency**: READ accepted → first data beat, and command accepted → response for ALLOC /
  STATUS.
* **packing**: sequences of random lengths appended interleaved until the pool is nearly
  full; pages in use (hardware STATUS) against the ideal Σ tokens / page_size. With paging the
  excess is below one page per sequence.

``python -m bench.kvcache [--config NAME]``.
"""

import argparse
import sys

import numpy as np

from bench import write_json
from golden.kvcache import KVCommand, KVOp, KVStatus, PagedKVCache
from hdl.config import get_config
from hdl.kvcache import KVCacheParams
from sim.kvcache_api import run_kvcache


def _rows(cache, rng):
    shape = (cache.kv_heads, cache.head_dim)
    if cache.dtype == "int8":
        return rng.integers(-128, 128, shape).astype(np.int8)
    import ml_dtypes
    return rng.normal(0, 1, shape).astype(ml_dtypes.bfloat16)


def _append(cache, rng, seq):
    return KVCommand(KVOp.APPEND, seq, k=_rows(cache, rng), v=_rows(cache, rng))


def _rate(stamps):
    return len(stamps) / (int(stamps[-1]) - int(stamps[0]) + 1) if len(stamps) else 0.0


def streaming(cfg, rng):
    cache = PagedKVCache.from_config(get_config(cfg).kvcache)
    p = KVCacheParams.from_config(cfg)
    n = 4 * p.page_size
    cmds = [KVCommand(KVOp.ALLOC, 1), KVCommand(KVOp.ALLOC, 2)]
    for _ in range(n):  # two sequences interleaved: their pages are not contiguous
        cmds += [_append(cache, rng, 1), _append(cache, rng, 2)]
    n_setup = len(cmds)
    long_reads = [KVCommand(op, 1, h, 0, n) for op in (KVOp.READ_K, KVOp.READ_V)
                  for h in range(p.kv_heads)]
    short = [KVCommand(KVOp.READ_K, 2, h % p.kv_heads, h % n, 1) for h in range(32)]
    status = [KVCommand(KVOp.STATUS, 1), KVCommand(KVOp.ALLOC, 3)]
    cmds += long_reads + short + status
    res = run_kvcache(cmds, config=cfg, seed=1)
    assert all(res.responses["status"] == KVStatus.OK), "benchmark commands must succeed"
    rc, ac, cc, rsp = res.rdata_cycles, res.wdata_cycles, res.cmd_cycles, res.resp_cycles
    long_beats = len(long_reads) * n * p.beats_per_row
    per_append = p.append_beats
    inside = ac.reshape(-1, per_append)
    return {
        "read_beats_per_cycle_long": _rate(rc[:long_beats]),
        "read_beats_long": long_beats,
        "read_rows_per_read": n,
        "read_beats_per_cycle_short_reads": _rate(rc[long_beats:]),
        "short_read_beats": int(len(rc) - long_beats),
        "append_beats_per_cycle_inside_command": float(np.mean(
            per_append / (inside[:, -1] - inside[:, 0] + 1))),
        "append_beats_per_cycle_sustained": _rate(ac),
        "append_beats_per_token": per_append,
        "read_latency_cycles": int(rc[0] - cc[n_setup]),
        "status_latency_cycles": int(rsp[-2] - cc[-2]),
        "alloc_latency_cycles": int(rsp[-1] - cc[-1]),
        "beat_bytes": p.beat_elems * 2,
        "read_bytes_per_cycle_long": _rate(rc[:long_beats]) * p.beat_elems * 2,
    }


def back_to_back_appends(cfg, rng, n=64):
    cache = PagedKVCache.from_config(get_config(cfg).kvcache)
    cmds = [KVCommand(KVOp.ALLOC, 1), KVCommand(KVOp.ALLOC, 2)]
    first = len(cmds)
    cmds += [_append(cache, rng, 1) for _ in range(40)]
    cmds += [_append(cache, rng, 1 + i % 2) for i in range(n - 40)]
    res = run_kvcache(cmds, config=cfg, seed=4)
    assert all(res.responses["status"] == KVStatus.OK), "benchmark commands must succeed"
    ac = res.wdata_cycles
    return {"appends": n, "beats": int(len(ac)), "beats_per_cycle": _rate(ac),
            "largest_gap_cycles": int(np.diff(ac).max()),
            "latency_cycles": int(ac[0] - res.cmd_cycles[first])}


def tiled_reads(cfg, rng):
    cache = PagedKVCache.from_config(get_config(cfg).kvcache)
    p = KVCacheParams.from_config(cfg)
    R, C = cfg.array.rows, cfg.array.cols
    if p.beat_elems != C or R % C:
        return {"skipped": f"kvcache.beat_elems {p.beat_elems} is not array.cols {C} or C does not divide R"}
    n = 4 * p.page_size + C + 3
    cmds = [KVCommand(KVOp.ALLOC, 1), KVCommand(KVOp.ALLOC, 2)]
    for _ in range(n + 2):
        cmds += [_append(cache, rng, 1), _append(cache, rng, 2)]
    n_setup = len(cmds)
    start = 2   # blocks straddle page boundaries
    shapes = {"qk": (KVOp.READ_K, C, R // C), "pv": (KVOp.READ_V, 0, 1)}
    reads = [KVCommand(op, 1, h, start, n, block=block, group=group)
             for op, block, group in shapes.values() for h in range(p.kv_heads)]
    res = run_kvcache(cmds + reads, config=cfg, seed=3)
    assert all(res.responses["status"] == KVStatus.OK), "benchmark commands must succeed"
    rc = res.rdata_cycles
    per = n * p.beats_per_row
    out = {"positions_per_read": n, "start": start, "beats_per_read": per,
           "reads_back_to_back": len(reads), "beats_per_cycle_all": _rate(rc)}
    for i, name in enumerate(shapes):
        chunks = [rc[(i * p.kv_heads + h) * per:(i * p.kv_heads + h + 1) * per]
                  for h in range(p.kv_heads)]
        op, block, group = shapes[name]
        out[name] = {"block": block, "group": group,
                     "beats_per_cycle_within_read": min(_rate(c) for c in chunks)}
    out["latency_cycles"] = int(rc[0] - res.cmd_cycles[n_setup])
    return out


def packing(cfg, rng, fill=0.9):
    cache = PagedKVCache.from_config(get_config(cfg).kvcache)
    p = KVCacheParams.from_config(cfg)
    seqs = list(range(100, 100 + p.max_seqs))
    target = int(fill * p.num_pages * p.page_size)
    weights = rng.uniform(0.2, 1.0, len(seqs))
    lengths = np.floor(weights / weights.sum() * target).astype(int)
    cmds = [KVCommand(KVOp.ALLOC, s) for s in seqs]
    left = dict(zip(seqs, lengths, strict=True))
    while any(left.values()):
        for s in seqs:
            if left[s]:
                cmds.append(_append(cache, rng, s))
                left[s] -= 1
    cmds += [KVCommand(KVOp.STATUS, s) for s in seqs]
    res = run_kvcache(cmds, config=cfg, seed=2)
    stat = res.responses[-len(seqs):]
    assert all(stat["status"] == KVStatus.OK)
    tokens = int(stat["length"].sum())
    pages = int(stat["pages"].sum())
    ideal = tokens / p.page_size
    return {
        "sequences": len(seqs), "tokens": int(tokens), "pages_in_use": int(pages),
        "ideal_pages": ideal, "excess_pages": pages - ideal,
        "excess_pages_per_sequence": (pages - ideal) / len(seqs),
        "max_excess_one_sequence": float(max(stat["pages"] - stat["length"] / p.page_size)),
        "free_pages": int(stat["free_pages"][-1]),
        "utilization": tokens / (pages * p.page_size),
        "append_cycles_total": int(res.cycles),
        "counters": res.counters,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    args = ap.parse_args(argv)
    cfg = get_config(args.config)
    rng = np.random.default_rng(2026)
    out = {"config": cfg.name, "kv": cfg.kvcache.to_dict(),
           "streaming": streaming(cfg, rng), "packing": packing(cfg, rng),
           "tiled_read": tiled_reads(cfg, rng), "append": back_to_back_appends(cfg, rng)}
    s, pk, t, a = out["streaming"], out["packing"], out["tiled_read"], out["append"]
    print(f"KV cache, config {cfg.name}: page {cfg.kvcache.page_size} tokens, {cfg.kvcache.pages} pages, "
          f"{cfg.kvcache.heads} heads × {cfg.kvcache.head_dim}, beat {cfg.kvcache.beat_elems} elements")
    rows = [
        ("READ, whole sequences, all heads back to back", f"{s['read_beats_per_cycle_long']:.3f} beats/cycle"),
        ("READ, one row per command", f"{s['read_beats_per_cycle_short_reads']:.3f} beats/cycle"),
    ]
    if "skipped" in t:
        rows.append(("READ in the weight loader's order", t["skipped"]))
    else:
        rows += [
            (f"READ_K for Q·Kᵀ (block {t['qk']['block']}, group {t['qk']['group']}), within a READ",
             f"{t['qk']['beats_per_cycle_within_read']:.3f} beats/cycle"),
            (f"READ_V for P·V (block {t['pv']['block']} = all, group {t['pv']['group']}), within a READ",
             f"{t['pv']['beats_per_cycle_within_read']:.3f} beats/cycle"),
            (f"both, {t['reads_back_to_back']} READs of {t['positions_per_read']} positions back to back",
             f"{t['beats_per_cycle_all']:.3f} beats/cycle"),
        ]
    rows += [
        ("APPEND inside a command", f"{s['append_beats_per_cycle_inside_command']:.3f} beats/cycle"),
        ("APPEND sustained (two sequences interleaved, incl. command overhead)",
         f"{s['append_beats_per_cycle_sustained']:.3f} beats/cycle"),
        (f"APPEND, {a['appends']} back to back (one sequence across pages, then two)",
         f"{a['beats_per_cycle']:.3f} beats/cycle (largest gap {a['largest_gap_cycles']}, "
         f"first beat {a['latency_cycles']} cycles after the command)"),
        ("READ latency (command → first beat)", f"{s['read_latency_cycles']} cycles"),
        ("STATUS / ALLOC latency (command → response)",
         f"{s['status_latency_cycles']} / {s['alloc_latency_cycles']} cycles"),
        ("packing: pages in use / ideal", f"{pk['pages_in_use']} / {pk['ideal_pages']:.1f} "
         f"({pk['sequences']} sequences, excess {pk['excess_pages_per_sequence']:.2f} pages/seq)"),
        ("packing: slot utilization", f"{pk['utilization']:.3f}"),
    ]
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{w}}  {b}")
    write_json("kvcache", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
