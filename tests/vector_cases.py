"""Vector-unit test cases: commands for sim.vector_api.run_commands with their golden results."""

import ml_dtypes
import numpy as np

import golden
from golden.fp import as_bf16_bits, as_fp32_bits, bf16_to_fp32_bits, fp32_add, fp32_daz, fp32_from_bits, fp32_to_bf16
from golden.layer import (
    dequantize_acc,
    quantize_per_token,
    quantize_per_token_scaled,
    quantize_static,
    token_scale_table,
)
from golden.vector import fp32_mul
from sim.vector_api import OPS, _prepare, make_command, make_table_commands
from spec.vector import SCALE_BITS, TOKEN_EXP_BIAS, VectorTable

#: The layer's scale tables (mu, nu) for SCALE_BITS = 7.
MU, NU = token_scale_table(SCALE_BITS)

BF16 = np.dtype(ml_dtypes.bfloat16)


def bf16(x):
    return np.asarray(x, np.float32).astype(BF16)


def round_bf16(x32):
    """float32 → bf16 with golden.fp32_to_bf16 (the layer's conversion)."""
    return golden.fp.bf16_from_bits(fp32_to_bf16(as_fp32_bits(x32).reshape(np.shape(x32))))


def _fp32_words(x):
    x = np.asarray(x)
    if x.dtype == BF16:
        return bf16_to_fp32_bits(as_bf16_bits(x)).reshape(x.shape)
    return as_fp32_bits(x).reshape(x.shape)


def quant_token_model(x, mu=None):
    """QUANT_TOKEN as the unit computes it on any rows, any table (golden.layer raises on Inf/NaN
    and has only the layer's table): ``(q, e, j)``. a = the largest magnitude (DAZ; NaN and Inf
    are the largest), E = a's exponent field, e = E − 133, j = a's top 7 fraction bits (0 without
    ``mu``); q = clamp(rne(fp32_mul(x·2**−e, mu[j] or 1.0))) with x·2**−e a zero below 2**−126,
    NaN → 0, ±Inf → ±127. Equal to golden where golden is defined (test_vector_cocotb)."""
    xb = fp32_daz(_fp32_words(x)).astype(np.int64)
    amax = (xb & 0x7FFFFFFF).max(axis=-1)
    E = amax >> 23
    j = (amax >> (23 - SCALE_BITS)) & ((1 << SCALE_BITS) - 1) if mu is not None else np.zeros_like(E)
    e = E - TOKEN_EXP_BIAS
    ef = (xb >> 23) & 0xFF
    es = ef - e[..., None]
    xs = np.where(ef == 255, xb, np.where((ef == 0) | (es <= 0), xb & 0x80000000,
                                          (xb & 0x807FFFFF) | (np.maximum(es, 0) << 23)))
    m = as_fp32_bits(np.asarray(mu, np.float32)[j]) if mu is not None else np.full(E.shape, 0x3F800000, np.uint32)
    y = fp32_from_bits(fp32_mul(xs.astype(np.uint32), np.asarray(m, np.uint32).reshape(E.shape)[..., None]))
    y = np.asarray(y, np.float64).reshape(xb.shape)
    q = np.where(np.isnan(y), 0, np.clip(np.rint(np.nan_to_num(y, posinf=1e9, neginf=-1e9)), -127, 127))
    return q.astype(np.int8), e, j


def expected(op, dtype, a, b=None, **kw):
    """golden's result as uint32 words per element (what the unit writes), and s_out or None
    (quant_token with a scale table: s_out is (e, j))."""
    if op == "add":
        if dtype == "bf16":
            return as_bf16_bits(golden.residual_add_bf16(a, b)).astype(np.uint32), None
        return fp32_add(as_fp32_bits(a), as_fp32_bits(b)).reshape(a.shape), None
    if op == "swiglu":
        if dtype == "int8":
            a, b = round_bf16(a), round_bf16(b)
        return as_bf16_bits(golden.swiglu_bf16(a, b)).astype(np.uint32), None
    if op == "rmsnorm":
        x = round_bf16(a) if dtype == "int8" else a
        return as_bf16_bits(golden.rmsnorm_bf16(x, kw["gain"], eps=kw["eps"])).astype(np.uint32), None
    if op == "rmsnorm_fp32":
        return as_bf16_bits(golden.rmsnorm_fp32_in(a, kw["gain"], eps=kw["eps"])).astype(np.uint32), None
    if op == "rope":
        t = kw["table"]
        x = a.reshape(a.shape[:-1] + (-1, t.head_dim))
        pos = np.asarray(kw["pos"]).reshape(a.shape[:-1] + (1,))
        if dtype == "int8":
            y = golden.rope_int8(x, pos, t, multiplier=kw.get("multiplier", 1 << 30), shift=kw.get("shift", 44))
            return (y.reshape(a.shape).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32), None
        y = golden.rope_bf16(x, pos, t)
        return as_bf16_bits(y).reshape(a.shape).astype(np.uint32), None
    if op == "dequant":
        rs = None
        if kw.get("scale_table") is not None:
            rs = np.asarray(kw["scale_table"], np.float32)[np.asarray(kw["scale_index"])].reshape(a.shape[:-1])
        y = dequantize_acc(a, kw["multiplier"], kw["shift"], kw.get("row_exp"), rs)
        return as_fp32_bits(y).reshape(a.shape), None
    if op == "hadamard":
        return as_fp32_bits(golden.hadamard_fp32(a)).reshape(a.shape), None
    if op == "requant":
        e = np.asarray(kw["row_exp"]).reshape(-1)
        a2 = a.reshape(-1, a.shape[-1])
        y = np.stack([golden.requantize(a2[t], kw["multiplier"], np.clip(np.asarray(kw["shift"]) - e[t], 1, 62))
                      for t in range(a2.shape[0])])
        return (y.reshape(a.shape).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32), None
    if op == "quant_static":
        q = quantize_static(a, kw["scale"])
        return (q.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32), None
    if op == "quant_token":
        mu = kw.get("scale_table")
        finite = np.all(np.isfinite(np.asarray(a, np.float32)))
        if not finite or (mu is not None and not np.array_equal(mu, MU)):
            q, e, j = quant_token_model(a, mu)
        elif mu is None:
            (q, e), j = quantize_per_token(a), None
        else:
            q, e, j = quantize_per_token_scaled(a, bits=SCALE_BITS)
        words = (q.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
        return words, (e if mu is None else (e, j))
    raise ValueError(op)


def command(op, dtype, a, b=None, *, lanes, max_len, **kw):
    """(run_commands command, expected o [rows, length] uint32, expected s_out or None; s_out is
    (e, j) for quant_token with a scale table). A scale table (``scale_table``) is the test's
    to write first (:func:`table_cases`)."""
    code, f, lead = _prepare(op, a, b, dtype, dict(kw), lanes, max_len)
    f.pop("table", None)
    want, s = expected(op, dtype, a, b, **kw)
    if isinstance(s, tuple):
        s = tuple(np.asarray(v).reshape(-1) for v in s)
    elif s is not None:
        s = s.reshape(-1)
    return make_command(code, **f), want.reshape(f["rows"], f["length"]), s


def table_cases(*, lanes, max_len, mu=MU, nu=NU):
    """The TABLE commands writing mu and nu, as cases (command, None, None)."""
    cmds = (make_table_commands(VectorTable.QUANT, mu, lanes=lanes, max_len=max_len)
            + make_table_commands(VectorTable.DEQUANT, nu, lanes=lanes, max_len=max_len))
    return [(c, None, None) for c in cmds]


def random_case(rng, op, dtype, rows, length, *, lanes, max_len, table=None, scale=3.0, scaled=False):
    """A random command of ``op`` with data of Llama-like magnitudes (``scaled``: quant_token and
    dequant with ROW_SCALE and the layer's tables, which the test writes first)."""
    shape = (rows, length)
    f32 = lambda: (rng.normal(0, scale, shape) * rng.choice([1, 1, 1, 50], shape)).astype(np.float32)
    src = (lambda: bf16(f32())) if dtype == "bf16" else f32
    kw = {}
    b = None
    if op in ("add", "swiglu"):
        a, b = src(), src()
    elif op in ("rmsnorm", "rmsnorm_fp32"):
        a = f32() if op == "rmsnorm_fp32" else src()
        kw = dict(gain=bf16(1 + 0.2 * rng.normal(size=length)), eps=1e-5)
    elif op == "rope":
        kw = dict(table=table, pos=rng.integers(0, table.max_pos, rows))
        a = rng.integers(-128, 128, shape).astype(np.int8) if dtype == "int8" else src()
    elif op in ("dequant", "requant"):
        a = rng.integers(-2**31, 2**31, shape).astype(np.int32) // rng.choice([1, 2**8, 2**16], shape).astype(np.int32)
        mult = rng.integers(1 << 30, 1 << 31, length)
        kw = dict(multiplier=mult, shift=rng.integers(1 if op == "requant" else 0, 63, length))
        if op == "requant" or rng.random() < 0.7:
            kw["row_exp"] = rng.integers(-133, 123, rows)
        if scaled:
            kw.update(scale_table=NU, scale_index=rng.integers(0, 1 << SCALE_BITS, rows))
    elif op == "quant_static":
        a = src()
        kw = dict(scale=float(rng.uniform(0.01, 2.0)))
    elif op == "quant_token":
        a = src()
        if scaled:
            kw["scale_table"] = MU
    elif op == "hadamard":
        a = src()
    return command(op, dtype, a, b, lanes=lanes, max_len=max_len, **kw)


__all__ = ["OPS", "MU", "NU", "bf16", "round_bf16", "expected", "command", "random_case", "table_cases",
           "quant_token_model"]
