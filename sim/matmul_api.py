"""Run matrix multiplies on the Verilated matmul engine (``sim.run_matmul``).

:func:`run_matmul` is the engineer's entry point: numpy in, a :class:`sim.SimResult` out (the
result, each command's response and event counts, the engine's counters). It validates its
inputs, splits M into commands that fit the engine's buffers, turns the operands into the
engine's stream beats (docs/matmul.md), runs them through Verilator with the kit's stream
testbench (:func:`sim.streams.run_streams`) and decodes the results. :func:`run_jobs` is the
lower layer (several prepared commands in one simulation, including deliberately bad ones) that
the tests use too.
"""

import json
from dataclasses import dataclass

import numpy as np

from hdl.config import ChipConfig, get_config

from .packing import pack_fields, pack_lanes, rows_to_words, unpack_fields, unpack_lanes
from .result import SimResult
from .runner import SimulationError
from .streams import check_probability, run_streams

__all__ = ["run_matmul", "run_jobs", "prepare_job", "empty_job", "MatmulJob", "engine_for", "design_for"]

_MAX_DIM = 65535


def engine_for(config):
    """The :class:`hdl.matmul.MatmulEngine` of ``config`` (preset name or ChipConfig)."""
    from hdl.matmul import MatmulEngine
    return MatmulEngine.from_config(get_config(config))


_designs = {}


def design_for(config):
    """The Verilated engine of ``config`` (built once per process, cached on disk): the engine in
    :class:`hdl.standalone.Standalone`, its events counted on ``counts``, ``resp_taken`` after
    each response."""
    from hdl.matmul import MatmulEngine
    from hdl.standalone import Standalone

    from . import runner
    cfg = get_config(config)
    key = json.dumps(cfg.to_dict(), sort_keys=True)
    if key not in _designs:
        _designs[key] = runner.build(lambda: Standalone(MatmulEngine.from_config(cfg), taken=("resp",)),
                                     "matmul_engine", params={"config": cfg.to_dict(), "top": "standalone"})
    return _designs[key]


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


def _lanes16(x):
    """Operand values → 16-bit lanes (int8 sign-extended, uint8 zero-extended, bf16 bits)."""
    if x.dtype == np.int8:
        return x.astype(np.int16).view(np.uint16)
    if x.dtype == np.uint8:
        return x.astype(np.uint16)
    return np.ascontiguousarray(x).view(np.uint16)


def prepare_job(a, w, *, rows, cols, bias=None, multiplier=None, shift=None, out_fmt=0,
                bf16=False, a_unsigned=False, w_transposed=False, w_wide=False, interleave=0, raw_cmd=None):
    """The beats of one command computing ``a @ w``; ``a``, ``w`` already validated numpy arrays
    of int8/uint8/bf16, ``bias`` uint32 bits, ``multiplier``/``shift`` integer arrays.
    ``w_wide`` (int8, rows): two W rows per beat, row 2j in the lanes' low bytes, 2j + 1 in
    their high bytes. ``interleave``: G − 1, the weight tiles in the order of
    :func:`spec.matmul_layout.tile_order`. ``raw_cmd`` overrides command fields (to send
    malformed commands on purpose)."""
    from spec.codes import OutFormat
    from spec.matmul_layout import tile_order
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
    # the beats tile by tile in the order for nt: for kt, then in the command's tile order
    kv = [min(R, K - kt * R) for kt in range(Kt)]
    nv = [min(C, N - nt * C) for nt in range(Nt)]
    if w_wide:
        if bf16 or w_transposed:
            raise ValueError("wide weight beats carry int8 weights in row orientation only")
        # per tile, rows (2j, 2j + 1) → one beat; the rows past K of the last K tile are absent
        beats = []
        for nt in range(Nt):
            for kt in range(Kt):
                blk = np.zeros((2 * (-(-kv[kt] // 2)), C), np.uint16)
                blk[:kv[kt]] = tiles[nt, kt, :kv[kt]] & 0xFF
                beats.append(blk[0::2] | (blk[1::2] << 8))
        w_beats = np.concatenate(beats).astype(np.uint16)
        per_tile = [[-(-kv[kt] // 2) for kt in range(Kt)] for _ in range(Nt)]
    elif not w_transposed:
        row_valid = np.arange(Kt * R) < K
        w_beats = tiles.reshape(Nt, Kt * R, C)[:, row_valid, :].reshape(-1, C)
        per_tile = [kv for _ in range(Nt)]
    else:
        cols_t = np.zeros((Nt, Kt, C, J * C), np.uint16)      # [nt, kt, c, k within tile]
        cols_t[..., :R] = tiles.transpose(0, 1, 3, 2)
        cols_t = cols_t.reshape(Nt, Kt, C, J, C)
        col_valid = (np.arange(Nt)[:, None] * C + np.arange(C)[None, :]) < N   # [nt, c]
        mask = np.broadcast_to(col_valid[:, None, :, None], (Nt, Kt, C, J))
        w_beats = cols_t[mask].reshape(-1, C)
        per_tile = [[nv[nt] * J] * Kt for nt in range(Nt)]
    if interleave:
        ends = np.cumsum([n for row in per_tile for n in row])
        blocks = np.split(w_beats, ends[:-1])
        w_beats = np.concatenate([blocks[nt * Kt + kt] for nt, kt in tile_order(Kt, Nt, interleave)])
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
               a_unsigned=int(a_unsigned), has_bias=int(has_bias), w_wide=int(w_wide), interleave=int(interleave))
    cmd.update(raw_cmd or {})
    return MatmulJob(cmd=cmd, a_beats=a_beats, w_beats=w_beats, p_beats=p, o_beats=Nt * M, m=M, n=N)


def empty_job(cmd, rows, cols):
    """A command with no operand beats (a malformed one, answered with an error; ``cmd``: its
    fields, the missing ones 0)."""
    return MatmulJob(cmd=dict(cmd), a_beats=np.zeros((0, rows), np.uint16),
                     w_beats=np.zeros((0, cols), np.uint16), p_beats=np.zeros((0, 9 * cols), np.uint8),
                     o_beats=0)


def _command_counters(names, words, codes_cycles):
    """Per command: its response's ``cycles`` and the event counts it added (a structured array)."""
    from hdl.counters import COUNTER_WIDTH
    after = unpack_fields({name: COUNTER_WIDTH for name in names}, list(words))
    n = len(words)
    fields = ["cycles", *names, "macs"]
    out = np.zeros(n, [(f, np.int64) for f in fields])
    out["cycles"] = codes_cycles
    mask = (1 << COUNTER_WIDTH) - 1
    for name in names:
        totals = np.asarray(after[name], np.int64)
        out[name] = (totals - np.concatenate([[0], totals[:-1]])) & mask
    out["macs"] = out["macs_int8"] + out["macs_bf16"]
    return out


def run_jobs(jobs, *, config="default", stall=0.0, backpressure=0.0, seed=None):
    """Run prepared jobs back to back in one simulation.

    All commands are offered at once, so each one after the first is sent while the engine is
    busy (the busy rule, docs/matmul.md).

    Returns
    -------
    SimResult
        ``outputs``: ``lanes`` (the main output: per command, an object array entry with its raw
        result lanes, uint32 [M, N], or None for a command without results), ``results`` (per
        command, ``job.decode`` of its lanes, or None), ``codes`` (each response's status,
        :class:`spec.codes.MatmulStatus`), ``command_counters`` (a structured array, one entry
        per command: its response's ``cycles``, the engine's events it added, counted from
        the cycle after the response before it to the cycle of its own response, and ``macs``),
        ``cmd_cycles``, ``a_cycles``, ``w_cycles``, ``p_cycles``, ``o_cycles``, ``resp_cycles``
        (the cycle of every accepted beat). ``counters``: the engine's events over the run.

    Raises
    ------
    sim.runner.SimulationError
        The testbench failed (e.g. a stream hangs), or the results are not framed as the
        commands ask (``last`` elsewhere than on each command's final beat).
    """
    from hdl.matmul import command_layout, engine_events_layout, response_layout

    cfg = get_config(config)
    R, C = cfg.array.rows, cfg.array.cols
    stall, backpressure = check_probability("stall", stall), check_probability("backpressure", backpressure)
    cmds = [pack_fields(command_layout(), j.cmd, what=f"command {i}: field") for i, j in enumerate(jobs)]

    def cat(name, width, dtype):
        parts = [getattr(j, name) for j in jobs]
        return np.concatenate(parts) if parts else np.zeros((0, width), dtype)
    sources = {"cmd": cmds, "a": pack_lanes(cat("a_beats", R, np.uint16), 16),
               "w": pack_lanes(cat("w_beats", C, np.uint16), 16),
               "p": rows_to_words(cat("p_beats", 9 * C, np.uint8))}
    names = [name for name, _ in engine_events_layout(R, C)]
    total_o = sum(j.o_beats for j in jobs)
    run = run_streams(design_for(cfg), sources=sources, sinks={"o": total_o, "resp": len(jobs)},
                      taps={"counts": ("counts", "resp_taken")}, counters=names, stall=stall,
                      backpressure=backpressure, seed=seed, registered_outputs=True)
    print(f"run_jobs: config={cfg.name} seed={run.seed} commands={len(jobs)}")
    resp = unpack_fields(response_layout(), run.beats["resp"])
    counts_after, _ = run.taps["counts"]
    if len(counts_after) != len(jobs):
        raise SimulationError(f"{len(counts_after)} count samples for {len(jobs)} responses (seed {run.seed})")
    o_words = run.beats["o"]
    data = unpack_lanes(o_words, C, 32)
    last = np.array([(w >> (32 * C)) & 1 for w in o_words], bool)
    lanes, results = np.empty(len(jobs), object), np.empty(len(jobs), object)
    pos = 0
    for i, job in enumerate(jobs):
        beats, flags = data[pos:pos + job.o_beats], last[pos:pos + job.o_beats]
        pos += job.o_beats
        if not job.o_beats:
            continue
        if not np.array_equal(flags, np.arange(job.o_beats) == job.o_beats - 1):
            raise SimulationError(f"command {i}: the 'last' flag is on beats {np.flatnonzero(flags).tolist()}, "
                                  f"expected only on beat {job.o_beats - 1} (seed {run.seed})")
        Nt = job.o_beats // job.m
        tiles = beats.reshape(Nt, job.m, C).transpose(1, 0, 2).reshape(job.m, Nt * C)
        lanes[i] = np.ascontiguousarray(tiles[:, :job.n])
        if job.decode is not None:
            results[i] = job.decode(lanes[i])
    outputs = {"lanes": lanes, "results": results, "codes": np.asarray(resp["code"], np.int64),
               "command_counters": _command_counters(names, counts_after, resp["cycles"])}
    outputs.update({f"{name}_cycles": stamps for name, stamps in run.accepted_at.items()})
    return SimResult(outputs=outputs, counters=run.counts, seed=run.seed, cycles=run.cycles, main="lanes")


def _as_array(x, name):
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, not {type(x).__name__}")
    return x


def run_matmul(a, w, bias=None, requant=None, out_dtype=None, *, config="default", stall=0.0,
               backpressure=0.0, seed=None, w_orientation="rows", interleave=None):
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
        Probability of a valid gap on each input stream (``cmd``, ``a``, ``w``, ``p``) / of ready
        low on each output stream (``o``, ``resp``), per cycle.
    seed : int or None
        Seed of those random stalls (random if None; printed).
    w_orientation : "rows", "columns" or "wide_rows"
        How the weight tiles stream in: rows along K (one W row of C 16-bit lanes per beat),
        transposed (columns, as K and V come from the KV cache), or, int8 only, wide rows (two
        W rows per beat, two int8 weights per lane: the weight port's 2·C bytes all carry
        weights). The result is the same.
    interleave : int or None
        G − 1: the N tiles the engine issues together, K tile by K tile (docs/matmul.md,
        "Schedule"), 0..15, with G·M ≤ acc_depth per command (M is split accordingly). None:
        :meth:`hdl.matmul.MatmulEngine.interleave_for` chooses it (G = 1 unless M is small). The
        result is the same.

    Returns
    -------
    SimResult
        ``output`` (``outputs["c"]``): the result [M, N], int32, int8, float32 or bfloat16.
        Per command (M is split into commands that fit the buffers): ``codes`` (all OK),
        ``command_counters`` (a structured array: the response's ``cycles``, the engine's
        events of the command, ``macs``). Over the commands: ``utilization`` (MACs / (R·C·
        command cycles)), ``weight_bytes_per_cycle`` (the bytes of W each command reads, over
        its cycles) and ``weight_port_fraction`` (of the weight port's 2·C bytes per cycle: C
        lanes of 16 bits), 0-d arrays. ``cmd_cycles``, ``a_cycles``, ``w_cycles``, ``p_cycles``,
        ``o_cycles``, ``resp_cycles``: the cycle of every accepted beat. ``counters``: the
        engine's events over the run (docs/matmul.md "Counters"). ``cycles``: from reset
        release to the last handshake.

    Raises
    ------
    ValueError
        Bad input (shapes, dtypes, ranges, a K too long for the activation buffer), naming it.
    sim.runner.SimulationError
        The engine hangs, frames its results wrongly or answers a command with an error.
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
    stall, backpressure = check_probability("stall", stall), check_probability("backpressure", backpressure)
    if w_orientation not in ("rows", "columns", "wide_rows"):
        raise ValueError(f"w_orientation must be 'rows', 'columns' or 'wide_rows', not {w_orientation!r}")
    if w_orientation == "wide_rows" and bf16:
        raise ValueError("w_orientation 'wide_rows' carries two int8 weights per lane: int8 mode only")
    if interleave is not None and (isinstance(interleave, bool) or not isinstance(interleave, (int, np.integer))
                                   or not 0 <= interleave <= 15):
        raise ValueError(f"interleave must be None or an int in 0..15, not {interleave!r}")

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
    if Kt > a_depth:
        raise ValueError(f"K = {K} needs {Kt} activation words per row; the engine of config "
                         f"{cfg.name!r} holds {a_depth}")
    tile_beats = {"rows": R, "wide_rows": -(-R // 2), "columns": C * -(-R // C)}[w_orientation]

    def pick(m):
        if interleave is not None:
            return int(interleave)
        return MatmulEngine.interleave_for(cfg, m, K, N, bf16=bf16, tile_beats=tile_beats)
    m_chunk = min(acc_depth, a_depth // Kt)
    if interleave is not None:
        m_chunk = min(m_chunk, acc_depth // (int(interleave) + 1))

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
        rows_m = min(m_chunk, M - m0)
        job = prepare_job(a[m0:m0 + m_chunk], w, rows=R, cols=C, bias=bias_bits, multiplier=multiplier,
                          shift=shift, out_fmt=out_fmt, bf16=bf16, a_unsigned=a.dtype == np.uint8,
                          w_transposed=w_orientation == "columns", w_wide=w_orientation == "wide_rows",
                          interleave=pick(rows_m))
        job.decode = decode
        jobs.append(job)
    res = run_jobs(jobs, config=cfg, stall=stall, backpressure=backpressure, seed=seed)
    for i, code in enumerate(res.codes):
        if code != Status.OK:
            try:
                name = Status(int(code)).name
            except ValueError:
                name = int(code)
            raise SimulationError(f"command {i}: the engine answered status {name} (seed {res.seed})")
    per_cmd = res.command_counters
    cycles = int(per_cmd["cycles"].sum())
    w_bytes = K * N * (2 if bf16 else 1) * len(jobs)
    outputs = {"c": np.concatenate(list(res.results), axis=0), "codes": res.codes, "command_counters": per_cmd,
               "interleave": np.array([j.cmd["interleave"] for j in jobs]),
               "utilization": np.array(per_cmd["macs"].sum() / (R * C * cycles)),
               "weight_bytes_per_cycle": np.array(w_bytes / cycles),
               "weight_port_fraction": np.array(w_bytes / cycles / (2 * C))}
    outputs.update({k: v for k, v in res.outputs.items() if k.endswith("_cycles")})
    return SimResult(outputs=outputs, counters=res.counters, seed=res.seed, cycles=res.cycles, main="c")
