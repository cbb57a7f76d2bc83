"""Testbench of the runner's own tests: a stream that adds one, under stalls and backpressure."""

import cocotb
import numpy as np

from sim.tb.common import StreamDriver, StreamMonitor, load_inputs, rng, save_outputs, start_clock_and_reset


@cocotb.test()
async def add_one_stream(dut):
    arrays, meta = load_inputs()
    await start_clock_and_reset(dut)
    r = rng(meta)
    drv = StreamDriver(dut, "i", dut.clk, stall=meta.get("stall", 0.0), rand=r)
    mon = StreamMonitor(dut, "o", dut.clk, backpressure=meta.get("backpressure", 0.0), rand=r)
    xs = [int(v) for v in arrays["x"]]
    cocotb.start_soon(drv.send(xs))
    got = await mon.receive(len(xs), timeout_cycles=1000)
    save_outputs(y=np.array(got, dtype=np.int64))


@cocotb.test()
async def deliberately_wrong_expectation(dut):
    """Used to prove that a failing cocotb test surfaces as a failing pytest."""
    await start_clock_and_reset(dut)
    assert int(dut.o__valid.value) == 1, "o.valid is low after reset, as it should be"
