"""Run matrix multiplies on the Verilated matmul engine (``sim.run_matmul``).

:func:`run_matmul` is the engineer's entry point: numpy in, numpy and the RTL's own performance
counters out. It validates its inputs, splits M into commands that fit the engine's buffers,
turns the operands into the engine's stream beats (docs/matmul.md), runs them through
Verilator with :mod:`sim.tb.matmul` and decodes the results. :func:`run_jobs` is the lower layer
(several prepared commands in one simulation, including deliberately bad ones) that the tests
use too.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from hdl.config import ChipConfig, get_config

__all__ = ["run_matmul", "run_jobs", "prepare_job", "MatmulJob", "JobResult", "engine_for", "design_for"]

_MAX_DIM = 65535


def engine_for(config):
    """The :class:`hdl.matmul.MatmulEngine` of ``config`` (preset name or ChipConfig)."""
    from hdl.matmul import MatmulEngine
    return MatmulEngine.from_config(get_config(config))


def counted_engine(engine):
    """``engine`` with an :class:`hdl.counters.EventCounters` on its ``events``: the engine's
    ports, and ``counts`` instead of ``events`` (docs/conventions.md, a standalone simulation)."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import Out

    from hdl.counters import EventCounters

    class CountedEngine(wiring.Component):
        def __init__(self):
            self._counters = EventCounters(engine.events.shape())
            members = {k: v for k, v in engine.signature.members.items() if k != "events"}
            super().__init__({**members, "counts": Out(self._counters.counts.shape())})

        def elaborate(self, platform):
            m = Module()
            m.submodules.engine, m.submodules.counters = engine, self._counters
            for name in ("cmd", "a", "w", "p"):
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(engine, name))
            for name in ("o", "resp"):
                wiring.connect(m, getattr(engine, name), wiring.flipped(getattr(self, name)))
            m.d.comb += [self.busy.eq(engine.busy), self._counters.events.eq(engine.events),
                         self.counts.eq(self._counters.counts)]
            return m

    return CountedEngine()


_designs = {}


def design_for(config):
    """The Verilated engine of ``config`` (built once per process, cached on disk)."""
    from hdl.matmul import MatmulEngine

    from . import runner
    cfg = get_config(config)
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if key not in _designs:
        _designs[key] = runner.build(lambda: counted_engine(MatmulEngine.from_config(cfg)), "matmul_engine",
                                     params={"config": cfg.to_dict()})
    return _designs[key]


def _pack_fields(layout, values):
    word = 0
    for name, fld in layout:
        v = int(values.get(name, 0))
        width = fld.shape.width if hasattr(fld.shape, "width") else fld.width
        if not 0 <= v < (1 << width):
            raise ValueError(f"command field {name}={v} does not fit {width} bits")
        word |= v << fld.offset
    return word


def _unpack_fields(layout, word):
    out = {}
    for name, fld in layout:
        out[name] = (word >> fld.offset) & ((1 << fld.width) - 1)
    return out


@dataclass
class MatmulJob:
    """One engine command with the stream beats it needs (see :func:`prepare_job`)."""
    cmd: dict
    a_beats: np.ndarray           # uint16 [n, R]
    w_beats: np.ndarray           # uint16 [n, C]
    p_beats: np.ndarray           # uint8 [n, 9·C] (bias, multiplier, shift)
    o_beats: int                  # result beats the command produces
    decode: object = None         # result lanes [M, N] uint32 → user array
    m: int = 0
    n: int = 0


@dataclass
class JobResult:
    code: int
    counters: dict
    lanes: np.ndarray = field(repr=False, default=None)  # uint32 [M, N] raw result lanes
    result: np.ndarray = field(repr=False, default=None)
    accepted_at: int = -1   # testbench cycle at which the engine accepted the command


def _lanes16(x):
    """Operand values → 16-bit lanes (int8 sign-extended, uint8 zero-extended, bf16 bits)."""
    if x.dtype == np.int8:
        return x.astype(np.int16).view(np.uint16)
    if x.dtype == np.uint8:
        return x.astype(np.uint16)
    return np.ascontiguousarray(x).view(np.uint16)


def prepare_job(a, w, *, rows, cols, bias=None, multiplier=None, shift=None, out_fmt=0,
                bf16=False, a_unsigned=False, w_transposed=False, w_wide=False, raw_cmd=None):
    """The beats of one command computing ``a @ w``; ``a``, ``w`` already validated numpy arrays
    of int8/uint8/bf16, ``bias`` uint32 bits, ``multiplier``/``shift`` integer arrays.
    ``w_wide`` (int8, rows): two W rows per beat, row 2j in the lanes' low bytes, 2j + 1 in
    their high bytes. ``raw_cmd`` overrides command fields (to send malformed commands on
    purpose)."""
    from spec.codes import OutFormat
    M, K = a.shape
    N = w.shape[1]
    R, C = rows, cols
    Kt, Nt = -(-K // R), -(-N // C)
    J = -(-R // C)
    ap = np.zeros((M, Kt * R), np.uint16)
    ap[:, :K] = _lanes16(a)
    a_beats = ap.reshape(M, Kt, R).transpose(1, 0, 2).reshape(Kt * M, R)
    wp = np.zeros((Kt * R, Nt * C), np.uint16)
    wp[:K, :N] = _lanes16(w)
    tiles = wp.reshape(Kt, R, Nt, C).transpose(2, 0, 1, 3)   # [nt, kt, r, c]
    if w_wide:
        if bf16 or w_transposed:
            raise ValueError("wide weight beats carry int8 weights in row orientation only")
        # per tile, rows (2j, 2j + 1) → one beat; the rows past K of the last K tile are absent
        beats = []
        for nt in range(Nt):
            for kt in range(Kt):
                kv = min(R, K - kt * R)
                blk = np.zeros((2 * (-(-kv // 2)), C), np.uint16)
                blk[:kv] = tiles[nt, kt, :kv] & 0xFF
                beats.append(blk[0::2] | (blk[1::2] << 8))
        w_beats = np.concatenate(beats).astype(np.uint16)
    elif not w_transposed:
        row_valid = np.arange(Kt * R) < K
        w_beats = tiles.reshape(Nt, Kt * R, C)[:, row_valid, :].reshape(-1, C)
    else:
        cols_t = np.zeros((Nt, Kt, C, J * C), np.uint16)      # [nt, kt, c, k within tile]
        cols_t[..., :R] = tiles.transpose(0, 1, 3, 2)
        cols_t = cols_t.reshape(Nt, Kt, C, J, C)
        col_valid = (np.arange(Nt)[:, None] * C + np.arange(C)[None, :]) < N   # [nt, c]
        mask = np.broadcast_to(col_valid[:, None, :, None], (Nt, Kt, C, J))
        w_beats = cols_t[mask].reshape(-1, C)
    has_bias = bias is not None
    need_p = has_bias or out_fmt == OutFormat.INT8
    if need_p:
        def per_tile(x, dtype):
            full = np.zeros(Nt * C, dtype)
            if x is not None:
                full[:N] = x
            return full.reshape(Nt, C)
        p = np.concatenate([per_tile(bias, "<u4").view(np.uint8).reshape(Nt, 4 * C),
                            per_tile(multiplier, "<u4").view(np.uint8).reshape(Nt, 4 * C),
                            per_tile(shift, np.uint8).reshape(Nt, C)], axis=1)
    else:
        p = np.zeros((0, 9 * C), np.uint8)
    cmd = dict(m=M, k=K, n=N, dtype=int(bf16), out_fmt=out_fmt, w_transposed=int(w_transposed),
               a_unsigned=int(a_unsigned), has_bias=int(has_bias), w_wide=int(w_wide))
    cmd.update(raw_cmd or {})
    return MatmulJob(cmd=cmd, a_beats=a_beats, w_beats=w_beats, p_beats=p, o_beats=Nt * M, m=M, n=N)


def _empty_job(cmd, rows, cols):
    """A command with no operand beats (a malformed one, answered with an error)."""
    return MatmulJob(cmd=dict(cmd), a_beats=np.zeros((0, rows), np.uint16),
                     w_beats=np.zeros((0, cols), np.uint16), p_beats=np.zeros((0, 9 * cols), np.uint8),
                     o_beats=0)


def run_jobs(jobs, *, config="default", stall=0.0, backpressure=0.0, seed=0):
    """Run prepared jobs back to back in one simulation; return one :class:`JobResult` each.

    All commands are offered at once, so each one after the first is sent while the engine is
    busy (the busy rule, docs/matmul.md). Raises :class:`sim.runner.SimulationError` when the
    testbench fails (e.g. a stream hangs).
    """
    from hdl.counters import COUNTER_WIDTH
    from hdl.matmul import command_layout, engine_events_layout, response_layout, result_layout

    from .runner import run
    cfg = get_config(config)
    R, C = cfg.array.rows, cfg.array.cols
    cmd_layout = command_layout()
    cmds = [_pack_fields(cmd_layout, j.cmd) for j in jobs]

    def cat(name, width, dtype):
        parts = [getattr(j, name) for j in jobs]
        return np.concatenate(parts) if parts else np.zeros((0, width), dtype)
    a = cat("a_beats", R, np.uint16)
    w = cat("w_beats", C, np.uint16)
    p = cat("p_beats", 9 * C, np.uint8)
    o_bits = result_layout(C).size
    r_bits = response_layout().size
    o_bytes, r_bytes = -(-o_bits // 8), -(-r_bits // 8)
    total_o = sum(j.o_beats for j in jobs)
    names = [name for name, _ in engine_events_layout(R, C)]
    c_bytes = -(-len(names) * COUNTER_WIDTH // 8)
    out = run(design_for(cfg), "sim.tb.matmul", testcase="matmul_run", seed=seed,
              data={"a": a.view(np.uint8).reshape(len(a), 2 * R), "w": w.view(np.uint8).reshape(len(w), 2 * C),
                    "p": p, "cmds": cmds, "o_beats": total_o, "o_bytes": o_bytes, "resp_bytes": r_bytes,
                    "counts_bytes": c_bytes,
                    "stall": float(stall), "backpressure": float(backpressure), "seed": int(seed)})
    o = out["o"]
    resp = out["resp"]
    results = []
    pos = 0
    r_layout = response_layout()
    mask = (1 << COUNTER_WIDTH) - 1
    before = [0] * len(names)
    for i, job in enumerate(jobs):
        word = int.from_bytes(resp[i].tobytes(), "little")
        fields = _unpack_fields(r_layout, word)
        # the event counts after this command's response, less those after the one before
        total = int.from_bytes(out["counts"][i].tobytes(), "little")
        after = [(total >> (COUNTER_WIDTH * j)) & mask for j in range(len(names))]
        counters = {"cycles": int(fields["cycles"]),
                    **{name: (x - y) & mask for name, x, y in zip(names, after, before, strict=True)}}
        counters["macs"] = counters["macs_int8"] + counters["macs_bf16"]
        before = after
        res = JobResult(code=int(fields["code"]), counters=counters, accepted_at=int(out["cmd_accept"][i]))
        beats = o[pos:pos + job.o_beats]
        pos += job.o_beats
        if job.o_beats:
            data_ = np.ascontiguousarray(beats[:, :4 * C]).view("<u4").reshape(job.o_beats, C)
            last = (beats[:, 4 * C] & 1).astype(bool)
            expect_last = np.zeros(job.o_beats, bool)
            expect_last[-1] = True
            if not np.array_equal(last, expect_last):
                raise RuntimeError(f"command {i}: the 'last' flag is on beats {np.flatnonzero(last).tolist()}, "
                                   f"expected only on beat {job.o_beats - 1}")
            Nt = job.o_beats // job.m
            lanes = data_.reshape(Nt, job.m, C).transpose(1, 0, 2).reshape(job.m, Nt * C)[:, :job.n]
            res.lanes = np.ascontiguousarray(lanes)
            if job.decode is not None:
                res.result = job.decode(res.lanes)
        results.append(res)
    return results


def _as_array(x, name):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, not {type(x).__name__}")
    return x


def run_matmul(a, w, bias=None, requant=None, out_dtype=None, config="default", stall=0.0,
               backpressure=0.0, seed=0, *, w_orientation="rows"):
    """Compute ``a @ w (+ bias)`` on the Verilated matmul engine.

    Parameters
    ----------
    a : ndarray [M, K] of int8, uint8 (int8 mode, unsigned activations) or ml_dtypes.bfloat16
    w : ndarray [K, N] of int8 (int8 mode) or bfloat16 (bf16 mode)
    bias : ndarray [N], optional
        int32 (int8 mode) or float32 (bf16 mode): the accumulator start value.
    requant : (multiplier, shift), optional
        int8 mode: per-output-channel arrays [N] (0 ≤ multiplier < 2**31, 1 ≤ shift ≤ 62);
        the output is then int8 = golden.requantize(acc, multiplier, shift).
    out_dtype : str or dtype, optional
        int8 mode: "int32" (default) or "int8" (default when ``requant`` is given); bf16 mode:
        "float32" (default) or "bfloat16".
    config : str or ChipConfig
        Engine configuration (preset name).
    stall, backpressure : float in [0, 1)
        Probability of a valid gap before each input beat / of ready low on each output cycle.
    seed : int
        Seed of those random stalls (logged by the testbench).
    w_orientation : "rows", "columns" or "wide_rows"
        How the weight tiles stream in: rows along K (one W row of C 16-bit lanes per beat),
        transposed (columns, as K and V come from the KV cache), or, int8 only, wide rows (two
        W rows per beat, two int8 weights per lane: the weight port's 2·C bytes all carry
        weights). The result is the same.

    Returns
    -------
    result : ndarray [M, N]
        int32, int8, float32 or bfloat16.
    counters : dict
        The commands' ``cycles`` (from their responses) and the engine's event counts
        (docs/matmul.md "Counters": busy, rows, macs_int8, macs_bf16, the stalls, memory
        accesses, beats), summed over the commands, plus ``macs``, ``commands``,
        ``utilization`` (macs / (R·C·cycles)), ``weight_bytes_per_cycle``,
        ``weight_port_bytes_per_cycle`` (2·C: C lanes of 16 bits) and
        ``weight_format_bytes_per_beat`` (the weight bytes one beat of the format carries).
    """
    import ml_dtypes

    from spec.codes import MatmulStatus as Status
    from spec.codes import OutFormat

    cfg = get_config(config) if isinstance(config, (str, ChipConfig)) else None
    if cfg is None:
        raise ValueError(f"config must be a preset name or a ChipConfig, not {config!r}")
    a = _as_array(a, "a")
    w = _as_array(w, "w")
    if a.ndim != 2:
        raise ValueError(f"a must be 2-D [M, K], got shape {list(a.shape)}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [K, N], got shape {list(w.shape)}")
    M, K = a.shape
    if w.shape[0] != K:
        raise ValueError(f"a is [M, K] = {list(a.shape)} and w is [K, N] = {list(w.shape)}: K differs")
    N = w.shape[1]
    for name, v in (("M", M), ("K", K), ("N", N)):
        if not 1 <= v <= _MAX_DIM:
            raise ValueError(f"{name} must be in 1..{_MAX_DIM}, not {v}")
    bf16_t = np.dtype(ml_dtypes.bfloat16)
    if a.dtype == bf16_t:
        bf16 = True
        if w.dtype != bf16_t:
            raise ValueError(f"a is bfloat16, so w must be bfloat16 too, not {w.dtype}")
    elif a.dtype in (np.int8, np.uint8):
        bf16 = False
        if w.dtype != np.int8:
            raise ValueError(f"a is {a.dtype}, so w must be int8, not {w.dtype}")
    else:
        raise ValueError(f"a must be int8, uint8 or bfloat16, not {a.dtype}")
    if not (isinstance(stall, (int, float)) and 0 <= stall < 1):
        raise ValueError(f"stall must be a probability in [0, 1), not {stall!r}")
    if not (isinstance(backpressure, (int, float)) and 0 <= backpressure < 1):
        raise ValueError(f"backpressure must be a probability in [0, 1), not {backpressure!r}")
    if w_orientation not in ("rows", "columns", "wide_rows"):
        raise ValueError(f"w_orientation must be 'rows', 'columns' or 'wide_rows', not {w_orientation!r}")
    if w_orientation == "wide_rows" and bf16:
        raise ValueError("w_orientation 'wide_rows' carries two int8 weights per lane: int8 mode only")

    if out_dtype is None:
        out_name = "float32" if bf16 else ("int8" if requant is not None else "int32")
    else:
        try:
            out_name = np.dtype(out_dtype).name
        except TypeError:
            raise ValueError(f"out_dtype {out_dtype!r} is not a dtype") from None
    allowed = ("float32", "bfloat16") if bf16 else ("int32", "int8")
    if out_name not in allowed:
        raise ValueError(f"out_dtype must be one of {allowed} in {'bf16' if bf16 else 'int8'} mode, "
                         f"not {out_name}")
    out_fmt = {"int32": OutFormat.INT32, "int8": OutFormat.INT8, "float32": OutFormat.FP32,
               "bfloat16": OutFormat.BF16}[out_name]

    bias_bits = None
    if bias is not None:
        bias = _as_array(bias, "bias")
        want = np.float32 if bf16 else np.int32
        if bias.dtype != want:
            raise ValueError(f"bias must be {np.dtype(want).name} in {'bf16' if bf16 else 'int8'} mode, "
                             f"not {bias.dtype}")
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape [N] = [{N}], got {list(bias.shape)}")
        bias_bits = np.ascontiguousarray(bias).view(np.uint32)
    multiplier = shift = None
    if requant is not None:
        if bf16:
            raise ValueError("requant applies to int8 mode only (a is bfloat16)")
        if out_fmt != OutFormat.INT8:
            raise ValueError(f"requant was given but out_dtype is {out_name}; requantized output is int8")
        try:
            multiplier, shift = requant
        except (TypeError, ValueError):
            raise ValueError("requant must be a pair (multiplier, shift) of arrays [N]") from None
        multiplier = np.asarray(multiplier)
        shift = np.asarray(shift)
        for name, x, lo, hi in (("multiplier", multiplier, 0, (1 << 31) - 1), ("shift", shift, 1, 62)):
            if x.dtype.kind not in "iu":
                raise ValueError(f"requant {name} must be integers, not {x.dtype}")
            if x.shape != (N,):
                raise ValueError(f"requant {name} must have shape [N] = [{N}], got {list(x.shape)}")
            if x.size and (x.min() < lo or x.max() > hi):
                raise ValueError(f"requant {name} must be in {lo}..{hi}, got {x.min()}..{x.max()}")
        multiplier = multiplier.astype(np.uint32)
        shift = shift.astype(np.uint8)
    elif out_fmt == OutFormat.INT8:
        raise ValueError("out_dtype int8 needs requant=(multiplier, shift)")

    from hdl.matmul import MatmulEngine
    acc_depth, a_depth = MatmulEngine.buffer_sizes(cfg)
    R, C = cfg.array.rows, cfg.array.cols
    Kt = -(-K // R)
    m_chunk = min(acc_depth, a_depth // Kt)
    if m_chunk < 1:
        raise ValueError(f"K = {K} needs {Kt} activation words per row; the engine of config "
                         f"{cfg.name!r} holds {a_depth}")

    def decode(lanes):
        if out_fmt == OutFormat.INT32:
            return lanes.view(np.int32)
        if out_fmt == OutFormat.INT8:
            return lanes.view(np.int32).astype(np.int8)
        if out_fmt == OutFormat.FP32:
            return lanes.view(np.float32)
        return (lanes & 0xFFFF).astype(np.uint16).view(ml_dtypes.bfloat16)

    jobs = []
    for m0 in range(0, M, m_chunk):
        job = prepare_job(a[m0:m0 + m_chunk], w, rows=R, cols=C, bias=bias_bits, multiplier=multiplier,
                          shift=shift, out_fmt=out_fmt, bf16=bf16, a_unsigned=a.dtype == np.uint8,
                          w_transposed=w_orientation == "columns", w_wide=w_orientation == "wide_rows")
        job.decode = decode
        jobs.append(job)
    results = run_jobs(jobs, config=cfg, stall=stall, backpressure=backpressure, seed=seed)
    for i, r in enumerate(results):
        if r.code != Status.OK:
            raise RuntimeError(f"command {i}: the engine answered status {r.code}")
    result = np.concatenate([r.result for r in results], axis=0)
    counters = {name: sum(r.counters[name] for r in results) for name in results[0].counters}
    counters["commands"] = len(results)
    counters["utilization"] = counters["macs"] / (R * C * counters["cycles"])
    counters["weight_bytes_per_cycle"] = (K * N * (2 if bf16 else 1) * len(results)) / counters["cycles"]
    # the weight port is C lanes of 16 bits; its bytes that carry weights depend on the format
    counters["weight_port_bytes_per_cycle"] = 2 * C
    counters["weight_format_bytes_per_beat"] = C * (2 if bf16 or w_orientation == "wide_rows" else 1)
    return result, counters
