"""cocotb testbench of the vector unit (hdl/vector.py).

``vector_stream`` drives the commands and the a, b, p, s_in beats it is given (``inputs.npz``)
with random valid gaps (``stall``), takes o, s_out and resp with random ready backpressure
(``backpressure``), and saves every beat with the cycle it was taken, the cycles ``a`` beats
were accepted, and the sums of the ``events`` port. Every wait has a cycle timeout, so a hang
fails the test; after the last expected beat nothing more may come out.
"""

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from sim.tb.common import StreamDriver, load_inputs, rng, save_outputs, start_clock_and_reset


class _Clock:
    def __init__(self):
        self.cycle = 0


async def _count(dut, clk, events, fields):
    """Cycle counter and the sums of the events port (fields: [(name, width)])."""
    while True:
        await ReadOnly()
        v = int(dut.events.value)
        pos = 0
        for name, width in fields:
            events[name] += (v >> pos) & ((1 << width) - 1)
            pos += width
        await RisingEdge(dut.clk)
        clk.cycle += 1


async def _receive(dut, prefix, count, width, rand, backpressure, clk, timeout, out, cycles):
    valid = getattr(dut, f"{prefix}__valid")
    ready = getattr(dut, f"{prefix}__ready")
    payload = getattr(dut, f"{prefix}__payload")
    idle = 0
    while len(out) < count:
        r = not (backpressure and rand.random() < backpressure)
        ready.value = int(r)
        await ReadOnly()
        if r and int(valid.value):
            out.append(int(payload.value))
            cycles.append(clk.cycle)
            idle = 0
        else:
            idle += 1
            if idle > timeout:
                raise TimeoutError(f"{prefix}: no beat for {timeout} cycles ({len(out)} of {count})")
        await RisingEdge(dut.clk)
    ready.value = 0


def _split(values, lanes):
    return np.array([[(v >> (32 * j)) & 0xFFFFFFFF for j in range(lanes)] for v in values],
                    dtype=np.uint32).reshape(-1, lanes)


@cocotb.test()
async def vector_stream(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    lanes = int(meta["lanes"])
    stall, backpressure = float(meta.get("stall", 0.0)), float(meta.get("backpressure", 0.0))
    timeout = int(meta.get("timeout_cycles", 20000))
    fields = [(n, int(w)) for n, w in meta["event_fields"]]
    cmds = [int(v) for v in meta["cmds"]]
    beats = {s: [sum(int(v) << (32 * j) for j, v in enumerate(row)) for row in arrays[s].tolist()]
             for s in ("a", "b", "p")}
    s_in = [int(v) for v in arrays["s_in"].tolist()]
    for prefix in ("cmd", "a", "b", "p", "s_in"):
        getattr(dut, f"{prefix}__valid").value = 0
    for prefix in ("o", "s_out", "resp"):
        getattr(dut, f"{prefix}__ready").value = 0
    await start_clock_and_reset(dut)
    clk = _Clock()
    events = dict.fromkeys([n for n, _ in fields], 0)
    cocotb.start_soon(_count(dut, clk, events, fields))
    a_cycle = []
    drivers = []
    for prefix, data in (("cmd", cmds), ("a", beats["a"]), ("b", beats["b"]), ("p", beats["p"]),
                         ("s_in", s_in)):
        drv = StreamDriver(dut, prefix, dut.clk, stall=stall, rand=rand)
        stamps = a_cycle if prefix == "a" else None
        drivers.append(cocotb.start_soon(drv.send(data, timeout_cycles=timeout, now=lambda: clk.cycle,
                                                  accepted_at=stamps)))
    got = {k: [] for k in ("o", "s_out", "resp")}
    cyc = {k: [] for k in ("o", "s_out", "resp")}
    rx = [cocotb.start_soon(_receive(dut, k, int(meta[f"n_{k}"]), 0, rand, backpressure, clk, timeout,
                                     got[k], cyc[k])) for k in ("o", "s_out", "resp")]
    for task in rx + drivers:
        await task
    for _ in range(int(meta.get("drain_cycles", 30))):
        await ReadOnly()
        for k in ("o", "s_out", "resp"):
            assert not int(getattr(dut, f"{k}__valid").value), f"a {k} beat beyond the expected count"
        await RisingEdge(dut.clk)
    save_outputs(o=_split(got["o"], lanes), s_out=np.array(got["s_out"], np.uint32),
                 resp=np.array(got["resp"], np.int64), o_cycle=np.array(cyc["o"], np.int64),
                 resp_cycle=np.array(cyc["resp"], np.int64), a_cycle=np.array(a_cycle, np.int64),
                 events=np.array([events[n] for n, _ in fields], np.int64),
                 cycles=np.array(clk.cycle, np.int64))
