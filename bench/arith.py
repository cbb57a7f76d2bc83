"""Arithmetic-unit benchmark: simulated vectors per second through each Verilated core;
writes build/bench/arith.json.

For each unit, ``--vectors`` biased random vectors go through the bulk harness
(sim.tb.arith.bulk_verilog: the core as Amaranth generates it, fed from and written to memories
inside the simulation, one vector per cycle) and are checked bit-exact against golden/. Two
rates are reported: the simulation loop alone (``sim``), and end to end (``total``: simulator
start, file transfer, checking). ``--stream-beats`` beats also go through each real stream
unit driven beat by beat by the testbench kit (the transfer alone), for comparison. Host wall-clock rates are noisy on a
shared machine; the cycle counts are exact.
"""

import argparse
import sys
import time

import numpy as np

from bench import write_json
from sim.runner import build, run
from sim.streams import run_streams
from sim.tb.arith import (
    UNITS,
    bulk_build_params,
    bulk_verilog,
    core_latency,
    expected,
    pack_inputs,
    random_vectors,
    streams_build_params,
    streams_top,
)


def measure(vectors, stream_beats, seed):
    rows = []
    t0 = time.monotonic()
    design = build(bulk_verilog, "arith_bulk", params=bulk_build_params())
    bulk_build = time.monotonic() - t0
    for k, unit in enumerate(UNITS):
        v = random_vectors(unit, vectors, seed + k)
        words = pack_inputs(unit, v)
        t0 = time.monotonic()
        out = run(design, "sim.tb.arith", testcase="bulk_vectors",
                  data={"inputs": words, "unit": unit, "gap": 0, "seed": seed + k})
        total = time.monotonic() - t0
        exact = bool(np.array_equal(out["y"].astype(np.uint64), expected(unit, v).astype(np.uint64)))
        sim_s = float(out["sim_seconds"])
        row = {"unit": unit, "core": UNITS[unit][0], "latency": core_latency(unit),
               "vectors": vectors, "cycles": int(out["cycles"]), "sim_seconds": round(sim_s, 3),
               "total_seconds": round(total, 3),
               "sim_vectors_per_second": round(vectors / sim_s) if sim_s else None,
               "total_vectors_per_second": round(vectors / total), "bit_exact": exact}
        if stream_beats:
            sdesign = build(streams_top, "arith_streams", params=streams_build_params())
            sv = random_vectors(unit, stream_beats, seed + 10 + k)
            t0 = time.monotonic()
            sout = run_streams(sdesign, sources={f"{unit}__i": pack_inputs(unit, sv)},
                               sinks={f"{unit}__o": stream_beats}, seed=seed)
            st = time.monotonic() - t0
            row["stream_beats"] = stream_beats
            row["stream_total_seconds"] = round(st, 3)
            row["stream_beats_per_second"] = round(stream_beats / sout.sim_seconds)
            row["stream_bit_exact"] = bool(np.array_equal(np.array(sout.beats[f"{unit}__o"], np.uint64),
                                                          expected(unit, sv).astype(np.uint64)))
        rows.append(row)
    return {"bulk_build_seconds_incl_cache": round(bulk_build, 1), "seed": seed, "units": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.arith", description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=1_000_000, help="random vectors per unit")
    ap.add_argument("--stream-beats", type=int, default=2000,
                    help="beats per stream unit driven from cocotb (0: skip)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.vectors < 1 or args.stream_beats < 0:
        ap.error("--vectors must be ≥ 1 and --stream-beats ≥ 0")
    result = measure(args.vectors, args.stream_beats, args.seed)
    print(f"arithmetic units, {args.vectors} random vectors each (seed {args.seed})")
    print("unit          | lat | cycles    | sim vec/s  | total vec/s | stream beats/s | exact")
    for r in result["units"]:
        stream = f"{r['stream_beats_per_second']:14d}" if "stream_beats_per_second" in r else " " * 14
        exact = r["bit_exact"] and r.get("stream_bit_exact", True)
        print(f"{r['unit']:13s} | {r['latency']:3d} | {r['cycles']:9d} | {r['sim_vectors_per_second']:10d} | "
              f"{r['total_vectors_per_second']:11d} | {stream} | {'yes' if exact else 'NO'}")
    write_json("arith", result)
    ok = all(r["bit_exact"] and r.get("stream_bit_exact", True) for r in result["units"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
