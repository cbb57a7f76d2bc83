"""Shared testbench pieces: inputs/outputs through the run folder, clock and reset, seeded
randomness, and stream drivers/monitors with random stalls and backpressure."""

import json
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["run_dir", "load_inputs", "save_outputs", "start_clock_and_reset", "rng",
           "StreamDriver", "StreamMonitor"]


def run_dir():
    return Path(os.environ["TFA_RUN_DIR"])


def load_inputs():
    """(arrays, meta) that sim.runner.run was given."""
    d = run_dir()
    with np.load(d / "inputs.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads((d / "meta.json").read_text())
    return arrays, meta


def save_outputs(**arrays):
    np.savez(run_dir() / "outputs.npz", **arrays)


def rng(meta):
    """A seeded random generator; the seed is logged so a failure reproduces from it."""
    seed = int(meta.get("seed", cocotb.RANDOM_SEED))
    cocotb.log.info("testbench seed %d", seed)
    return random.Random(seed)


async def start_clock_and_reset(dut, cycles=2):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


class StreamDriver:
    """Drives an Amaranth stream (``<prefix>__valid``, ``__ready``, ``__payload``).

    ``stall`` is the probability that the driver leaves a cycle empty before a beat (valid gap).
    Once valid is up it stays up, with the payload held, until ready (the stream rule).
    """

    def __init__(self, dut, prefix, clk, *, stall=0.0, rand=None):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.clk = clk
        self.stall = stall
        self.rand = rand or random.Random(0)
        self.valid.value = 0

    async def send(self, beats, *, timeout_cycles=100_000, now=None, accepted_at=None):
        """Send each integer of ``beats`` as one payload.

        Raises ``TimeoutError`` when a beat waits more than ``timeout_cycles`` for ready, so a hung
        design fails instead of hanging the regression. With ``now`` (a callable giving the current
        cycle) and a list ``accepted_at``, the cycle each beat is accepted in is appended to it.
        """
        for beat in beats:
            while self.stall and self.rand.random() < self.stall:
                self.valid.value = 0
                await RisingEdge(self.clk)
            self.valid.value = 1
            self.payload.value = int(beat)
            waited = 0
            while True:
                await ReadOnly()
                accepted = bool(self.ready.value)
                cycle = now() if now is not None else None
                await RisingEdge(self.clk)
                if accepted:
                    if accepted_at is not None:
                        accepted_at.append(cycle)
                    break
                waited += 1
                if waited > timeout_cycles:
                    raise TimeoutError(f"{self.valid._name}: beat not accepted for {timeout_cycles} cycles")
        self.valid.value = 0


class StreamMonitor:
    """Accepts beats of an Amaranth stream; ``backpressure`` is the probability of holding ready
    low in a cycle."""

    def __init__(self, dut, prefix, clk, *, backpressure=0.0, rand=None):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.clk = clk
        self.backpressure = backpressure
        self.rand = rand or random.Random(1)
        self.ready.value = 0

    async def receive(self, count, timeout_cycles=100_000):
        """Collect ``count`` payloads (as Python ints); raise after ``timeout_cycles`` cycles
        without a beat, so a hung design fails instead of hanging the regression."""
        out = []
        idle = 0
        while len(out) < count:
            ready = not (self.backpressure and self.rand.random() < self.backpressure)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value:
                out.append(int(self.payload.value))
                idle = 0
            else:
                idle += 1
                if idle > timeout_cycles:
                    raise TimeoutError(f"no beat for {timeout_cycles} cycles "
                                       f"({len(out)} of {count} received)")
            await RisingEdge(self.clk)
        self.ready.value = 0
        return out
