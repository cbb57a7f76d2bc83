"""cocotb side of the KV-cache test harness (sim/tb/kvcache_harness.v).

The harness plays the whole command list at simulator speed: this test only hands it the
inputs (``kv_*.hex`` files in the run folder), releases reset, waits for ``done`` (with a
cycle budget, so a hang fails instead of hanging) and turns the ``kv_out_*.hex`` files into
``outputs.npz``. Inputs come from :func:`sim.kvcache_api.run_kvcache`.
"""

from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer

from .common import load_inputs, rng, save_outputs


def _write_hex(path, words):
    Path(path).write_text("".join(f"{int(w):x}\n" for w in words))


def _read_hex(path):
    p = Path(path)
    if not p.exists():
        return []
    return [int(line, 16) for line in p.read_text().split()
            if line and not line.startswith(("@", "//"))]


def _bytes_rows(words, nbytes):
    if not words:
        return np.zeros((0, nbytes), np.uint8)
    return np.frombuffer(b"".join(w.to_bytes(nbytes, "little") for w in words),
                         np.uint8).reshape(len(words), nbytes)


@cocotb.test()
async def kvcache_stream(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    seeds = [rand.randrange(1, 1 << 32) for _ in range(4)]
    n_cmd, n_wd = len(arrays["cmd"]), len(arrays["wdata"])
    th = [int(round(float(meta[k]) * 65536)) for k in
          ("cmd_stall", "data_stall", "resp_backpressure", "read_backpressure")]
    budget = int(meta["max_cycles"])
    _write_hex("kv_params.hex", [n_cmd, n_wd, *seeds, *th, int(meta["timeout_cycles"]),
                                 int(meta["tail_cycles"]), 0, 0, 0, 0])
    _write_hex("kv_cmd.hex", (int.from_bytes(r.tobytes(), "little") for r in arrays["cmd"]))
    _write_hex("kv_rbeats.hex", arrays["cmd_rbeats"])
    _write_hex("kv_wdata.hex", (int.from_bytes(r.tobytes(), "little") for r in arrays["wdata"]))

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.load.value = 1
    dut.dump.value = 0
    await RisingEdge(dut.clk)
    dut.load.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    # a Timer, not ClockCycles: no Python wake-up per cycle while the harness runs
    await First(RisingEdge(dut.done), Timer(10 * budget, unit="ns"))
    finished = bool(dut.done.value)
    dut.dump.value = 1
    await RisingEdge(dut.clk)
    dut.dump.value = 0
    await RisingEdge(dut.clk)

    stats = _read_hex("kv_out_stats.hex")
    ci, wi, ri, di, expected, cycles, hung, overflow, idle, mi = stats[:10]
    summary = (f"{ci}/{n_cmd} commands and {wi}/{n_wd} append beats accepted, {ri} responses, "
               f"{di}/{expected} read beats, {cycles} cycles")
    dut._log.info("harness: %s", summary)
    assert finished, f"no 'done' within {budget} cycles: {summary}"
    assert not hung, f"no handshake for {idle} cycles (the design hangs): {summary}"
    assert not overflow, f"harness result memories overflowed: {summary}"
    save_outputs(
        resp=_bytes_rows(_read_hex("kv_out_resp.hex"), 16),
        rdata=_bytes_rows(_read_hex("kv_out_rd.hex"), int(meta["rdata_bytes"])),
        resp_cycles=np.array(_read_hex("kv_out_resp_cyc.hex"), np.int64),
        read_cycles=np.array(_read_hex("kv_out_rd_cyc.hex"), np.int64),
        append_cycles=np.array(_read_hex("kv_out_wd_cyc.hex"), np.int64),
        cmd_cycles=np.array(_read_hex("kv_out_cmd_cyc.hex"), np.int64),
        write_addrs=np.array(_read_hex("kv_out_mw_addr.hex"), np.int64),
        cycles=np.array(cycles, np.int64), expected_read_beats=np.array(expected, np.int64),
    )
