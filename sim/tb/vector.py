"""cocotb testbench of the vector unit (hdl/vector.py).

``vector_stream`` drives the commands and the a, b, p, s_in beats it is given (``inputs.npz``)
with random valid gaps (``stall``), takes o, s_out and resp with random ready backpressure
(``backpressure``), both from pause generators of the testbench kit (:mod:`sim.tb.common`)
seeded from the logged seed, and saves every beat with the cycle it was taken, the cycles ``a``
beats were accepted, and the sums of the ``events`` port (cycles counted from the first rising
edge after reset release). A run fails when no stream makes a handshake for ``timeout_cycles``
cycles, so a hang fails the test; the sinks stay ready for ``drain_cycles`` after the last
expected beat, and nothing more may come out.
"""

import cocotb
import numpy as np

from sim.tb.common import (
    ClockLoop,
    StreamSink,
    StreamSource,
    load_inputs,
    random_pause,
    rng,
    save_outputs,
    start_clock_and_reset,
)


class _EventSums:
    """Sums the fields of the ``events`` port in every cycle (fields: [(name, width)]); an agent
    of the clock loop."""

    name = "events"

    def __init__(self, dut, fields):
        self._events = dut.events
        self._fields = fields
        self.sums = dict.fromkeys([n for n, _ in fields], 0)
        ClockLoop.of(dut.clk).add(self)

    def progress(self):
        return f"events: {self.sums}"

    def _drive(self):
        pass

    def _sample(self, cycle):
        v = int(self._events.value)
        if v:
            pos = 0
            for name, width in self._fields:
                self.sums[name] += (v >> pos) & ((1 << width) - 1)
                pos += width
        return False


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
    # cycle 0 is the first rising edge after reset release
    loop = ClockLoop.of(dut.clk)
    events = _EventSums(dut, fields)
    sources = {}
    for prefix, data in (("cmd", cmds), ("a", beats["a"]), ("b", beats["b"]), ("p", beats["p"]),
                         ("s_in", s_in)):
        sources[prefix] = StreamSource(dut, prefix, pause=random_pause(stall, rand.getrandbits(32)))
        sources[prefix].send_nowait(data)
    expect = {k: int(meta[f"n_{k}"]) for k in ("o", "s_out", "resp")}
    sinks = {k: StreamSink(dut, k, pause=random_pause(backpressure, rand.getrandbits(32))) for k in expect}
    await loop.until(lambda: all(s.idle() for s in sources.values())
                     and all(len(sinks[k].beats) >= n for k, n in expect.items()),
                     timeout_cycles=timeout, what="vector_stream")
    # the sinks stay ready: a beat beyond the expected count would be taken and recorded
    await loop.cycles(int(meta.get("drain_cycles", 30)))
    for k, n in expect.items():
        assert len(sinks[k].beats) == n, f"a {k} beat beyond the expected count"
    got = {k: sink.beats for k, sink in sinks.items()}
    cyc = {k: sink.accepted_at for k, sink in sinks.items()}
    save_outputs(o=_split(got["o"], lanes), s_out=np.array(got["s_out"], np.uint32),
                 resp=np.array(got["resp"], np.int64), o_cycle=np.array(cyc["o"], np.int64),
                 resp_cycle=np.array(cyc["resp"], np.int64),
                 a_cycle=np.array(sources["a"].accepted_at, np.int64),
                 events=np.array([events.sums[n] for n, _ in fields], np.int64),
                 cycles=np.array(loop.cycle, np.int64))
