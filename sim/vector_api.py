"""``sim.run_vector``: run vector-unit operations on the Verilated :class:`hdl.vector.VectorUnit`.

Example::

    res = run_vector("swiglu", gate, up, config="tiny", stall=0.2, backpressure=0.3, seed=1)
    res.output        # ml_dtypes.bfloat16 array, golden.swiglu_bf16(gate, up) bit for bit

``run_vector(op, a, b=None, *, dtype=..., <op fields>, config="default", stall=0.0,
backpressure=0.0, seed=None)`` validates everything first (a ``TypeError``/``ValueError`` naming the
problem before anything runs), builds one command and its streams with
:func:`spec.vector.stream_words`, and returns a :class:`VectorResult`. :func:`run_commands` runs a
list of prepared commands back to back (different ops, deliberately bad commands) and returns
every detail of the run. The ops and their fields are those of docs/vector.md:

===============  =================================================================================
op               arguments (``dtype="bf16"``: the bf16 layer; ``"int8"``: the int8 layer's flavour)
===============  =================================================================================
``add``          a, b: bf16 (bf16) or float32 (int8: fp32 residual add)
``swiglu``       gate, up: bf16 (bf16) or float32 (int8: rounded to bf16 first)
``rmsnorm``      x: bf16 or float32 (int8); ``gain`` bf16 [D]; ``eps``
``rmsnorm_fp32`` x: float32 (either dtype); ``gain`` bf16 [D]; ``eps``: ``rmsnorm_fp32_in``, the
                 rows sent on ``a`` and again on ``b``
``rope``         x: bf16 or int8 [..., D] (D a multiple of head_dim); ``pos`` per row; ``table``
                 (golden.RopeTable); int8: ``multiplier``, ``shift``
``dequant``      acc int32; ``multiplier`` [D], ``shift`` [D]; optional ``row_exp`` per row;
                 optional ``scale_table`` (nu, float32 [128]) with ``scale_index`` (j per row):
                 ROW_SCALE, ``dequantize_acc(..., row_scale=nu[j])``
``requant``      acc int32; ``multiplier`` [D], ``shift`` [D]; ``row_exp`` per row
``quant_static`` x: bf16 (bf16) or float32 (int8); ``scale``
``quant_token``  x: bf16 (bf16) or float32 (int8); outputs ``o`` (int8) and ``s_out`` (the per-row
                 exponent e); optional ``scale_table`` (mu, float32 [128]): ROW_SCALE,
                 ``quantize_per_token_scaled``, outputs also ``j`` (the per-row scale index)
``hadamard``     x: bf16 (bf16) or float32 (int8) [..., D], D a multiple of 64; output float32
===============  =================================================================================

With ``scale_table``, :func:`run_vector` sends a TABLE command (:func:`make_table_commands`)
before the op.
"""

import math
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from golden.fp import as_bf16_bits, as_fp32_bits, bf16_from_bits, fp32_from_bits
from golden.vector import RopeTable
from hdl.config import get_config
from spec.vector import (
    EXP_BITS,
    HADAMARD_BLOCK,
    MAX_HEAD_DIM,
    SCALE_ENTRIES,
    SHIFT_BITS,
    VectorFlag,
    VectorOp,
    VectorStatus,
    VectorTable,
    cmd_fields,
    command_status,
    row_word,
    row_word_fields,
    stream_words,
)

__all__ = ["run_vector", "run_commands", "vector_design", "VectorResult", "OPS", "make_command",
           "make_table_commands"]

_BF16 = np.dtype(ml_dtypes.bfloat16)
OPS = {"add": VectorOp.ADD, "swiglu": VectorOp.SWIGLU, "rmsnorm": VectorOp.RMSNORM,
       "rope": VectorOp.ROPE, "dequant": VectorOp.DEQUANT, "requant": VectorOp.REQUANT,
       "quant_static": VectorOp.QUANT_STATIC, "quant_token": VectorOp.QUANT_TOKEN,
       "hadamard": VectorOp.HADAMARD, "rmsnorm_fp32": VectorOp.RMSNORM_FP32}


@dataclass
class VectorResult:
    """What :func:`run_vector` returns (the shape of every ``sim.run_*`` result).

    ``outputs``: ``"o"`` (the result rows), and ``"s_out"`` for quant_token (the row exponents;
    ``"j"`` the row scale indices with a scale table); ``output`` is ``outputs["o"]``.
    ``counters``: the sums of the unit's events. ``cycles``: from reset release to the last beat.
    ``seed``: the testbench's random seed.
    """
    outputs: dict
    counters: dict = field(default_factory=dict)
    seed: int = 0
    cycles: int = 0

    @property
    def output(self):
        return self.outputs["o"]


def vector_design(config="default"):
    """The cached Verilator build of the vector unit for ``config``."""
    from hdl.vector import VectorUnit

    from . import runner
    cfg = get_config(config)
    params = {"lanes": cfg.vector.lanes, "max_len": cfg.vector.max_len, "rsqrt_steps": cfg.vector.rsqrt_steps}
    return runner.build(lambda: VectorUnit.from_config(cfg), "vector_unit", params), cfg


def _pack_cmd(fields, max_len):
    value, pos = 0, 0
    for name, width in cmd_fields(max_len).items():
        value |= (int(fields.get(name, 0)) & ((1 << width) - 1)) << pos
        pos += width
    return value


def _rows_to_beats(rows, words, lanes):
    """[rows, n] uint32 → [rows · words, lanes], each row zero-padded to words · lanes."""
    rows = np.asarray(rows, np.uint32).reshape(len(rows), -1)
    out = np.zeros((rows.shape[0], words * lanes), np.uint32)
    out[:, :rows.shape[1]] = rows
    return out.reshape(-1, lanes)


def make_command(op, *, length, rows, dtype=1, flags=0, head_dim=0, shift=0, imm0=0, imm1=0,
                 a=None, b=None, p=None, s_in=None):
    """One command for :func:`run_commands`: fields and its per-row stream data (uint32 arrays
    [rows, words·lanes]-able; p may be [rows, n] with n ≤ words·lanes; s_in [rows])."""
    return dict(op=int(op), dtype=int(dtype), flags=int(flags), length=int(length), rows=int(rows),
                head_dim=int(head_dim), shift=int(shift), imm0=int(imm0), imm1=int(imm1),
                a=a, b=b, p=p, s_in=s_in)


def make_table_commands(table, values, *, lanes, max_len):
    """The TABLE command writing ``values`` (float32 [SCALE_ENTRIES], e.g. one of
    ``golden.layer.token_scale_table()``) into scale table ``table`` (:class:`VectorTable`): rows
    of the longest power-of-two length ≤ min(SCALE_ENTRIES, max_len), a list of one command.
    Raises ``TypeError``/``ValueError`` for bad values or a unit whose max_len is below its lanes."""
    table = VectorTable(table)
    v = np.asarray(values)
    if v.dtype != np.float32:
        raise TypeError(f"scale_table must be float32, got dtype {v.dtype}")
    if v.shape != (SCALE_ENTRIES,):
        raise ValueError(f"scale_table must have shape ({SCALE_ENTRIES},), got {v.shape}")
    length = SCALE_ENTRIES
    while length > max_len:
        length //= 2
    if length < lanes:
        raise ValueError(f"a scale table needs vector.max_len ≥ lanes ({lanes}), got {max_len}")
    rows = SCALE_ENTRIES // length
    p = as_fp32_bits(v).reshape(rows, length)
    return [make_command(VectorOp.TABLE, length=length, rows=rows, dtype=0, imm0=int(table), p=p)]


def run_commands(cmds, *, config="default", stall=0.0, backpressure=0.0, seed=None):
    """Run ``cmds`` (from :func:`make_command`) back to back; a command the unit rejects sends
    no stream beat. Returns a dict: ``status`` (per command), ``o`` (per command: [rows, length]
    uint32 or None), ``s_out`` (per command: [rows] int64 exponents e or None), ``j`` (per
    command: [rows] int64 scale indices of QUANT_TOKEN with ROW_SCALE, or None), ``o_cycle``,
    ``a_cycle``, ``resp_cycle``, ``counters``, ``cycles``, ``seed``. The expected statuses
    (``expected_status``) follow the TABLE commands of the list (the unit starts from reset)."""
    from hdl.vector import vector_events_layout

    from .runner import run
    design, cfg = vector_design(config)
    lanes, max_len = cfg.vector.lanes, cfg.vector.max_len
    if seed is None:
        seed = int(np.random.default_rng().integers(1 << 31))
    print(f"run_vector seed {seed}")
    streams = {s: [] for s in ("a", "b", "p")}
    s_in, packed, expect, tables = [], [], [], set()
    for c in cmds:
        st = command_status(lanes=lanes, max_len=max_len, tables=tables, **{k: c[k] for k in (
            "op", "dtype", "length", "rows", "head_dim", "shift", "imm0", "imm1", "flags")})
        packed.append(_pack_cmd(c, max_len))
        if st != VectorStatus.OK:
            expect.append((st, None))
            continue
        if c["op"] == VectorOp.TABLE:
            tables.add(VectorTable(c["imm0"]))
        w = stream_words(c["op"], length=c["length"], lanes=lanes, flags=c["flags"])
        for s in ("a", "b", "p"):
            if w[s]:
                streams[s].append(_rows_to_beats(c[s], w[s], lanes))
        if w["s_in"]:
            s_in.extend(int(v) & 0xFFFFFFFF for v in np.asarray(c["s_in"]).reshape(-1))
        expect.append((st, w))
    beats = {s: (np.concatenate(v) if v else np.zeros((0, lanes), np.uint32)) for s, v in streams.items()}
    n_o = sum(w["o"] * c["rows"] for (st, w), c in zip(expect, cmds, strict=True) if w)
    n_s = sum(w["s_out"] * c["rows"] for (st, w), c in zip(expect, cmds, strict=True) if w)
    from amaranth.hdl import Shape
    ev_fields = [(n, Shape.cast(f.shape).width) for n, f in vector_events_layout(lanes)]
    data = dict(beats, s_in=np.array(s_in, np.uint32), lanes=lanes, cmds=packed, n_o=n_o, n_s_out=n_s,
                n_resp=len(cmds), stall=float(stall), backpressure=float(backpressure), seed=int(seed),
                event_fields=ev_fields, timeout_cycles=20000 + 4 * max_len + 2 * (n_o + len(beats["a"])))
    res = run(design, "sim.tb.vector", testcase="vector_stream", data=data, seed=seed)
    out, outs, sos, js, pos, spos = res["o"], [], [], [], 0, 0
    for (_st, w), c in zip(expect, cmds, strict=True):
        if w is None or not w["o"]:
            outs.append(None)
            sos.append(None)
            js.append(None)
            continue
        n = w["o"] * c["rows"]
        block = out[pos:pos + n].reshape(c["rows"], -1)
        pos += n
        if block[:, c["length"]:].any():
            raise AssertionError("non-zero output lanes past the end of a row")
        outs.append(block[:, :c["length"]].copy())
        k = w["s_out"] * c["rows"]
        scaled = bool(c["flags"] & VectorFlag.ROW_SCALE)
        fields = [row_word_fields(v, scaled=scaled) for v in res["s_out"][spos:spos + k].tolist()]
        spos += k
        sos.append(np.array([e for e, _ in fields], np.int64) if k else None)
        js.append(np.array([j for _, j in fields], np.int64) if k and scaled else None)
    return {"status": res["resp"].tolist(), "expected_status": [int(st) for st, _ in expect], "o": outs,
            "s_out": sos, "j": js, "o_cycle": res["o_cycle"], "a_cycle": res["a_cycle"],
            "resp_cycle": res["resp_cycle"],
            "counters": dict(zip([n for n, _ in ev_fields], res["events"].tolist(), strict=True)),
            "cycles": int(res["cycles"]), "seed": seed}


# ---------------------------------------------------------------- run_vector


def _bits(x, dtype_name, what):
    """bf16 / float32 array → (uint32 bits, shape)."""
    x = np.asarray(x)
    if dtype_name == "bf16":
        if x.dtype != _BF16:
            raise TypeError(f"{what} must be ml_dtypes.bfloat16 for dtype 'bf16', got {x.dtype}")
        return as_bf16_bits(x).astype(np.uint32).reshape(x.shape)
    if x.dtype != np.float32:
        raise TypeError(f"{what} must be float32 for dtype 'int8', got {x.dtype}")
    return as_fp32_bits(x).reshape(x.shape)


def _int_range(name, value, lo, hi, shape=None):
    v = np.asarray(value)
    if v.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {v.dtype}")
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got values in [{v.min()}, {v.max()}]")
    if shape is not None and v.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {v.shape}")
    return v.astype(np.int64)


def _f32_bits(v, name, *, positive=True):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    f = np.float32(v)
    if not math.isfinite(float(f)) or (positive and not float(f) > 0) or (not positive and float(f) < 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {v!r}")
    if positive and abs(float(f)) < 2.0 ** -126:
        raise ValueError(f"{name} = {v!r} is below the smallest normal fp32 number")
    return int(as_fp32_bits(f))


def _prepare(op, a, b, dtype, kw, lanes, max_len):
    """(command fields and streams, rows' leading shape, output decoder) after checking everything."""
    if dtype not in ("bf16", "int8"):
        raise ValueError(f"dtype must be 'bf16' or 'int8', not {dtype!r}")
    code = OPS[op]
    dt = 1 if dtype == "bf16" else 0
    f = dict(dtype=dt)
    ints = op in ("dequant", "requant") or (op == "rope" and dtype == "int8")
    if ints:
        want = np.int32 if op in ("dequant", "requant") else np.int8
        x = np.asarray(a)
        if x.dtype != want:
            raise TypeError(f"a must be {np.dtype(want).name} for {op}, got {x.dtype}")
        bits = x.astype(np.int64) & 0xFFFFFFFF
    elif op == "rmsnorm_fp32":
        if np.asarray(a).dtype != np.float32:
            raise TypeError(f"a must be float32 for rmsnorm_fp32, got {np.asarray(a).dtype}")
        bits = _bits(a, "int8", "a")
    else:
        bits = _bits(a, dtype, "a")
    if bits.ndim == 0:
        raise ValueError("a must have at least one axis")
    lead, length = bits.shape[:-1], bits.shape[-1]
    rows = int(np.prod(lead)) if lead else 1
    if not 1 <= length <= max_len:
        raise ValueError(f"row length must be in 1..{max_len} (config vector.max_len), got {length}")
    if op == "hadamard" and length % HADAMARD_BLOCK:
        raise ValueError(f"hadamard needs a row length that is a multiple of {HADAMARD_BLOCK}, got {length}")
    if not 1 <= rows < 1 << 16:
        raise ValueError(f"rows must be in 1..65535, got {rows}")
    f.update(length=length, rows=rows, a=bits.reshape(rows, length))
    if op in ("add", "swiglu"):
        if b is None:
            raise TypeError(f"{op} needs b")
        bb = _bits(b, dtype, "b")
        if bb.shape != bits.shape:
            raise ValueError(f"a and b must have the same shape, got {bits.shape} and {bb.shape}")
        f["b"] = bb.reshape(rows, length)
    elif b is not None:
        raise TypeError(f"{op} takes no b")
    if op == "rmsnorm_fp32":
        f["b"] = f["a"]        # pass 2 reads the rows again
    _op_fields(op, dtype, f, kw, rows, length, lanes)
    return code, f, lead


def _op_fields(op, dtype, f, kw, rows, length, lanes):
    if op in ("rmsnorm", "rmsnorm_fp32"):
        g = np.asarray(kw.pop("gain"))
        if g.dtype != _BF16 or g.shape != (length,):
            raise ValueError(f"gain must be a bfloat16 array of shape ({length},)")
        f["p"] = np.broadcast_to(as_bf16_bits(g).astype(np.uint32), (rows, length))
        f["imm0"] = _f32_bits(kw.pop("eps"), "eps", positive=False)
        f["imm1"] = int(as_fp32_bits(np.float32(1.0 / length)))
    elif op == "rope":
        table = kw.pop("table")
        if not isinstance(table, RopeTable):
            raise TypeError(f"table must be a golden RopeTable, got {type(table).__name__}")
        hd = table.head_dim
        if hd > MAX_HEAD_DIM or hd & (hd - 1) or hd < 2 * lanes or length % hd:
            raise ValueError(f"head_dim {hd} must be a power of two in {2 * lanes}..{MAX_HEAD_DIM} "
                             f"dividing the row length {length}")
        pos = np.broadcast_to(np.asarray(kw.pop("pos")), (rows,))
        if pos.dtype.kind not in "iu" or pos.min() < 0 or pos.max() >= table.max_pos:
            raise ValueError(f"pos must be integers in [0, {table.max_pos}) (the RoPE table's positions)")
        if dtype == "int8":
            cs, sn = table.cos_q[pos].astype(np.int64), table.sin_q[pos].astype(np.int64)
            f["imm0"] = int(_int_range("multiplier", kw.pop("multiplier", 1 << 30), 0, (1 << 31) - 1))
            f["shift"] = int(_int_range("shift", kw.pop("shift", 44), 1, 62))
        else:
            cs = as_bf16_bits(table.cos_bf16)[pos].astype(np.int64)
            sn = as_bf16_bits(table.sin_bf16)[pos].astype(np.int64)
        words = ((cs & 0xFFFF) | ((sn & 0xFFFF) << 16)).astype(np.uint32)
        f["p"] = np.tile(words, (1, length // hd))
        f["head_dim"] = hd
    elif op in ("dequant", "requant"):
        m = _int_range("multiplier", np.broadcast_to(kw.pop("multiplier"), (length,)), 0, (1 << 31) - 1)
        s = _int_range("shift", np.broadcast_to(kw.pop("shift"), (length,)), 0, (1 << SHIFT_BITS) - 1)
        f["p"] = np.broadcast_to(m.astype(np.uint32), (rows, length))
        f["b"] = np.broadcast_to(s.astype(np.uint32), (rows, length))
        e = kw.pop("row_exp", None)
        if e is not None or op == "requant":
            if e is None:
                raise TypeError("requant needs row_exp")
            lim = 1 << (EXP_BITS - 1)
            e = _int_range("row_exp", np.broadcast_to(np.asarray(e), (rows,)), -lim, lim - 1)
            f["s_in"] = e.astype(np.int64) & 0xFFFFFFFF
            f["flags"] = int(VectorFlag.ROW_EXP)
        if op == "dequant":
            _row_scale(f, kw, rows, e)
    elif op == "quant_static":
        scale = kw.pop("scale")
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
            raise TypeError(f"scale must be a real number, got {scale!r}")
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"scale must be finite and > 0, got {scale!r}")
        f["imm0"] = _f32_bits(1.0 / float(scale), "1/scale")
    elif op == "quant_token":
        table = kw.pop("scale_table", None)
        if table is not None:
            f["flags"] = int(VectorFlag.ROW_SCALE)
            f["table"] = (VectorTable.QUANT, table)
    if kw:
        raise TypeError(f"{op} got unexpected argument(s): {', '.join(sorted(kw))}")


def _row_scale(f, kw, rows, e):
    """DEQUANT's ``scale_table`` (nu) and ``scale_index`` (j per row): ROW_SCALE."""
    table, j = kw.pop("scale_table", None), kw.pop("scale_index", None)
    if (table is None) != (j is None):
        raise TypeError("dequant takes scale_table and scale_index together")
    if table is None:
        return
    j = _int_range("scale_index", np.broadcast_to(np.asarray(j), (rows,)), 0, SCALE_ENTRIES - 1)
    e = np.zeros(rows, np.int64) if e is None else e
    f["s_in"] = np.array([row_word(ei, ji) for ei, ji in zip(e.tolist(), j.tolist(), strict=True)], np.int64)
    f["flags"] = f.get("flags", 0) | int(VectorFlag.ROW_SCALE)
    f["table"] = (VectorTable.DEQUANT, table)


def _decode(op, dtype, o, lead, length):
    if op in ("add",) and dtype == "int8" or op in ("dequant", "hadamard"):
        return fp32_from_bits(o.astype(np.uint32)).reshape(*lead, length)
    if op in ("requant", "quant_static", "quant_token") or (op == "rope" and dtype == "int8"):
        return o.astype(np.uint32).astype(np.uint8).view(np.int8).reshape(*lead, length)
    return bf16_from_bits((o & 0xFFFF).astype(np.uint16)).reshape(*lead, length)


def run_vector(op, a, b=None, *, dtype="bf16", config="default", stall=0.0, backpressure=0.0, seed=None,
               **fields):
    """Run one vector operation on the RTL; returns a :class:`VectorResult` (``output``: the
    result with ``a``'s shape; quant_token also ``outputs["s_out"]``, the row exponents).

    Raises ``TypeError``/``ValueError`` naming the problem (unknown op, wrong dtype or shape, a row
    length of 0 or above ``vector.max_len`` or not a multiple of 64 for hadamard, a position
    beyond the RoPE table, a scale, shift, scale table or scale index out of range) before
    anything runs.
    """
    if op not in OPS:
        raise ValueError(f"unknown vector op {op!r}: choose one of {', '.join(OPS)}")
    for name, v in (("stall", stall), ("backpressure", backpressure)):
        if not 0.0 <= float(v) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v}")
    cfg = get_config(config)
    lanes, max_len = cfg.vector.lanes, cfg.vector.max_len
    code, f, lead = _prepare(op, a, b, dtype, dict(fields), lanes, max_len)
    table = f.pop("table", None)
    cmds = [] if table is None else make_table_commands(*table, lanes=lanes, max_len=max_len)
    cmds.append(make_command(code, **f))
    res = run_commands(cmds, config=cfg, stall=stall, backpressure=backpressure, seed=seed)
    if res["status"] != [0] * len(cmds):
        raise AssertionError(f"the unit answered status {res['status']} to checked commands")
    outputs = {"o": _decode(op, dtype, res["o"][-1], lead, f["length"])}
    if op == "quant_token":
        outputs["s_out"] = res["s_out"][-1].reshape(lead)
        if table is not None:
            outputs["j"] = res["j"][-1].reshape(lead)
    return VectorResult(outputs=outputs, counters=res["counters"], seed=res["seed"], cycles=res["cycles"])
