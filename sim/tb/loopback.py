"""Testbench of the runner's own tests: a stream that adds one, under stalls and backpressure."""

import cocotb
import numpy as np

from sim.tb.common import StreamSink, StreamSource, load_inputs, random_pause, rng, save_outputs, start_clock_and_reset


@cocotb.test()
async def add_one_stream(dut):
    arrays, meta = load_inputs()
    await start_clock_and_reset(dut)
    r = rng(meta)
    source = StreamSource(dut, "i", pause=random_pause(meta.get("stall", 0.0), r.random()))
    sink = StreamSink(dut, "o", pause=random_pause(meta.get("backpressure", 0.0), r.random()))
    xs = [int(v) for v in arrays["x"]]
    source.send_nowait(xs)
    got = await sink.receive(len(xs), timeout_cycles=1000)
    save_outputs(y=np.array(got, dtype=np.int64))


@cocotb.test()
async def deliberately_wrong_expectation(dut):
    """Used to prove that a failing cocotb test surfaces as a failing pytest."""
    await start_clock_and_reset(dut)
    assert int(dut.o__valid.value) == 1, "o.valid is low after reset, as it should be"
