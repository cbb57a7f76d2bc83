"""``sim.run_softmax``: softmax rows on the Verilated :class:`hdl.softmax.SoftmaxUnit`.

:func:`run_softmax` takes what :func:`golden.softmax_int8` / :func:`golden.softmax_bf16` take
and returns a :class:`sim.SimResult` whose ``output`` is what they return; the arguments may also
give every row its own length, data type, scale and mask, so that rows of every kind run back
to back, including commands the unit must reject. :func:`softmax_golden` computes the expected
``output`` from the same arguments.

Example::

    s = np.random.default_rng(0).integers(-2**20, 2**20, (4, 60)).astype(np.int32)
    sq = golden.softmax_scale_int8(2e-5)
    res = sim.run_softmax(s, sq, valid_len=[60, 30, 0, 60], causal_pos=[59, 59, 59, 10], config="tiny")
    assert (res.output == golden.softmax_int8(s, sq, [60, 30, 0, 60], [59, 59, 59, 10])).all()
"""

from dataclasses import dataclass

import numpy as np

from golden import softmax as gsm
from golden.fp import as_fp32_bits, bf16_from_bits
from hdl.config import get_config
from spec.codes import Dtype, SoftmaxStatus

from .packing import pack_fields, pack_lanes, unpack_lanes
from .result import SimResult
from .runner import SimulationError, build
from .streams import check_probability, run_streams

__all__ = ["run_softmax", "softmax_golden", "softmax_design", "encode_rows", "decode_rows", "SoftmaxJob"]

_DTYPES = {"int8": Dtype.INT8, "bf16": Dtype.BF16}


def softmax_design(config="default"):
    """The cached Verilator build of the softmax unit of ``config`` with its event counters
    (``hdl.standalone.Standalone``)."""
    from hdl.softmax import SoftmaxUnit
    from hdl.standalone import Standalone

    cfg = get_config(config)
    params = {"lanes": cfg.softmax.lanes, "max_len": cfg.softmax.max_len, "top": "standalone"}
    return build(lambda: Standalone(SoftmaxUnit.from_config(cfg)), "softmax_unit", params)


@dataclass
class _Row:
    scores: np.ndarray      # 1-D: int32 (int8) or float32 (bf16)
    dtype: str
    scale: object           # int8: (m, sh); bf16: float32 c
    valid_len: object
    causal_pos: object


def _per_row(value, n, name):
    """``value`` for each of ``n`` rows: a sequence of n values, or one value for all."""
    if isinstance(value, (list, tuple, np.ndarray)) and not (isinstance(value, np.ndarray) and value.ndim == 0):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} rows")
        return list(value)
    return [value] * n


def _rows(scores, scale, valid_len, causal_pos, dtype):
    """(rows, one_d, array_form): the arguments of run_softmax as one _Row per row."""
    if isinstance(scores, np.ndarray):
        if not isinstance(dtype, str):
            raise ValueError("dtype must be 'int8' or 'bf16' when scores is one array")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'int8' or 'bf16', not {dtype!r}")
        # golden checks everything (shapes, ranges, dtypes) and raises what it raises
        if dtype == "int8":
            gsm.softmax_int8(scores, scale, valid_len, causal_pos)
        else:
            gsm.softmax_bf16(scores, scale, valid_len, causal_pos)
        s2 = scores.reshape(1, -1) if scores.ndim == 1 else scores
        n, length = s2.shape
        if dtype == "int8":
            m = np.broadcast_to(np.asarray(scale[0]), (n,))
            sh = np.broadcast_to(np.asarray(scale[1]), (n,))
            scales = [(int(a), int(b)) for a, b in zip(m, sh, strict=True)]
        else:
            scales = list(np.broadcast_to(np.asarray(scale, np.float32), (n,)))
        vl = np.broadcast_to(np.asarray(length if valid_len is None else valid_len), (n,))
        cp = [None] * n if causal_pos is None else list(np.broadcast_to(np.asarray(causal_pos), (n,)))
        rows = [_Row(s2[r], dtype, scales[r], int(vl[r]), None if cp[r] is None else int(cp[r]))
                for r in range(n)]
        return rows, scores.ndim == 1, True
    if not isinstance(scores, (list, tuple)):
        raise TypeError(f"scores must be a numpy array or a list of 1-D arrays, not {type(scores).__name__}")
    n = len(scores)
    dtypes = _per_row(dtype, n, "dtype")
    if not isinstance(dtype, (list, tuple)) and dtype == "int8":
        try:
            m, sh = scale
        except (TypeError, ValueError):
            raise ValueError("scale must be a pair (m, sh) for int8 rows") from None
        scales = list(zip(_per_row(m, n, "scale m"), _per_row(sh, n, "scale sh"), strict=True))
    else:
        scales = _per_row(scale, n, "scale")
    vls, cps = _per_row(valid_len, n, "valid_len"), _per_row(causal_pos, n, "causal_pos")
    rows = []
    for i in range(n):
        s = np.asarray(scores[i])
        if s.ndim != 1:
            raise ValueError(f"row {i}: scores must be 1-D, not {s.ndim}-D")
        if dtypes[i] not in _DTYPES:
            raise ValueError(f"row {i}: dtype must be 'int8' or 'bf16', not {dtypes[i]!r}")
        rows.append(_Row(s, dtypes[i], scales[i], vls[i], cps[i]))
    return rows, False, False


def _golden_row(row):
    if row.dtype == "int8":
        return gsm.softmax_int8(row.scores, row.scale, row.valid_len, row.causal_pos)
    return gsm.softmax_bf16(row.scores, row.scale, row.valid_len, row.causal_pos)


def _check_row(i, row, max_len):
    """True if the unit takes the row (1 ≤ length ≤ max_len), after golden's checks of it."""
    if not 1 <= len(row.scores) <= max_len:
        return False
    try:
        _golden_row(row)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"row {i}: {exc}") from None
    return True


def _arrange(values, rows, one_d, array_form):
    if array_form:
        out = np.stack(values)
        return out[0] if one_d else out
    arr = np.empty(len(rows), object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def softmax_golden(scores, scale, valid_len=None, causal_pos=None, *, dtype="int8", max_len=None):
    """What :func:`run_softmax` returns as ``output`` for the same arguments, from golden/softmax.py
    (rows of length 0 or above ``max_len``, which the unit rejects, give None)."""
    rows, one_d, array_form = _rows(scores, scale, valid_len, causal_pos, dtype)
    limit = max_len if max_len is not None else max(len(r.scores) for r in rows)
    return _arrange([_golden_row(r) if 1 <= len(r.scores) <= limit else None for r in rows],
                    rows, one_d, array_form)


@dataclass
class SoftmaxJob:
    """The stream words of a list of rows (:func:`encode_rows`) and what decoding needs."""
    cmds: list          # command payloads
    beats: list         # score beat payloads
    rows: list          # _Row per row
    good: list          # indices of the rows the unit takes
    one_d: bool
    array_form: bool
    lanes: int

    @property
    def out_beats(self):
        return len(self.beats)


def encode_rows(scores, scale, valid_len=None, causal_pos=None, *, dtype="int8", lanes, max_len):
    """The arguments of :func:`run_softmax` as the unit's command and score-beat payloads (a
    :class:`SoftmaxJob`), after golden's checks of every row the unit takes."""
    from hdl.softmax import cmd_layout

    rows, one_d, array_form = _rows(scores, scale, valid_len, causal_pos, dtype)
    if array_form and len(rows[0].scores) > max_len:
        raise ValueError(f"rows of {len(rows[0].scores)} scores: the softmax unit takes at most {max_len} "
                         f"(softmax.max_len); give a list of rows to send rejected commands")
    layout = cmd_layout(max_len)
    cmds, beats, good = [], [], []
    for i, row in enumerate(rows):
        ok = array_form or _check_row(i, row, max_len)   # golden checked the array as a whole
        length = len(row.scores)
        if row.dtype == "int8":
            m, sh = (int(v) for v in row.scale) if ok else (0, 0)
            bits = row.scores.astype(np.int64) & 0xFFFFFFFF
        else:
            m, sh = (int(as_fp32_bits(np.float32(row.scale))) if ok else 0), 0
            bits = as_fp32_bits(np.asarray(row.scores, np.float32)).reshape(-1).astype(np.int64)
        vl = length if row.valid_len is None else int(row.valid_len)
        cp = max_len if row.causal_pos is None else int(row.causal_pos)
        cmds.append(pack_fields(layout, {
            "length": min(length, (1 << max_len.bit_length()) - 1),  # = the field's largest value
            "valid_len": min(vl, max_len), "causal_pos": min(cp, max_len), "dtype": _DTYPES[row.dtype],
            "scale": m, "shift": sh}, what=f"row {i}:"))
        if ok:
            nb = -(-length // lanes)
            padded = np.zeros(nb * lanes, np.int64)
            padded[:length] = bits
            beats.append(padded.reshape(nb, lanes))
            good.append(i)
    beat_words = pack_lanes(np.concatenate(beats), 32) if beats else []
    return SoftmaxJob(cmds=cmds, beats=beat_words, rows=rows, good=good, one_d=one_d, array_form=array_form,
                      lanes=lanes)


def decode_rows(job, words):
    """(probabilities as :func:`run_softmax` returns them, each beat's ``last``) from the output
    payloads; raises ``SimulationError`` when the beats do not frame the accepted rows."""
    lanes = job.lanes
    if len(words) != job.out_beats:
        raise SimulationError(f"{len(words)} output beats for {job.out_beats} score beats")
    out_lanes = unpack_lanes(words, lanes, 16)
    last = np.array([bool(w >> (16 * lanes)) for w in words], bool)
    values, pos = [None] * len(job.rows), 0
    for i in job.good:
        row = job.rows[i]
        length = len(row.scores)
        nb = -(-length // lanes)
        block = out_lanes[pos:pos + nb].reshape(-1)
        if block[length:].any():
            raise SimulationError(f"row {i}: non-zero output lanes past the end of the row")
        if not np.array_equal(last[pos:pos + nb], np.arange(nb) == nb - 1):
            raise SimulationError(f"row {i}: 'last' is not on the row's final beat alone")
        p = block[:length]
        values[i] = p.astype(np.uint8) if row.dtype == "int8" else bf16_from_bits(p.astype(np.uint16))
        pos += nb
    return _arrange(values, job.rows, job.one_d, job.array_form), last


def run_softmax(scores, scale, valid_len=None, causal_pos=None, *, dtype="int8", config="default",
                stall=0.0, backpressure=0.0, seed=None, timeout_cycles=20_000):
    """Softmax of each row of ``scores`` on the RTL.

    Parameters
    ----------
    scores : ndarray, or list of 1-D ndarrays
        As :func:`golden.softmax_int8` (``dtype="int8"``: int32 scores) or
        :func:`golden.softmax_bf16` (``dtype="bf16"``: float32 scores): a row [L] or rows
        [rows, L] (L ≤ ``softmax.max_len``). Or a list of rows of any lengths, sent back to back;
        a row of length 0 or above ``softmax.max_len`` is sent as a command alone, which the unit
        rejects (its output is None; ``outputs["errors"]`` has its code).
    scale
        int8: ``(m, sh)`` (each one value or one per row); bf16: the float32 constant ``c``
        (one, or one per row). With a per-row ``dtype``: one scale per row, of the row's kind.
    valid_len, causal_pos : int, sequence or None
        As in golden: one value, or one per row (``causal_pos`` None: no causal mask).
    dtype : "int8", "bf16", or a sequence of those (one per row)
    config : str or ChipConfig
        The configuration (its ``softmax`` part).
    stall, backpressure : float in [0, 1)
        Probability of a valid gap on ``cmd`` and ``i`` / of ready low on ``o``, per cycle.
    seed : int or None
        Seed of the gaps and backpressure (random if None; printed).
    timeout_cycles : int
        The run fails when no stream makes a handshake for this many cycles.

    Returns
    -------
    SimResult
        ``output`` (``outputs["p"]``): the probabilities as golden returns them (uint8, or
        ``ml_dtypes.bfloat16``), an array of the scores' shape; for a list of rows an object
        array of per-row arrays (None for a rejected row). Other outputs: ``last`` (each
        output beat's flag), ``errors`` and ``error_cycles`` (the code and cycle of every
        rejected command, spec.codes.SoftmaxStatus), ``cmd_cycles``, ``i_cycles``,
        ``o_cycles`` (the cycle of every accepted beat). ``counters``: the unit's event counts.

    Raises
    ------
    TypeError, ValueError
        What golden raises for the same arguments (prefixed with the row for a list of rows),
        or a bad ``dtype``, probability or per-row count.
    sim.runner.SimulationError
        The unit hangs, or sends other beats than the accepted rows ask for.
    """
    from hdl.softmax import events_layout

    cfg = get_config(config)
    stall, backpressure = check_probability("stall", stall), check_probability("backpressure", backpressure)
    job = encode_rows(scores, scale, valid_len, causal_pos, dtype=dtype, lanes=cfg.softmax.lanes,
                      max_len=cfg.softmax.max_len)
    run = run_streams(softmax_design(cfg), sources={"cmd": job.cmds, "i": job.beats}, sinks={"o": job.out_beats},
                      taps={"errors": ("error", "error")},
                      counters=[name for name, _ in events_layout(cfg.softmax.lanes)],
                      stall=stall, backpressure=backpressure, seed=seed, timeout_cycles=timeout_cycles,
                      tail_cycles=40)
    print(f"run_softmax: config={cfg.name} seed={run.seed} rows={len(job.rows)}")
    try:
        p, last = decode_rows(job, run.beats["o"])
    except SimulationError as exc:
        raise SimulationError(f"{exc} (seed {run.seed})") from None
    errors, error_cycles = run.taps["errors"]
    if any(e != SoftmaxStatus.BAD_LENGTH for e in errors):
        raise SimulationError(f"unknown error codes {sorted(set(errors.tolist()))} (seed {run.seed})")
    outputs = {"p": p, "last": last, "errors": errors, "error_cycles": error_cycles}
    outputs.update({f"{name}_cycles": stamps for name, stamps in run.accepted_at.items()})
    return SimResult(outputs=outputs, counters=run.counts, seed=run.seed, cycles=run.cycles, main="p")
