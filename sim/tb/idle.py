"""Free-running clock for a number of cycles: measures the raw speed of a Verilated model."""

import time

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles

from sim.tb.common import load_inputs, save_outputs, start_clock_and_reset


@cocotb.test()
async def free_run(dut):
    _, meta = load_inputs()
    await start_clock_and_reset(dut)
    cycles = int(meta.get("cycles", 100_000))
    t0 = time.perf_counter()
    await ClockCycles(dut.clk, cycles)
    save_outputs(seconds=np.array(time.perf_counter() - t0), cycles=np.array(cycles))
