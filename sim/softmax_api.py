"""Run softmax rows through the Verilated :class:`hdl.softmax.SoftmaxUnit`.

``run_softmax(scores, scale_q, ...)`` mirrors :func:`golden.softmax_int8` /
:func:`golden.softmax_bf16` and returns ``(probabilities, counters)``; ``run_softmax_rows``
takes one command per row (different lengths, masks and data types back to back, and
deliberately bad commands) and returns every detail of the run.
"""


import numpy as np

from golden import softmax as gsm
from golden.fp import as_fp32_bits, bf16_from_bits

__all__ = ["run_softmax", "run_softmax_rows", "softmax_design", "expected_rows", "COUNTERS"]

COUNTERS = ("cycles", "busy_cycles", "rows_accepted", "rows_rejected", "rows_done",
            "beats_in", "beats_out", "in_stall_cycles", "out_stall_cycles", "ring_full_cycles")


def softmax_design(config="tiny"):
    """The cached Verilator build of the softmax unit for ``config`` (preset name or ChipConfig)."""
    from hdl.config import get_config
    from hdl.softmax import SoftmaxUnit

    from . import runner
    cfg = get_config(config)
    params = {"lanes": cfg.softmax.lanes, "max_len": cfg.softmax.max_len}
    return runner.build(lambda: SoftmaxUnit.from_config(cfg), "softmax_unit", params), cfg


def _row_mask_len(row):
    length = len(row["scores"])
    vl = row.get("valid_len")
    cp = row.get("causal_pos")
    vl = length if vl is None else int(vl)
    lim = vl if cp is None else min(vl, int(cp) + 1)
    return max(0, min(lim, length))


def expected_rows(rows):
    """Golden outputs (uint16 per element: uint8 probabilities or bf16 bits) of well-formed rows."""
    out = []
    for row in rows:
        s = np.asarray(row["scores"])
        length = len(s)
        vl = row.get("valid_len")
        cp = row.get("causal_pos")
        vl = length if vl is None else min(int(vl), length)
        cp = None if cp is None else int(cp)
        if row["dtype"] == "int8":
            p = gsm.softmax_int8(s.astype(np.int64), (int(row["scale"]), int(row["shift"])), vl, cp)
            out.append(p.astype(np.uint16))
        else:
            p = gsm.softmax_bf16_bits(s.astype(np.uint32), np.uint32(row["scale"]), vl, cp)
            out.append(p.astype(np.uint16))
    return out


def run_softmax_rows(rows, *, config="tiny", stall=0.0, backpressure=0.0, seed=0):
    """Run one command per row; return a dict with the per-row outputs and the run's details.

    Each row is a dict: ``scores`` (1-D: int32 values for int8, uint32 fp32 bit patterns for
    bf16), ``dtype`` (``"int8"``/``"bf16"``), ``scale`` (int8: m; bf16: fp32 bits of c), ``shift``
    (int8: sh), optional ``valid_len`` and ``causal_pos``. A row with ``length`` given
    explicitly and no scores (``{"length": 0, ...}``) sends a command without data, to test
    rejection. Returns ``outputs`` (list of uint16 arrays, one per accepted row), ``counters``
    (dict), ``in_cycle``/``out_cycle``/``cmd_cycle`` (cycle stamps) and ``errors`` (cycles of
    the error pulses).
    """
    from .runner import run
    design, cfg = softmax_design(config)
    lanes, max_len = cfg.softmax.lanes, cfg.softmax.max_len
    lw = max_len.bit_length()  # = ceil_log2(max_len + 1), the width of the length fields
    cmd = {f: [] for f in ("length", "valid_len", "causal_pos", "dtype", "scale", "shift")}
    beats = []
    n_out = 0
    good_lengths = []
    for row in rows:
        scores = row.get("scores")
        length = int(row["length"]) if "length" in row else len(scores)
        dtype = row.get("dtype", "int8")
        if dtype not in ("int8", "bf16"):
            raise ValueError(f"row dtype must be 'int8' or 'bf16', not {dtype!r}")
        vl = row.get("valid_len")
        cp = row.get("causal_pos")
        cmd["length"].append(length)
        cmd["valid_len"].append(min(length if vl is None else int(vl), max_len))
        cmd["causal_pos"].append(min(max_len if cp is None else int(cp), max_len))
        cmd["dtype"].append(0 if dtype == "int8" else 1)
        cmd["scale"].append(int(row.get("scale", 0)))
        cmd["shift"].append(int(row.get("shift", 0)))
        if 1 <= length <= max_len:
            s = np.asarray(scores)
            if len(s) != length:
                raise ValueError(f"row has {len(s)} scores but length {length}")
            bits = (s.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
            nb = -(-length // lanes)
            padded = np.zeros(nb * lanes, dtype=np.uint32)
            padded[:length] = bits
            beats.append(padded.reshape(nb, lanes))
            n_out += nb
            good_lengths.append(length)
    beats = np.concatenate(beats) if beats else np.zeros((0, lanes), np.uint32)
    data = {f"cmd_{k}": np.array(v, dtype=np.int64) for k, v in cmd.items()}
    data.update(beats=beats, lanes=lanes, lw=lw, n_out=n_out, stall=float(stall),
                backpressure=float(backpressure), seed=int(seed),
                timeout_cycles=20000 + 8 * int(beats.shape[0]))
    res = run(design, "sim.tb.softmax", testcase="softmax_stream", data=data, seed=seed)
    out = res["out"]
    outputs, pos = [], 0
    for length in good_lengths:
        nb = -(-length // lanes)
        block = out[pos:pos + nb].reshape(-1)
        if block[length:].any():
            raise AssertionError("non-zero output lanes past the end of a row")
        outputs.append(block[:length].copy())
        pos += nb
    return {
        "outputs": outputs, "last": res["last"], "counters": dict(zip(COUNTERS, res["counters"].tolist(),
                                                                       strict=True)),
        "in_cycle": res["in_cycle"], "out_cycle": res["out_cycle"], "cmd_cycle": res["cmd_cycle"],
        "errors": res["errors"], "lanes": lanes,
    }


def run_softmax(scores, scale_q, valid_len=None, causal_pos=None, *, dtype="int8", config="tiny",
                stall=0.0, backpressure=0.0, seed=0):
    """Softmax of each row of ``scores`` on the RTL; returns ``(probabilities, counters)``.

    Arguments as :func:`golden.softmax_int8` (``dtype="int8"``: int32 scores, ``scale_q`` =
    (m, sh), uint8 result) or :func:`golden.softmax_bf16` (``dtype="bf16"``: float32 scores,
    ``scale_q`` = float32 c, ``ml_dtypes.bfloat16`` result). ``stall``/``backpressure`` are the
    probabilities of a valid gap per input beat and of ready low per output cycle.
    """
    if dtype not in ("int8", "bf16"):
        raise ValueError(f"dtype must be 'int8' or 'bf16', not {dtype!r}")
    s = np.asarray(scores)
    one_d = s.ndim == 1
    if dtype == "int8":
        gsm.softmax_int8(s, scale_q, valid_len, causal_pos)  # validates everything
        s2 = gsm._rows(s, "scores")
        rows_n = s2.shape[0]
        m = np.broadcast_to(np.asarray(scale_q[0]), (rows_n,))
        sh = np.broadcast_to(np.asarray(scale_q[1]), (rows_n,))
        bits = s2.astype(np.int64)
        scale = [int(v) for v in m]
        shift = [int(v) for v in sh]
    else:
        gsm.softmax_bf16(s, scale_q, valid_len, causal_pos)
        s2 = gsm._rows(s, "scores")
        rows_n = s2.shape[0]
        c = np.asarray(scale_q, dtype=np.float32)
        cb = np.broadcast_to(as_fp32_bits(c).reshape(c.shape), (rows_n,))
        bits = as_fp32_bits(s2).reshape(s2.shape)
        scale = [int(v) for v in cb]
        shift = [0] * rows_n
    length = s2.shape[1]
    vl = np.broadcast_to(np.asarray(length if valid_len is None else valid_len), (rows_n,))
    cp = None if causal_pos is None else np.broadcast_to(np.asarray(causal_pos), (rows_n,))
    rows = [{"scores": bits[r], "dtype": dtype, "scale": scale[r], "shift": shift[r],
             "valid_len": int(vl[r]), "causal_pos": None if cp is None else int(cp[r])}
            for r in range(rows_n)]
    res = run_softmax_rows(rows, config=config, stall=stall, backpressure=backpressure, seed=seed)
    out = np.stack(res["outputs"])
    out = out.astype(np.uint8) if dtype == "int8" else bf16_from_bits(out.astype(np.uint16))
    return (out[0] if one_d else out), res["counters"]
