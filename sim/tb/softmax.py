"""cocotb testbench of the softmax unit (hdl/softmax.py).

``softmax_stream`` drives the commands and score beats it is given (``inputs.npz``: ``cmds`` as
per-field integer arrays, ``beats`` (n_beats, P) uint32) with optional random valid gaps
(``stall``) and ready backpressure (``backpressure``), collects every output beat and saves
``out`` (n_out, P) uint16, ``last`` (n_out,), the cycle each input beat was taken
(``in_cycle``) and each output beat leaves (``out_cycle``), the ``error`` pulse cycles and the
performance counters. Every wait has a cycle timeout, so a hang fails the test.
"""

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb.common import StreamDriver, load_inputs, rng, save_outputs, start_clock_and_reset

CMD_FIELDS = ("length", "valid_len", "causal_pos", "dtype", "scale", "shift")
COUNTERS = ("cycles", "busy_cycles", "rows_accepted", "rows_rejected", "rows_done",
            "beats_in", "beats_out", "in_stall_cycles", "out_stall_cycles", "ring_full_cycles")


def cmd_widths(lw):
    return {"length": lw, "valid_len": lw, "causal_pos": lw, "dtype": 1, "scale": 32, "shift": 6}


def pack_cmd(fields, lw):
    """One command payload (StructLayout: fields packed from bit 0 in declaration order)."""
    value, pos = 0, 0
    for name, width in cmd_widths(lw).items():
        value |= (int(fields[name]) & ((1 << width) - 1)) << pos
        pos += width
    return value


class _Clock:
    def __init__(self):
        self.cycle = 0


async def _count(dut, clk):
    while True:
        await RisingEdge(dut.clk)
        clk.cycle += 1


def _drive(dut, prefix, payloads, stall, rand, clk, stamps, timeout):
    """Send ``payloads`` on stream ``prefix``, recording each beat's acceptance cycle in ``stamps``."""
    driver = StreamDriver(dut, prefix, dut.clk, stall=stall, rand=rand)
    return driver.send(payloads, timeout_cycles=timeout, now=lambda: clk.cycle, accepted_at=stamps)


async def _watch_errors(dut, clk, pulses):
    while True:
        await ReadOnly()
        if int(dut.error.value):
            pulses.append(clk.cycle)
        await RisingEdge(dut.clk)


@cocotb.test()
async def softmax_stream(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    lanes, lw = int(meta["lanes"]), int(meta["lw"])
    stall, backpressure = float(meta.get("stall", 0.0)), float(meta.get("backpressure", 0.0))
    timeout = int(meta.get("timeout_cycles", 20000))
    cmds = [pack_cmd({f: arrays[f"cmd_{f}"][i] for f in CMD_FIELDS}, lw)
            for i in range(len(arrays["cmd_length"]))]
    beats = arrays["beats"]
    payloads = [sum(int(v) << (32 * j) for j, v in enumerate(row)) for row in beats.tolist()]
    n_out = int(meta["n_out"])

    dut.cmd__valid.value = 0
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    await start_clock_and_reset(dut)
    clk = _Clock()
    cocotb.start_soon(_count(dut, clk))
    in_cycle, cmd_cycle, errors = [], [], []
    cocotb.start_soon(_watch_errors(dut, clk, errors))
    cmd_task = cocotb.start_soon(_drive(dut, "cmd", cmds, stall, rand, clk, cmd_cycle, timeout))
    in_task = cocotb.start_soon(_drive(dut, "i", payloads, stall, rand, clk, in_cycle, timeout))

    out, last, out_cycle = [], [], []
    idle = 0
    mask16 = (1 << 16) - 1
    while len(out) < n_out:
        ready = not (backpressure and rand.random() < backpressure)
        dut.o__ready.value = int(ready)
        await ReadOnly()
        if ready and int(dut.o__valid.value):
            v = int(dut.o__payload.value)
            out.append([(v >> (16 * j)) & mask16 for j in range(lanes)])
            last.append((v >> (16 * lanes)) & 1)
            out_cycle.append(clk.cycle)
            idle = 0
        else:
            idle += 1
            if idle > timeout:
                raise TimeoutError(f"no output beat for {timeout} cycles ({len(out)} of {n_out})")
        await RisingEdge(dut.clk)
    dut.o__ready.value = 0
    await cmd_task
    await in_task
    # nothing more may come out
    for _ in range(int(meta.get("drain_cycles", 40))):
        await ReadOnly()
        assert not int(dut.o__valid.value), "an output beat beyond the expected count"
        await RisingEdge(dut.clk)
    await ReadOnly()
    raw = int(dut.counters.value)
    counters = [(raw >> (32 * j)) & 0xFFFFFFFF for j in range(len(COUNTERS))]
    import numpy as np
    save_outputs(out=np.array(out, dtype=np.uint16).reshape(-1, lanes),
                 last=np.array(last, dtype=np.uint8), in_cycle=np.array(in_cycle, dtype=np.int64),
                 cmd_cycle=np.array(cmd_cycle, dtype=np.int64),
                 out_cycle=np.array(out_cycle, dtype=np.int64), errors=np.array(errors, dtype=np.int64),
                 counters=np.array(counters, dtype=np.int64))
