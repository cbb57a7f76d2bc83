"""The testbench kit: what every cocotb testbench of the chip is built from.

* Data in and out: :func:`load_inputs` / :func:`save_outputs` (the run folder of
  :func:`sim.runner.run`), :func:`rng` (the logged seed), :func:`start_clock_and_reset`.
* Streams: one driver, :class:`StreamSource`, and one monitor, :class:`StreamSink`, for
  ``amaranth.lib.stream`` ports (``<name>__valid``, ``<name>__ready``, ``<name>__payload``), in
  the style of cocotbext-axi's sources and sinks: payloads are Python ints (pack them with
  :mod:`sim.packing`), valid gaps and backpressure come from pause generators
  (:meth:`~StreamSource.set_pause_generator`, :func:`random_pause`), every accepted beat is
  stamped with its clock cycle (``accepted_at``), and every wait has a timeout.
* :class:`Tap`: the value of a signal in every cycle another signal is 1 (e.g. the write
  addresses of a memory port).
* :class:`ClockLoop`: the one coroutine per clock that serves every agent on that clock. Each
  cycle it writes all inputs at the falling edge, then reads all outputs once they have settled
  (``ReadOnly``), so a handshake is seen in the cycle it happens even when a block's ``ready``
  depends combinationally on its inputs, and a testbench costs two simulator callbacks per
  cycle however many streams it drives.

Cycle numbers: cycle 0 is the first rising edge after the loop starts, i.e. after
:func:`start_clock_and_reset` released reset when the agents are made after it; a beat's stamp is
the number of the rising edge at which it was accepted.

Example (a stream that adds one, ``sim/tb/loopback.py``)::

    await start_clock_and_reset(dut)
    source = StreamSource(dut, "i", pause=random_pause(0.3, seed=1))
    sink = StreamSink(dut, "o", pause=random_pause(0.4, seed=2))
    source.send_nowait([1, 2, 3])
    assert await sink.receive(3) == [2, 3, 4]
"""

import collections
import json
import os
import random
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import Event, FallingEdge, ReadOnly, RisingEdge

from sim.streams import random_pause  # noqa: F401  (part of the kit)

__all__ = ["run_dir", "load_inputs", "save_outputs", "start_clock_and_reset", "rng", "random_pause",
           "ClockLoop", "StreamSource", "StreamSink", "Tap", "DEFAULT_TIMEOUT_CYCLES"]

#: Cycles without a handshake on any stream of the clock after which a wait fails.
DEFAULT_TIMEOUT_CYCLES = 20_000


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
    """A 10 ns clock on ``dut.clk``; ``dut.rst`` high for ``cycles`` rising edges."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


class _Waiter:
    __slots__ = ("done", "timeout", "max_cycle", "what", "event", "error")

    def __init__(self, done, timeout, max_cycle, what):
        self.done, self.timeout, self.max_cycle, self.what = done, timeout, max_cycle, what
        self.event = Event()
        self.error = None


class ClockLoop:
    """The coroutine that serves every stream agent and tap of one clock.

    Made on first use by the agents (:meth:`of`); a testbench uses it directly for
    :attr:`cycle`, :meth:`until` and :meth:`cycles`.

    With ``registered_outputs`` the loop reads the design's outputs in the same simulator
    callback as it writes the inputs, before the writes take effect: one callback per cycle
    instead of two, 1.35 times the speed (a FIFO through the stream testbench, 44,000 against
    32,700 cycles per second). Only for a design whose ``valid`` and ``ready``
    outputs (and payloads) depend on its registers alone, never combinationally on its inputs;
    for any other design a handshake would be seen a cycle off.
    """

    _loops = {}

    @classmethod
    def of(cls, clk, *, registered_outputs=None):
        """The running loop of clock ``clk`` (made and started if there is none; a new one reads
        outputs as ``registered_outputs`` says, default False; asking a running one for the other
        mode is an error)."""
        loop = cls._loops.get(clk)
        if loop is None or loop._task.done():
            loop = cls._loops[clk] = cls(clk, registered_outputs=bool(registered_outputs))
        elif registered_outputs is not None and bool(registered_outputs) != loop.registered_outputs:
            raise ValueError(f"the clock loop already runs with registered_outputs={loop.registered_outputs}")
        return loop

    def __init__(self, clk, *, registered_outputs=False):
        self._clk = clk
        self.registered_outputs = registered_outputs
        self._agents = []
        self._waiters = []
        #: the number of the coming rising edge
        self.cycle = 0
        #: the cycle of the last handshake on any stream of this clock
        self.last_handshake = -1
        self._task = cocotb.start_soon(self._run())

    def add(self, agent):
        self._agents.append(agent)

    def progress(self):
        """One line per agent: what it has done."""
        return "; ".join(a.progress() for a in self._agents)

    async def _run(self):
        fall, settle = FallingEdge(self._clk), ReadOnly()
        agents = self._agents
        registered = self.registered_outputs
        while True:
            await fall
            if self._waiters:
                self._check_waiters()
            for agent in agents:
                agent._drive()
            if not registered:
                await settle
            cycle = self.cycle
            for agent in agents:
                if agent._sample(cycle):
                    self.last_handshake = cycle
            self.cycle = cycle + 1

    def _check_waiters(self):
        keep = []
        for w in self._waiters:
            idle = self.cycle - 1 - self.last_handshake
            if w.done():
                w.event.set()
            elif w.timeout is not None and idle > w.timeout:
                w.error = TimeoutError(f"{w.what}: no handshake on any stream for {w.timeout} cycles "
                                       f"(cycle {self.cycle}): {self.progress()}")
                w.event.set()
            elif w.max_cycle is not None and self.cycle > w.max_cycle:
                w.error = TimeoutError(f"{w.what}: not done after {w.max_cycle} cycles: {self.progress()}")
                w.event.set()
            else:
                keep.append(w)
        self._waiters = keep

    async def until(self, done, *, timeout_cycles=DEFAULT_TIMEOUT_CYCLES, max_cycles=None, what="wait"):
        """Wait until ``done()`` is true (checked once per cycle, after the falling edge).

        Raises ``TimeoutError`` (naming ``what`` and every agent's progress) when no stream of
        this clock makes a handshake for ``timeout_cycles`` cycles (``None``: no limit), or when
        ``max_cycles`` cycles have passed since the call."""
        if done():
            return
        max_cycle = None if max_cycles is None else self.cycle + max_cycles
        w = _Waiter(done, timeout_cycles, max_cycle, what)
        self._waiters.append(w)
        await w.event.wait()
        if w.error is not None:
            raise w.error

    async def cycles(self, n):
        """Wait ``n`` cycles."""
        target = self.cycle + n
        await self.until(lambda: self.cycle >= target, timeout_cycles=None, what=f"{n} cycles")


class _Agent:
    def __init__(self, dut, name, clk, pause):
        self.name = name
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._pause = None
        self.set_pause_generator(pause)
        #: the cycle each beat was accepted in, in order
        self.accepted_at = []
        self._loop = ClockLoop.of(clk if clk is not None else dut.clk)
        self._loop.add(self)

    @property
    def loop(self):
        return self._loop

    @property
    def width(self):
        """Bits of the payload."""
        return len(self._payload)

    def set_pause_generator(self, generator=None):
        """Pause in every cycle for which ``generator`` yields a true value (one value per
        cycle; ``None``: never pause)."""
        self._pause = None if generator is None else iter(generator)


class StreamSource(_Agent):
    """Drives the stream ``name`` of ``dut`` (``<name>__valid``/``__ready``/``__payload``).

    Parameters
    ----------
    dut, name
        The design and the stream's port name.
    clk : handle, optional
        The clock (default ``dut.clk``).
    pause : iterator of bool, optional
        Pause generator: in a cycle for which it yields ``True`` no new beat is presented (a
        valid gap). A beat already presented stays, with its payload, until accepted (the
        stream rule).

    Beats are queued with :meth:`send_nowait` (or ``await`` :meth:`send`) and presented in
    order; :meth:`wait` returns when every queued beat is accepted. ``accepted_at`` holds the
    cycle of each accepted beat.
    """

    def __init__(self, dut, name, clk=None, *, pause=None):
        self._queue = collections.deque()
        self._presenting = False   # a beat is on the wires, not yet accepted
        self._driven = False       # what valid is driven to
        self.sent = 0
        super().__init__(dut, name, clk, pause)
        self._valid.value = 0

    def send_nowait(self, beats):
        """Queue payloads (ints)."""
        self._queue.extend(int(b) for b in beats)

    async def send(self, beats):
        """Queue payloads (ints); returns at once (the queue has no limit)."""
        self.send_nowait(beats)

    def idle(self):
        """Every queued beat accepted."""
        return not self._queue and not self._presenting

    def count(self):
        """Beats queued and not yet accepted."""
        return len(self._queue) + self._presenting

    async def wait(self, *, timeout_cycles=DEFAULT_TIMEOUT_CYCLES):
        """Wait until every queued beat is accepted (see :meth:`ClockLoop.until`)."""
        await self._loop.until(self.idle, timeout_cycles=timeout_cycles, what=f"source {self.name}")

    def progress(self):
        return f"{self.name}: {self.sent} accepted, {self.count()} waiting"

    def _drive(self):
        paused = self._pause is not None and next(self._pause)
        if self._presenting:
            return
        if self._queue and not paused:
            self._payload.value = self._queue.popleft()
            self._presenting = True
            if not self._driven:
                self._valid.value = 1
                self._driven = True
        elif self._driven:
            self._valid.value = 0
            self._driven = False

    def _sample(self, cycle):
        if self._presenting and self._ready.value:
            self._presenting = False
            self.sent += 1
            self.accepted_at.append(cycle)
            return True
        return False


class StreamSink(_Agent):
    """Accepts the stream ``name`` of ``dut`` and records every beat (a monitor).

    Parameters
    ----------
    dut, name, clk
        As :class:`StreamSource`.
    pause : iterator of bool, optional
        Pause generator: ``ready`` is low in a cycle for which it yields ``True``
        (backpressure); high otherwise.

    ``beats`` holds every accepted payload (int) and ``accepted_at`` its cycle, from the start:
    beats nobody asked for are recorded too, so a testbench can check that nothing more came.
    :meth:`receive` returns the next beats in order.
    """

    def __init__(self, dut, name, clk=None, *, pause=None):
        #: every accepted payload, in order
        self.beats = []
        self._next = 0
        self._ready_now = False
        #: consecutive cycles (up to now) in which ``valid`` was low
        self.quiet_cycles = 0
        super().__init__(dut, name, clk, pause)
        self._ready.value = 0

    def count(self):
        """Beats accepted and not yet returned by :meth:`receive`."""
        return len(self.beats) - self._next

    async def receive(self, count, *, timeout_cycles=DEFAULT_TIMEOUT_CYCLES):
        """The next ``count`` payloads (see :meth:`ClockLoop.until` for the timeout)."""
        want = self._next + count
        await self._loop.until(lambda: len(self.beats) >= want, timeout_cycles=timeout_cycles,
                               what=f"sink {self.name} ({count} beats)")
        out = self.beats[self._next:want]
        self._next = want
        return out

    async def quiet(self, cycles, *, timeout_cycles=DEFAULT_TIMEOUT_CYCLES):
        """Wait until ``valid`` has been low for ``cycles`` cycles in a row."""
        await self._loop.until(lambda: self.quiet_cycles >= cycles, timeout_cycles=timeout_cycles,
                               what=f"sink {self.name} quiet for {cycles} cycles")

    def progress(self):
        return f"{self.name}: {len(self.beats)} received"

    def _drive(self):
        ready = self._pause is None or not next(self._pause)
        if ready != self._ready_now:
            self._ready.value = int(ready)
            self._ready_now = ready

    def _sample(self, cycle):
        if self._valid.value:
            self.quiet_cycles = 0
            if self._ready_now:
                self.beats.append(int(self._payload.value))
                self.accepted_at.append(cycle)
                return True
        else:
            self.quiet_cycles += 1
        return False


class Tap:
    """Records ``dut.<value>`` in every cycle in which ``dut.<when>`` is 1 (``values``, with the
    cycles in ``cycles``); a passive agent of the clock loop."""

    def __init__(self, dut, value, when, clk=None):
        self.name = value
        self._value = getattr(dut, value)
        self._when = getattr(dut, when)
        self.values = []
        self.cycles = []
        ClockLoop.of(clk if clk is not None else dut.clk).add(self)

    @property
    def width(self):
        """Bits of the recorded signal."""
        return len(self._value)

    def progress(self):
        return f"{self.name}: {len(self.values)} recorded"

    def _drive(self):
        pass

    def _sample(self, cycle):
        if self._when.value:
            self.values.append(int(self._value.value))
            self.cycles.append(cycle)
        return False
