"""A decoder layer on the Verilated chip: :func:`run_layer`.

The layer's image (weights, parameters, tables) and one program per step are laid out in the
external memory of one simulation, the programs run one after the other (the KV cache keeps its
state between them), and every step's output rows are compared with ``golden.DecoderLayer`` run
on the same requests, sequence by sequence.
"""

import copy
from dataclasses import dataclass

import numpy as np

from compiler.layer import CompileError, LayerImage, Request, compile_step
from hdl.config import get_config
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus

from .chip_api import ChipSim, Program
from .result import SimResult

__all__ = ["run_layer", "LayerRun", "Request", "CompileError", "plan_layer", "chip_for", "LayerSession", "StepResult",
           "prefill_chunks"]

_PROG_BASE = 0x0000_0000
_IMAGE_BASE = 0x0040_0000
#: A :class:`LayerSession`'s x and y rows (below the image; its program is at _PROG_BASE)
_X_BASE = 0x0010_0000
_Y_BASE = 0x0020_0000


@dataclass
class LayerRun:
    """What :func:`plan_layer` lays out: the image, the compiled steps and the memory map."""
    image: LayerImage
    steps: list
    memory: dict
    programs: list
    read_back: list


def plan_layer(layer, steps, *, config="default", max_pos=None):
    """Compile ``steps`` (a list of lists of :class:`Request`) of ``layer`` for ``config``.

    Raises :class:`CompileError` (a ``ValueError``) for anything the configuration cannot hold,
    before anything runs.
    """
    cfg = get_config(config)
    if max_pos is None:
        ends = {}
        for step in steps:
            for r in step:
                ends[r.seq] = max(ends.get(r.seq, 0), r.pos0 + r.x.shape[0])
        max_pos = max(ends.values())
    _check_sequences(steps, cfg)
    image = LayerImage(layer, cfg, base=_IMAGE_BASE, max_pos=max_pos)
    addr = image.end
    prog_addr = _PROG_BASE
    compiled, memory, programs, read_back = [], dict(image.segments), [], []
    d = layer.config.d_model
    bus = cfg.memory.axi_data_bits // 8
    for i, step in enumerate(steps):
        rows = sum(r.x.shape[0] for r in step)
        stride = -(-d * np.dtype(step[0].x.dtype).itemsize // bus) * bus
        x_addr = -(-addr // 64) * 64
        y_addr = -(-(x_addr + rows * stride) // 64) * 64
        addr = y_addr + rows * stride
        s = compile_step(image, step, x_addr=x_addr, y_addr=y_addr, prog_addr=prog_addr)
        if prog_addr + len(s.program_words) * isa.INSTR_BYTES > _IMAGE_BASE:
            raise CompileError("the programs do not fit below the layer image")
        programs.append(Program(s.program_words, addr=prog_addr))
        prog_addr += -(-len(s.program_words) * isa.INSTR_BYTES // 4096) * 4096
        memory.update(s.segments)
        read_back.append((f"y{i}", y_addr, rows * stride))
        compiled.append(s)
    return LayerRun(image=image, steps=compiled, memory=memory, programs=programs, read_back=read_back)


def chip_for(plan, config):
    """A :class:`ChipSim` of ``config`` whose external memory holds ``plan`` (a power of two of
    bytes); call ``.design()`` on it to build the chip before timing a run."""
    end = max(a + len(b) for a, b in plan.memory.items())
    end = max(end, *(a + n for _, a, n in plan.read_back))
    return ChipSim(config, mem_bytes=max(1 << 16, 1 << (end - 1).bit_length()))


def _check_sequences(steps, cfg):
    """The sequences' story across the steps, as the chip's KV cache will see it (see
    :func:`_check_step`)."""
    live = {}
    for i, step in enumerate(steps):
        _check_step(i, step, live, cfg)


def _check_step(i, step, live, cfg, *, check_pages=True):
    """Step ``i`` against ``live`` (seq → tokens held, updated to the state after the step): a
    new sequence is allocated (``alloc``) before its first tokens, every other request continues
    a live sequence at its length, at most ``kvcache.max_seqs`` are live, and (``check_pages``)
    their pages fit. Raises :class:`CompileError` naming the problem; ``live`` is unchanged then."""
    kv = cfg.kvcache
    if not step:
        raise CompileError(f"step {i} has no request")
    seqs = [r.seq for r in step]
    if len(set(seqs)) != len(seqs):
        raise CompileError(f"step {i}: a sequence appears twice in one step")
    after = dict(live)
    for r in step:
        if not isinstance(r, Request):
            raise TypeError(f"step {i}: requests must be Request, not {type(r).__name__}")
        if r.alloc:
            if r.seq in after:
                raise CompileError(f"step {i}: sequence {r.seq} is allocated again while it is live")
            if r.pos0 != 0:
                raise CompileError(f"step {i}: new sequence {r.seq} must start at pos0 0, not {r.pos0}")
            after[r.seq] = 0
        elif r.seq not in after:
            raise CompileError(f"step {i}: sequence {r.seq} does not exist (not allocated, or freed)")
        elif r.pos0 != after[r.seq]:
            raise CompileError(f"step {i}: sequence {r.seq} holds {after[r.seq]} tokens, the request "
                               f"says pos0 {r.pos0}")
    if len(after) > kv.max_seqs:
        raise CompileError(f"step {i}: {len(after)} live sequences, the KV cache tracks {kv.max_seqs} "
                           f"(kvcache.max_seqs)")
    for r in step:
        after[r.seq] += r.x.shape[0]
    pages = sum(-(-n // kv.page_size) for n in after.values())
    if check_pages and pages > kv.pages:
        raise CompileError(f"step {i}: the live sequences need {pages} KV-cache pages of {kv.page_size} "
                           f"tokens, the cache has {kv.pages}: free a sequence first")
    for r in step:
        if r.free:
            del after[r.seq]
    live.clear()
    live.update(after)


def run_layer(layer, steps, *, config="default", stall=0.0, backpressure=0.0, seed=None, sim=None,
              check=True, progress=None):
    """Run ``steps`` of ``layer`` on the chip.

    Parameters
    ----------
    layer : golden.DecoderLayer
        int8 or bf16 mode; a copy computes the expected rows, so its cache must be able to hold
        the steps' sequences (``max_seqs``, ``max_tokens``); the layer itself is not changed.
    steps : list of list of Request
        Each inner list is one step: the new tokens of one or more sequences, run together.
    config : str or ChipConfig
    stall, backpressure : float
        Random valid gaps / ready held low on every AXI channel of the testbench.
    seed : int or None
    sim : ChipSim or None
        A chip to reuse (its Verilator build); default one for ``config``.
    check : bool
        Compare every output row with golden (``outputs["match"]``: per step, bool per row).
    progress : callable or None
        Receives a line of text about every 10 s while the chip runs (``ChipSim.run``).

    Returns
    -------
    SimResult
        ``outputs``: ``y<i>`` (step i's rows, the layer's io dtype), ``expected<i>`` and
        ``match<i>`` with ``check``, ``run<i>_counters``; ``counters``: the last step's.
    """
    plan = plan_layer(layer, steps, config=config)
    if sim is None:
        sim = chip_for(plan, config)
    # a step that takes 5× the compiler's estimate (and over 2M cycles) is a hang
    timeout = max(2_000_000, 5 * max(st.asm.expected_cycles for st in plan.steps))
    res = sim.run(plan.memory, plan.programs, read_back=plan.read_back, stall=stall, backpressure=backpressure,
                  seed=seed, timeout_cycles=timeout, progress=progress)
    outputs = dict(res.outputs)
    for i, s in enumerate(plan.steps):
        outputs[f"y{i}"] = s.output(res.outputs[f"y{i}"])
        outputs[f"error{i}"] = sim.error_of(res, i)
    if check:
        ref = _golden_outputs(layer, steps)
        for i, want in enumerate(ref):
            got = outputs[f"y{i}"]
            outputs[f"expected{i}"] = want
            outputs[f"match{i}"] = np.array([np.array_equal(_bits(a), _bits(b)) for a, b in zip(got, want,
                                                                                                strict=True)])
    return SimResult(outputs=outputs, counters=res.counters, seed=res.seed, cycles=res.cycles, main="y0")


def _bits(x):
    x = np.ascontiguousarray(x)
    return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


def _golden_outputs(layer, steps):
    """The expected rows of every step: a copy of ``layer`` (same mode, scales and cache
    geometry) run request by request."""
    ref = copy.deepcopy(layer)
    out = []
    for step in steps:
        rows = []
        for r in step:
            if ref.length(r.seq) != r.pos0:
                raise ValueError(f"sequence {r.seq}: pos0 {r.pos0} but golden holds {ref.length(r.seq)} tokens")
            rows.append(ref.prefill(r.x, r.seq))
            if r.free:
                ref.free(r.seq)
        out.append(np.concatenate(rows))
    return out


@dataclass
class StepResult:
    """What :meth:`LayerSession.step` returns.

    Attributes
    ----------
    y : ndarray (rows, d_model) or None
        The step's output rows (the layer's io dtype), requests in order; None when the chip
        stopped with an error.
    error : (ChipError, int, int)
        The chip's ERROR_CODE, ERROR_DETAIL and ERROR_INDEX (``ChipError.OK``: none).
    counters : dict
        The chip's counters over the step; ``cycles`` is ``counters["cycles"]``.
    spans : list of (seq, first row, rows)
    appended : dict of seq → int
        Tokens the step appended to each sequence's KV cache (all of them unless the chip ran
        out of pages).
    expected, match : ndarray or None
        With checking: golden's rows and, per row, whether the chip's equal them bit for bit.
    """
    y: object
    error: tuple
    counters: dict
    cycles: int
    spans: list
    appended: dict
    expected: object = None
    match: object = None

    @property
    def ok(self):
        return self.error[0] == ChipError.OK

    def rows(self, seq):
        """The output rows of sequence ``seq``."""
        for s, first, n in self.spans:
            if s == seq:
                return self.y[first:first + n]
        raise KeyError(f"sequence {seq} is not in this step")


class LayerSession:
    """One decoder layer on a persistent chip simulation (:class:`sim.chip_session.ChipSession`):
    the layer's image is loaded once, then :meth:`step` compiles and runs one step at a time —
    the KV cache (page tables in the controller, K/V rows in its memory) keeps its state between
    steps. What a model driver needs when step t's inputs depend on step t − 1's outputs.

    Parameters
    ----------
    layer : golden.DecoderLayer
        int8 or bf16 mode, its KV cache geometry that of ``config`` (``max_tokens``,
        ``max_seqs``, ``page_size``); with ``check`` a copy runs every step too.
    config : str or ChipConfig
    max_pos : int or None
        Positions the image's RoPE table covers (default ``kvcache.max_tokens``).
    max_rows : int
        Rows (tokens over all requests) a step may have (the x and y areas below the image hold
        1 MiB each).
    sim : ChipSim or None
        The chip (its Verilator build and memory size); default one whose memory holds the image.
    check : bool
        Compare every step's rows with golden.
    stall, backpressure, seed, timeout
        As :class:`sim.chip_session.ChipSession`.

    Members
    -------
    live : dict of seq → int
        The sequences the chip's KV cache holds and their tokens.
    kv : golden.PagedKVCache
        The chip's page pool as golden sees it (``config.kvcache`` geometry, driven with every
        ALLOC, APPEND and FREE the chip executed): predicts each step's KV outcome, which the
        chip must match.
    history : list of dict
        Per step: ``rows``, ``cycles``, ``counters``, ``error``.

    The session is picklable until its first step (it starts the simulator then).
    """

    def __init__(self, layer, *, config="default", max_pos=None, max_rows=64, sim=None, check=True,
                 stall=0.0, backpressure=0.0, seed=None, timeout=3600.0):
        from golden.kvcache import PagedKVCache
        cfg = get_config(config)
        self.config = cfg
        if max_pos is None:
            max_pos = cfg.kvcache.max_tokens
        self.image = LayerImage(layer, cfg, base=_IMAGE_BASE, max_pos=max_pos)
        self._d = layer.config.d_model
        self._io = layer.io_dtype
        bus = cfg.memory.axi_data_bits // 8
        self._stride = -(-self._d * self._io.itemsize // bus) * bus
        self.max_rows = int(max_rows)
        # below the image: the program from 0, the x rows from _X_BASE, the y rows from _Y_BASE
        self._x_addr, self._y_addr = _X_BASE, _Y_BASE
        limit = (_Y_BASE - _X_BASE) // self._stride
        if not 1 <= self.max_rows <= limit:
            raise ValueError(f"max_rows must be in 1..{limit} (rows of {self._stride} bytes), not {max_rows!r}")
        end = self.image.end
        if sim is None:
            sim = ChipSim(cfg, mem_bytes=max(1 << 16, 1 << (end - 1).bit_length()))
        elif end > sim.mem_bytes:
            raise ValueError(f"the layer's image and x/y rows reach {end:#x}: past the chip's {sim.mem_bytes:#x} "
                             f"bytes of memory")
        self.sim = sim
        self.golden = copy.deepcopy(layer) if check else None
        self.kv = PagedKVCache.from_config(cfg.kvcache)
        self.live = {}
        self.history = []
        self._broken = None
        self._session = sim.session(self.image.segments, stall=stall, backpressure=backpressure, seed=seed,
                                    timeout=timeout)

    @staticmethod
    def mem_bytes_for(layer, config="default", *, max_pos=None):
        """Bytes of external memory a session of ``layer`` needs (a power of two): for building
        one :class:`ChipSim` that several sessions share."""
        cfg = get_config(config)
        image = LayerImage(layer, cfg, base=_IMAGE_BASE, max_pos=cfg.kvcache.max_tokens if max_pos is None
                           else max_pos)
        return max(1 << 16, 1 << (image.end - 1).bit_length())

    @property
    def seed(self):
        return self._session.seed

    def start(self):
        """Start the simulator now (the first :meth:`step` does otherwise)."""
        self._session.start()

    def close(self):
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def length(self, seq):
        """Tokens of ``seq`` in the chip's KV cache (0 when it is not allocated)."""
        return self.live.get(seq, 0)

    # -- one step -------------------------------------------------------------------------------
    def step(self, requests, *, check_pages=True, progress=None):
        """Compile and run one step (a list of :class:`Request`); returns a :class:`StepResult`.

        Raises :class:`CompileError` for a step the driver refuses (a sequence that does not
        exist, a wrong ``pos0``, too many sequences, pages that do not fit, a step the
        scratchpad cannot hold, more than ``max_rows`` rows) before anything runs.
        ``check_pages=False`` skips the page check (a test hook: the chip then finds the
        exhaustion itself, see :meth:`_out_of_pages`).

        The chip stopping with ``ChipError.KV`` / ``KVStatus.OUT_OF_PAGES`` at one of the
        step's APPENDs is a result, not an exception (``result.error``): the requests before the
        failing one hold the step's tokens, the failing one the tokens that fit, the later ones
        none (new ones are allocated, empty); ``live``, ``kv`` and the golden copy are brought
        to the same state; no output rows. Any other chip error, or a KV outcome that differs
        from golden's prediction, raises ``RuntimeError`` and ends the session's usefulness.
        """
        if self._broken:
            raise RuntimeError(f"this layer session cannot continue: {self._broken}")
        i = len(self.history)
        live = dict(self.live)
        _check_step(i, requests, live, self.config, check_pages=check_pages)
        rows = sum(r.x.shape[0] for r in requests)
        if rows > self.max_rows:
            raise CompileError(f"step {i}: {rows} rows, the session's x/y area holds {self.max_rows} (max_rows)")
        for r in requests:
            if r.x.dtype != self._io:
                raise TypeError(f"sequence {r.seq}: x must be {self._io}, not {r.x.dtype}")
        st = compile_step(self.image, requests, x_addr=self._x_addr, y_addr=self._y_addr, prog_addr=_PROG_BASE)
        if len(st.program_words) * isa.INSTR_BYTES > _X_BASE:
            raise CompileError(f"step {i}: the program does not fit below the layer image")
        predicted = self._predict_kv(requests)
        timeout = max(2_000_000, 5 * st.asm.expected_cycles)
        res = self._session.run(Program(st.program_words, addr=_PROG_BASE), memory=st.segments,
                                read_back=[("y", self._y_addr, rows * self._stride)], timeout_cycles=timeout,
                                progress=progress)
        error = self._session.error_of(res)
        out = StepResult(y=None, error=error, counters=res.counters, cycles=res.cycles, spans=list(st.spans),
                         appended={})
        self.history.append(dict(rows=rows, cycles=res.cycles, counters=res.counters,
                                 error=[int(error[0]), error[1], error[2]]))
        if error[0] == ChipError.OK:
            if predicted is not None:
                self._broken = (f"step {i}: golden's page pool predicts {predicted[1].name} for sequence "
                                f"{predicted[0].seq}, the chip ran the step")
                raise RuntimeError(self._broken)
            out.y = st.output(res.outputs["y"])
            out.appended = {r.seq: r.x.shape[0] for r in requests}
            self._commit(requests, requests, None)
            self.live = live
            if self.golden is not None:
                want = np.concatenate([self._golden_step(r) for r in requests])
                out.expected = want
                out.match = np.array([np.array_equal(_bits(a), _bits(b)) for a, b in zip(out.y, want, strict=True)])
            return out
        appends = dict(st.appends)       # instruction index → seq
        if error[0] == ChipError.KV and error[2] in appends and predicted is not None \
                and predicted[0].seq == appends[error[2]] and error[1] == int(predicted[1]):
            out.appended = self._out_of_pages(requests, predicted)
            return out
        self._broken = (f"step {i}: the chip stopped with {error[0].name} (detail {error[1]}, instruction "
                        f"{error[2]}); golden's page pool predicted "
                        + ("no error" if predicted is None else f"{predicted[1].name} for sequence {predicted[0].seq}"))
        raise RuntimeError(self._broken)

    def free(self, *seqs, progress=None):
        """FREE sequences on the chip (a program of KV FREEs) and on the golden side."""
        from compiler.layer import compile_free
        for s in seqs:
            if s not in self.live:
                raise CompileError(f"sequence {s} does not exist (not allocated, or freed)")
        words = compile_free(self.config, seqs)
        res = self._session.run(Program(words, addr=_PROG_BASE), progress=progress)
        error = self._session.error_of(res)
        if error[0] != ChipError.OK:
            self._broken = f"FREE of {seqs}: the chip stopped with {error[0].name} (detail {error[1]})"
            raise RuntimeError(self._broken)
        for s in seqs:
            del self.live[s]
            self.kv.free(s)
            if self.golden is not None:
                self.golden.free(s)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _kv_rows(self, n):
        kv = self.kv
        z = np.zeros((n, kv.kv_heads, kv.head_dim), kv.np_dtype)
        return z, z

    def _predict_kv(self, requests):
        """Golden's outcome of the step's KV instructions on a copy of :attr:`kv`, in program
        order (ALLOCs, APPENDs, FREEs): None, or (request, KVStatus, tokens appended) of the
        first refusal."""
        from golden.kvunit import execute_rows
        pool = copy.deepcopy(self.kv)
        for r in requests:
            if r.alloc:
                res = execute_rows(pool, KVOp.ALLOC, r.seq)
                if res.status != KVStatus.OK:
                    return r, res.status, 0
        for r in requests:
            res = execute_rows(pool, KVOp.APPEND, r.seq, *self._kv_rows(r.x.shape[0]))
            if res.status != KVStatus.OK:
                return r, res.status, res.appended
        return None

    def _commit(self, requests, appended_reqs, partial):
        """Apply to :attr:`kv` what the chip did: every ALLOC, the APPENDs of ``appended_reqs``
        (all their tokens) and of ``partial`` ((request, tokens) or None); the FREEs only when
        the step completed (``partial`` None and every request appended)."""
        from golden.kvunit import execute_rows
        for r in requests:
            if r.alloc:
                execute_rows(self.kv, KVOp.ALLOC, r.seq)
        for r in appended_reqs:
            execute_rows(self.kv, KVOp.APPEND, r.seq, *self._kv_rows(r.x.shape[0]))
        if partial is not None:
            r, n = partial
            if n:
                execute_rows(self.kv, KVOp.APPEND, r.seq, *self._kv_rows(n))
        elif len(appended_reqs) == len(requests):
            for r in requests:
                if r.free:
                    execute_rows(self.kv, KVOp.FREE, r.seq)

    def _golden_step(self, r):
        g = self.golden
        if g.length(r.seq) != r.pos0:
            raise ValueError(f"sequence {r.seq}: pos0 {r.pos0} but golden holds {g.length(r.seq)} tokens")
        y = g.prefill(r.x, r.seq)
        if r.free:
            g.free(r.seq)
        return y

    def _out_of_pages(self, requests, predicted):
        """The chip ran out of KV pages at request ``predicted[0]``'s APPEND: bring ``live``,
        ``kv`` and the golden copy to the chip's state. Returns seq → tokens appended."""
        failing, _, n = predicted
        k = requests.index(failing)
        before = requests[:k]
        self._commit(requests, before, (failing, n))
        appended = {}
        for r in requests:
            if r.alloc:
                self.live[r.seq] = 0
        for r in before:
            appended[r.seq] = r.x.shape[0]
        appended[failing.seq] = n
        for r in requests[k + 1:]:
            appended[r.seq] = 0
        for seq, t in appended.items():
            self.live[seq] = self.live.get(seq, 0) + t
        if self.golden is not None:
            # golden's K/V of a token depend on that token's x alone: running the appended rows
            # through the copy appends the same K/V rows the chip holds (their outputs are dropped)
            for r in requests:
                t = appended[r.seq]
                self.golden.prefill(r.x[:t], r.seq)
        return appended


def prefill_chunks(image, length, pos0=0, *, seq=0, max_rows=None):
    """Split a prefill of ``length`` tokens of one sequence, from position ``pos0``, into
    consecutive steps the chip holds: a list of ``(pos0, rows)``, each chunk the most rows whose
    step compiles at its positions (the scratchpad is the limit; scores and probabilities grow
    with the keys, so later chunks may be shorter), and at most ``max_rows`` (a server's token
    budget per step; default none). Raises the compiler's :class:`CompileError` for any other
    limit (RoPE table, softmax row, KV cache), and when not one row fits."""
    import ml_dtypes
    if length < 1 or pos0 < 0 or (max_rows is not None and max_rows < 1):
        raise ValueError(f"length and max_rows must be ≥ 1 and pos0 ≥ 0, not {length}, {max_rows}, {pos0}")
    io = np.dtype(np.float32) if image.mode == "int8" else np.dtype(ml_dtypes.bfloat16)
    d = image.lc.d_model

    def fits(p, n):
        x = np.zeros((n, d), io)
        try:
            compile_step(image, [Request(seq=seq, x=x, pos0=p, alloc=p == 0)], x_addr=0, y_addr=0, prog_addr=0)
        except CompileError as e:
            if "scratchpad" not in str(e):
                raise
            return False
        return True

    chunks, p, end = [], pos0, pos0 + length
    while p < end:
        lo, hi = 0, end - p if max_rows is None else min(end - p, max_rows)   # lo fits (0: nothing yet)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(p, mid):
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise CompileError(f"not one row of the prefill at position {p} fits the scratchpad")
        chunks.append((p, lo))
        p += lo
    return chunks
