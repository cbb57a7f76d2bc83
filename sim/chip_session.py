"""A persistent chip simulation: :class:`ChipSession`.

:meth:`sim.chip_api.ChipSim.run` starts a simulator for one list of programs and ends it. A
session keeps one simulator process alive and runs one program per :meth:`ChipSession.run`
call, with the memory writes and read-backs of that call: the chip's state between calls (the
KV cache's page tables and K/V rows above all, and the external memory) is what the last
program left. This is what a greedy decode through a stack of layers needs: the inputs of step
t are known only once step t − 1 has gone through every layer.

The testbench (``sim/tb/chip_session.py``) runs in the simulator, which :func:`sim.runner.run`
starts in a thread of this process; requests and results travel over a Unix-domain socket
(:mod:`sim.session_wire`). The simulation is paused while it waits for a request (no simulated
time passes), so a session costs no CPU between calls.

A session holds only its configuration until :meth:`ChipSession.start` (or the first
:meth:`~ChipSession.run`), so it can be created in one process and pickled to another (a Ray
actor) before it starts; a started session belongs to the process that started it.

Example::

    with ChipSim("tiny").session({0x1000: image}) as s:
        r0 = s.run(Program(words0), memory={0x8000: x0}, read_back=[("y", 0x9000, 256)])
        r1 = s.run(Program(words1), memory={0x8000: x1}, read_back=[("y", 0x9000, 256)])
"""

import os
import select
import shutil
import socket
import tempfile
import threading
import time

import numpy as np

from spec.codes import ChipError

from .result import SimResult
from .runner import SimulationError
from .session_wire import recv_message, send_message

__all__ = ["ChipSession", "SimulationError"]


class ChipSession:
    """One simulation of ``sim``'s chip that runs programs on request.

    Parameters
    ----------
    sim : ChipSim
        The chip (its configuration, memory model and size, Verilator build).
    memory : dict of int → bytes or None
        The initial image of the external memory (address → contents).
    stall, backpressure : float
        Probability of a valid gap / of ready held low on every AXI channel the testbench
        drives / receives, for the whole session.
    seed : int or None
        The testbench's seed (random when None; ``seed`` holds it).
    errors : list of (lo, hi, resp)
        External-memory windows that answer SLVERR (2) or DECERR (3).
    timeout : float
        Wall seconds a request may take before :meth:`run` gives up (``TimeoutError``; the
        session is then closed). The chip-side limit is :meth:`run`'s ``timeout_cycles``.
    start_timeout : float
        Wall seconds the simulator may take to start and connect.

    Raises
    ------
    SimulationError
        From :meth:`run` when the simulator died or the testbench failed (the message holds
        the end of the simulation log and its path).
    """

    def __init__(self, sim, memory=None, *, stall=0.0, backpressure=0.0, seed=None, errors=(), timeout=3600.0,
                 start_timeout=600.0):
        for name, v in (("stall", stall), ("backpressure", backpressure)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), not {v!r}")
        for name, v in (("timeout", timeout), ("start_timeout", start_timeout)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0 seconds, not {v!r}")
        self._sim = sim
        self._memory = {int(a): bytes(b) for a, b in (memory or {}).items()}
        sim._check_image(self._memory)
        if seed is None:
            seed = int(np.random.default_rng().integers(1 << 31))
        self.seed = int(seed)
        self._opts = dict(stall=stall, backpressure=backpressure, errors=list(errors))
        self._timeout, self._start_timeout = float(timeout), float(start_timeout)
        self._conn = self._thread = self._tmp = None
        self._failure = None
        self._closed = False
        self.requests = 0

    # -- pickling: the configuration only ---------------------------------------------------------
    def __getstate__(self):
        if self._thread is not None:
            raise TypeError("a started ChipSession cannot be pickled (create it, pickle it, then start it)")
        return self.__dict__.copy()

    @property
    def sim(self):
        return self._sim

    @property
    def running(self):
        """Started, not closed, and the simulator alive."""
        return self._thread is not None and not self._closed and self._thread.is_alive()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- life cycle -----------------------------------------------------------------------------
    def start(self):
        """Build the chip (cached), start the simulator and wait until it is ready."""
        if self._thread is not None:
            return
        if self._closed:
            raise RuntimeError("this ChipSession is closed")
        from . import runner
        design = self._sim.design()
        self._tmp = tempfile.mkdtemp(prefix="tfa-chip-")
        path = os.path.join(self._tmp, "s")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(1.0)
        data = self._sim._testbench_data(self._memory, seed=self.seed, **self._opts)
        data["socket"] = path
        self._memory = None   # the simulator has it now

        def simulate():
            try:
                runner.run(design, "sim.tb.chip_session", data=data, seed=self.seed)
            except BaseException as e:   # noqa: BLE001  (reported by the driver's next call)
                self._failure = e
        self._thread = threading.Thread(target=simulate, name="chip-session", daemon=True)
        self._thread.start()
        t0 = time.monotonic()
        try:
            while True:
                try:
                    conn, _ = listener.accept()
                    break
                except TimeoutError:
                    if not self._thread.is_alive():
                        raise self._died("while starting") from None
                    if time.monotonic() - t0 > self._start_timeout:
                        raise TimeoutError(f"the simulator did not connect in {self._start_timeout:.0f} s") from None
        finally:
            listener.close()
        conn.settimeout(None)
        self._conn = conn

    def close(self):
        """End the simulation (idempotent); waits for the simulator to finish."""
        if self._closed:
            return
        self._closed = True
        if self._conn is not None:
            try:
                self._conn.settimeout(5.0)
                send_message(self._conn, {"op": "close"})
            except OSError:
                pass
            self._conn.close()
            self._conn = None
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _died(self, when):
        self._closed = True
        e = self._failure
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        text = f"{e}" if e is not None else "the simulator ended without a result"
        return SimulationError(f"chip session {when}: the simulator died: {text}")

    # -- requests -------------------------------------------------------------------------------
    def run(self, program, *, memory=None, read_back=(), ext_size=0, watchdog=None, timeout_cycles=2_000_000,
            progress=None):
        """Write ``memory`` (address → bytes; whole bus words at word addresses) and ``program``
        (a :class:`sim.chip_api.Program`) into the external memory, run the program to its
        interrupt, read back the regions ``read_back`` (list of ``(name, addr, nbytes)``).

        Returns
        -------
        SimResult
            ``outputs``: ``status``, ``error_code``, ``error_detail``, ``error_index``,
            ``irq_status``, ``wall_cycles``, ``counters`` (array in
            :meth:`~sim.chip_api.ChipSim.counter_names` order) and ``<name>`` (uint8) per
            read-back region; ``counters``: by name; ``cycles``.
        """
        if self._closed:
            raise RuntimeError("this ChipSession is closed")
        self.start()
        bus = self._sim.config.memory.axi_data_bits // 8
        segments = {int(a): bytes(b) for a, b in (memory or {}).items()}
        segments[program.addr] = program.to_bytes()
        self._sim._check_image(segments, read_back)
        for a, b in segments.items():
            if a % bus or len(b) % bus:
                raise ValueError(f"a segment written into a running session must be whole {bus}-byte bus words at "
                                 f"a word address: {len(b)} bytes at {a:#x}")
        req = {"op": "run", "segments": segments, "read_back": [(str(n), int(a), int(k)) for n, a, k in read_back],
               "run": dict(prog_addr=program.addr, prog_len=len(program), ext_size=ext_size, watchdog=watchdog),
               "timeout_cycles": int(timeout_cycles)}
        try:
            send_message(self._conn, req)
        except OSError:
            raise self._died("sending a request") from None
        t0 = time.monotonic()
        while True:
            if not select.select([self._conn], [], [], 1.0)[0]:   # nothing yet: is the simulator alive?
                if not self._thread.is_alive():
                    raise self._died("while running a program")
                if time.monotonic() - t0 > self._timeout:
                    self.close()
                    raise TimeoutError(f"chip session: no answer in {self._timeout:.0f} s (the session is closed)")
                continue
            try:
                msg = recv_message(self._conn)
            except (EOFError, OSError):
                self._thread.join(timeout=60)
                raise self._died("while running a program") from None
            if "progress" in msg:
                if progress is not None:
                    progress(msg["progress"])
                continue
            if "error" in msg:
                self._thread.join(timeout=60)
                self._closed = True
                raise SimulationError(f"chip session: the testbench failed:\n{msg['error']}"
                                      + (f"\n{self._failure}" if self._failure is not None else ""))
            break
        self.requests += 1
        out = msg["result"]
        names = self._sim.chip().counter_names
        counters = dict(zip(names, (int(c) for c in out["counters"]), strict=True))
        return SimResult(outputs=out, counters=counters, seed=self.seed, cycles=counters["cycles"],
                         main=read_back[0][0] if read_back else None)

    @staticmethod
    def error_of(result):
        """(ChipError, detail, index) of a :meth:`run` result."""
        o = result.outputs
        return ChipError(int(o["error_code"])), int(o["error_detail"]), int(o["error_index"])
