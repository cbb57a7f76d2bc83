"""Chip benchmark: decode-like MATMUL sequences on the default chip (hdl/chip.py in Verilator
through sim.chip_api.ChipSim, cocotbext-axi external memory). Writes build/bench/chip.json.

Cases (M = 1, K = N = 576, the SmolLM2 projections' shape; each program LOADs x, runs the
MATMULs back to back on it with no waits between them, STOREs every result):

* ``decode_int8``: three int8 MATMULs, weights in rows, wide rows, rows (int32 results);
* ``decode_bf16``: two bf16 MATMULs (fp32 results).

Per case: cycles (the CYCLES counter, START to the interrupt), the engine's busy cycles, DRAM
bytes read and written and their rate against the AXI peak (16 B/cycle), the unit's stall
counters and how many commands found their first weight beat waiting; every result checked bit
for bit against golden. Simulation speed: the chip's cycles per second of host time, and where
the time goes: host time = start + a·cycles + b·AXI beats, a and b fitted from the first decode
case and a program of LOADs only (an AXI beat every two cycles); for reference, the testbench
clocking the idle chip (``--quick``: one int8 MATMUL only).
"""

import argparse
import sys
import time

import ml_dtypes
import numpy as np

import golden
from bench import write_json
from sim.chip_api import ChipSim, Program
from sim.chip_matmul import MatmulProgram
from spec import isa
from spec.codes import ChipError

PEAK_BYTES_PER_CYCLE = 16      # the default chip's 128-bit AXI port
K = N = 576


def _case(sim, name, dtype, formats, seed):
    rng = np.random.default_rng(seed)
    prog = MatmulProgram(sim.config)
    if dtype == "int8":
        x = rng.integers(-128, 128, (1, K)).astype(np.int8)
        ws = [rng.integers(-128, 128, (K, N)).astype(np.int8) for _ in formats]
    else:
        x = rng.standard_normal((1, K)).astype(ml_dtypes.bfloat16)
        ws = [rng.standard_normal((K, N)).astype(ml_dtypes.bfloat16) for _ in formats]
    at = prog.load(x)
    outs = [prog.matmul(at, w, w_format=f, wait={"load": 1} if i == 0 else None) for i, (w, f) in
            enumerate(zip(ws, formats, strict=True))]
    for i, o in enumerate(outs):
        prog.store(o, f"y{i}", wait={"matmul": i + 1})
    want = [golden.matmul_int8(x, w) if dtype == "int8" else golden.as_fp32_bits(golden.matmul_bf16(x, w))
            for w in ws]
    t0 = time.monotonic()
    res = sim.run(prog.memory, prog.program(), read_back=prog.read_back, seed=seed, timeout_cycles=5_000_000)
    wall = time.monotonic() - t0
    assert sim.error_of(res) == (ChipError.OK, 0, 0), sim.error_of(res)
    exact = all(np.array_equal(prog.result(res, f"y{i}"), w) for i, w in enumerate(want))
    c = res.counters
    wbytes = sum(len(prog.memory[o.w_addr]) for o in outs)
    dram = c["dma_rd_read_bytes"] + c["dma_wr_write_bytes"]
    beats = -(-c["dma_rd_read_bytes"] // PEAK_BYTES_PER_CYCLE) + -(-c["dma_wr_write_bytes"] // PEAK_BYTES_PER_CYCLE)
    return {
        "case": name, "M": 1, "K": K, "N": N, "dtype": dtype, "w_formats": list(formats), "bit_exact": bool(exact),
        "cycles": c["cycles"], "engine_busy": c["matmul_busy"], "engine_rows": c["matmul_rows"],
        "cycles_per_matmul": round(c["cycles"] / len(formats)),
        "weight_bytes": wbytes, "dram_read_bytes": c["dma_rd_read_bytes"], "dram_write_bytes": c["dma_wr_write_bytes"],
        "dram_bytes_per_cycle": round(dram / c["cycles"], 3),
        "dram_fraction_of_peak": round(dram / c["cycles"] / PEAK_BYTES_PER_CYCLE, 4),
        "weight_bytes_per_engine_busy_cycle": round(wbytes / c["matmul_busy"], 3),
        "w_ready_at_start": c["matmul_exec_w_ready_at_start"], "stall_weight": c["matmul_exec_stall_weight"],
        "stall_activation": c["matmul_exec_stall_activation"], "stall_output": c["matmul_exec_stall_output"],
        "engine_stall_dependency": c["matmul_stall_dependency"], "engine_stall_weight": c["matmul_stall_weight"],
        "axi_beats": beats, "wall_s": round(wall, 1), "sim_cycles_per_s": round(c["cycles"] / wall),
    }


def _load_case(sim, rows=256, cols=256, repeat=4):
    """A program of LOADs only (an AXI read beat every two cycles): host seconds, cycles, AXI beats."""
    prog = MatmulProgram(sim.config)
    x = np.random.default_rng(0).integers(-128, 128, (rows, cols)).astype(np.int8)
    for _ in range(repeat):
        prog.load(x)
    t0 = time.monotonic()
    res = sim.run(prog.memory, prog.program(), seed=1, timeout_cycles=5_000_000)
    wall = time.monotonic() - t0
    c = res.counters
    return wall, c["cycles"], -(-c["dma_rd_read_bytes"] // PEAK_BYTES_PER_CYCLE)


def _idle_rate(sim, cycles):
    """Host seconds of a run whose chip is idle for ``cycles`` cycles (a one-instruction program,
    then the testbench clocks on until its reset), and of the same run without the idle cycles:
    the cost of a cycle with every model waiting."""
    end = Program([isa.encode(isa.Opcode.END)])
    times = []
    for reset_at in (1, cycles):
        t0 = time.monotonic()
        sim.run({}, [end, end], reset_at=reset_at, seed=1)
        times.append(time.monotonic() - t0)
    return (times[1] - times[0]) / (cycles - 1), times[0]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.chip", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one int8 MATMUL only")
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    sim = ChipSim("default")
    t0 = time.monotonic()
    sim.design()
    build_s = time.monotonic() - t0
    cases = [("decode_int8", "int8", ("rows",) if args.quick else ("rows", "wide", "rows"))]
    if not args.quick:
        cases.append(("decode_bf16", "bf16", ("rows", "rows")))
    rows = [_case(sim, name, dtype, formats, seed=i + 1) for i, (name, dtype, formats) in enumerate(cases)]
    idle_per_cycle, startup = _idle_rate(sim, 50_000 if args.quick else 200_000)
    # host time = startup + a·cycles + b·AXI beats, from the first decode case and a run of LOADs
    # (an AXI beat every two cycles)
    lw, lc, lb = _load_case(sim)
    d = rows[0]
    A = np.array([[d["cycles"], d["axi_beats"]], [lc, lb]], float)
    a, b = np.linalg.solve(A, np.array([d["wall_s"] - startup, lw - startup]))
    for r in rows:
        r["host_s_startup"] = round(startup, 1)
        r["host_s_per_cycle_work"] = round(a * r["cycles"], 1)
        r["host_s_axi_beats"] = round(b * r["axi_beats"], 1)
        r["host_us_per_axi_beat"] = round(1e6 * b, 1)
    out = {"config": "default", "build_s": round(build_s, 1), "startup_s": round(startup, 1),
           "idle_cycles_per_s": round(1 / idle_per_cycle),
           "load_run": {"cycles": lc, "axi_beats": lb, "wall_s": round(lw, 1), "sim_cycles_per_s": round(lc / lw)},
           "host_us_per_cycle": round(1e6 * a, 1), "host_us_per_axi_beat": round(1e6 * b, 1), "cases": rows}
    print(f"idle chip: {out['idle_cycles_per_s']} cycles/s; a run's start: {out['startup_s']} s; LOADs only: "
          f"{out['load_run']['sim_cycles_per_s']} cycles/s; fit: {out['host_us_per_cycle']} us per cycle + "
          f"{out['host_us_per_axi_beat']} us per AXI beat")
    print(f"{'case':12} {'cycles':>9} {'/matmul':>8} {'busy':>8} {'DRAM B/c':>8} {'of peak':>7} {'W ready':>7} "
          f"{'st_w':>5} {'cyc/s':>7} {'wall s':>7} {'cycle s':>7} {'beats s':>7} {'exact':>5}")
    for r in rows:
        print(f"{r['case']:12} {r['cycles']:>9} {r['cycles_per_matmul']:>8} {r['engine_busy']:>8} "
              f"{r['dram_bytes_per_cycle']:>8} {r['dram_fraction_of_peak']:>7.1%} {r['w_ready_at_start']:>7} "
              f"{r['stall_weight']:>5} {r['sim_cycles_per_s']:>7} {r['wall_s']:>7} {r['host_s_per_cycle_work']:>7} "
              f"{r['host_s_axi_beats']:>7} {str(r['bit_exact']):>5}")
    write_json("chip", out)
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
