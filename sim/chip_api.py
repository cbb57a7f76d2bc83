"""Programs on the Verilated chip: :class:`ChipSim` and :func:`run_program`.

A :class:`ChipSim` owns one Verilated build of the chip for one configuration (built once, cached
on disk by design hash); :meth:`ChipSim.run` lays out a memory image, runs one or more programs
to their interrupt with cocotbext-axi models of the external memory and the CSR master, and
returns a :class:`sim.SimResult`. It holds only its configuration, so it can be created and used
inside another process (a Ray worker).
"""

import json
import os

import numpy as np

from hdl.config import get_config
from spec import isa
from spec.codes import ChipError

from .result import SimResult

__all__ = ["ChipSim", "Program", "run_program"]


class Program:
    """A program: encoded instructions (ints of :data:`spec.isa.INSTR_BITS` bits) and its
    placement in external memory."""

    def __init__(self, instructions, *, addr=0):
        self.words = [int(w) for w in instructions]
        if addr % isa.INSTR_BYTES:
            raise ValueError(f"a program's address must be a multiple of {isa.INSTR_BYTES}, not {addr:#x}")
        self.addr = addr

    def __len__(self):
        return len(self.words)

    def to_bytes(self):
        return b"".join(w.to_bytes(isa.INSTR_BYTES, "little") for w in self.words)


class ChipSim:
    """The chip of ``config`` in Verilator.

    Parameters
    ----------
    config : str or ChipConfig
        Preset name or configuration (default ``"default"``).
    kv_trace : bool
        Simulate :class:`sim.chip_kv.KVTraceChip` (the chip with its KV-cache responses and K/V
        memory writes as trace outputs, recorded by the testbench; :func:`sim.chip_kv.kv_trace`
        decodes them) instead of the bare chip: a separate build.
    """

    #: External memory models: the Verilog model (sim/models/tfa_axi_mem.v, random latency and
    #: backpressure in hardware, ~20× faster) or cocotbext-axi's AxiRam (Python per beat).
    MEMORIES = ("hdl", "axiram")

    def __init__(self, config="default", *, memory="hdl", mem_bytes=1 << 24, kv_trace=False):
        if memory not in self.MEMORIES:
            raise ValueError(f"memory must be one of {', '.join(self.MEMORIES)}, not {memory!r}")
        if not isinstance(mem_bytes, int) or mem_bytes < 1 << 16 or mem_bytes & (mem_bytes - 1):
            raise ValueError(f"mem_bytes must be a power of two ≥ 65536, not {mem_bytes!r}")
        self._config = get_config(config)
        self._memory, self._mem_bytes = memory, mem_bytes
        self._design = None
        self._chip = None
        self._kv_trace = bool(kv_trace)

    def __getstate__(self):
        # the configuration only: the elaborated chip and the build handle are made again on use
        return {**self.__dict__, "_design": None, "_chip": None}

    @property
    def config(self):
        return self._config

    @property
    def mem_bytes(self):
        """Bytes of the external memory model."""
        return self._mem_bytes

    def chip(self):
        """The :class:`hdl.chip.Chip` (elaboration parameters, register map, counters)."""
        if self._chip is None:
            from hdl.chip import Chip
            self._chip = Chip(self._config)
        return self._chip

    def design(self):
        """The Verilated build (built on first use, cached on disk)."""
        if self._design is None:
            from hdl.chip import Chip

            from .tb.dma_top import build_top
            cfg = self._config
            if self._kv_trace:
                from .chip_kv import KVTraceChip
                make, name = (lambda: KVTraceChip(Chip(cfg))), "chip_kvtrace"
            else:
                make, name = (lambda: Chip(cfg)), "chip"
            self._design = build_top(make, name, {"config": cfg.to_dict()}, [], memory=self._memory,
                                     mem_bytes=self._mem_bytes)
        return self._design

    def run(self, memory, programs, *, read_back=(), ext_size=0, watchdog=None, stall=0.0, backpressure=0.0,
            seed=None, errors=(), timeout_cycles=2_000_000, reset_at=None, progress=None):
        """Run ``programs`` one after the other on a fresh chip.

        Parameters
        ----------
        memory : dict of int → bytes
            Segments of the external memory image (address → contents).
        programs : Program or list of Program
            Placed in memory too; run in order, each to its interrupt (DONE or ERROR), with
            CLEAR between them.
        read_back : list of (name, addr, nbytes)
            Regions read after the last program (outputs ``<name>``, uint8).
        ext_size, watchdog : int
            The EXT_SIZE and WATCHDOG registers (0 / None: all addresses / the reset value).
        stall, backpressure : float
            Probability of a valid gap / of ready held low on every AXI channel the testbench
            drives / receives, both ports.
        seed : int or None
        errors : list of (lo, hi, resp)
            External-memory windows that answer SLVERR (2) or DECERR (3).
        reset_at : int or None
            Reset the chip this many cycles after the first program's START (that program has
            no result); the next programs run after it.
        timeout_cycles : int
            A program that has not interrupted after this many cycles fails the run.
        progress : callable or None
            Called with a line of text about every 10 s of a long program (the run, the cycle,
            the instructions retired, the simulation rate), from a thread of this process.

        Returns
        -------
        SimResult
            ``outputs``: per run r ``run<r>_status``, ``run<r>_error_code``/``_detail``/``_index``,
            ``run<r>_counters`` (array in :meth:`counter_names` order), ``run<r>_<region>``,
            with ``kv_trace``: ``trace_<name>_cycle``, ``_run``, ``_data`` (bytes, little-endian)
            of every traced beat;
            ``counters``: the last run's counters by name; ``cycles``: the last run's CYCLES.
        """
        from . import runner
        if isinstance(programs, Program):
            programs = [programs]
        segments = {int(a): bytes(b) for a, b in memory.items()}
        for p in programs:
            segments[p.addr] = p.to_bytes()
        self._check_image(segments, read_back)
        if seed is None:
            seed = int(np.random.default_rng().integers(1 << 31))
        chip = self.chip()
        runs = []
        for i, p in enumerate(programs):
            runs.append(dict(prog_addr=p.addr, prog_len=len(p), ext_size=ext_size, watchdog=watchdog,
                             read_back=list(read_back) if i == len(programs) - 1 else []))
        data = self._testbench_data(segments, stall=stall, backpressure=backpressure, errors=errors, seed=seed)
        data.update(runs=runs, timeout_cycles=timeout_cycles, reset_at=reset_at)
        if self._kv_trace:
            from .chip_kv import TRACES
            data["traces"] = list(TRACES)
        design = self.design()
        if progress is None:
            out = runner.run(design, "sim.tb.chip", data=data, seed=seed)
        else:
            out = _with_progress(lambda env: runner.run(design, "sim.tb.chip", data=data, seed=seed, env=env),
                                 progress)
        last = len(programs) - 1
        counters = dict(zip(chip.counter_names, (int(c) for c in out[f"run{last}_counters"]), strict=True))
        outputs = dict(out)
        for name, _, _ in read_back:
            outputs[name] = out[f"run{last}_{name}"]
        return SimResult(outputs=outputs, counters=counters, seed=seed, cycles=counters["cycles"],
                         main=read_back[0][0] if read_back else None)

    def session(self, memory=None, **kwargs):
        """A :class:`sim.chip_session.ChipSession` of this chip: one simulation that stays alive
        and runs one program per :meth:`~sim.chip_session.ChipSession.run` call, the chip's
        state (the KV cache above all) kept between them; ``memory`` is its initial image,
        ``kwargs`` go to :class:`~sim.chip_session.ChipSession`."""
        from .chip_session import ChipSession
        return ChipSession(self, memory, **kwargs)

    def _check_image(self, segments, read_back=()):
        """Segments that do not overlap and, with the read-back regions, fit the memory model."""
        self._check_segments(segments)
        end = max((a + len(b) for a, b in segments.items()), default=0)
        for _, addr, nbytes in read_back:
            end = max(end, addr + nbytes)
        if end > self._mem_bytes:
            raise ValueError(f"the memory image reaches {end:#x}: past the model's {self._mem_bytes:#x} bytes "
                             f"(ChipSim(mem_bytes=...))")

    def _testbench_data(self, segments, *, stall, backpressure, errors, seed):
        """What sim/tb/chip.py and sim/tb/chip_session.py read: the initial image and the
        memory model, the register map and the counter names."""
        chip = self.chip()
        data = {"segments_addr": np.array(sorted(segments), np.int64)}
        for i, a in enumerate(sorted(segments)):
            data[f"seg{i}"] = np.frombuffer(segments[a], np.uint8)
        data.update(registers={r.name: r.offset for r in chip.register_map}, counters=chip.counter_names,
                    mem_size=self._mem_bytes, memory=self._memory, data_bytes=self._config.memory.axi_data_bits // 8,
                    stall=stall, backpressure=backpressure, errors=[list(e) for e in errors], seed=seed)
        return data

    @staticmethod
    def _check_segments(segments):
        spans = sorted((a, a + len(b)) for a, b in segments.items())
        for (a0, e0), (a1, _) in zip(spans, spans[1:], strict=False):
            if a1 < e0:
                raise ValueError(f"memory segments overlap: [{a0:#x}, {e0:#x}) and one at {a1:#x}")

    def error_of(self, result, run=-1):
        """(ChipError, detail, index) of a run of ``result``."""
        runs = sorted({int(k[3:k.index("_")]) for k in result.outputs if k.startswith("run") and "_status" in k})
        r = runs[run]
        return (ChipError(int(result.outputs[f"run{r}_error_code"])), int(result.outputs[f"run{r}_error_detail"]),
                int(result.outputs[f"run{r}_error_index"]))


def run_program(memory, program, *, config="default", **kwargs):
    """One program on a :class:`ChipSim` of ``config`` (built once per process)."""
    cfg = get_config(config)
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    sim = _SIMS.get(key)
    if sim is None:
        sim = _SIMS[key] = ChipSim(cfg)
    return sim.run(memory, program, **kwargs)


_SIMS = {}


def _with_progress(run, progress):
    """``run(env)`` with ``TFA_PROGRESS_FILE`` in ``env``: the testbench appends progress lines to
    that file, a thread here passes each new line to ``progress``."""
    import tempfile
    import threading
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "progress.txt")
        open(path, "w").close()
        stop = threading.Event()

        def follow():
            with open(path) as f:
                while True:
                    line = f.readline()
                    if line:
                        progress(line.rstrip("\n"))
                    elif stop.wait(0.5):
                        rest = f.read()
                        for ln in rest.splitlines():
                            progress(ln)
                        return
        t = threading.Thread(target=follow, daemon=True)
        t.start()
        try:
            return run({"TFA_PROGRESS_FILE": path})
        finally:
            stop.set()
            t.join(timeout=5)
