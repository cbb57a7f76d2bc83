"""Vector-unit test cases: commands for sim.vector_api.run_commands with their golden results."""

import ml_dtypes
import numpy as np

import golden
from golden.fp import as_bf16_bits, as_fp32_bits, fp32_add, fp32_to_bf16
from golden.layer import dequantize_acc, quantize_per_token, quantize_static
from sim.vector_api import OPS, _prepare, make_command

BF16 = np.dtype(ml_dtypes.bfloat16)


def bf16(x):
    return np.asarray(x, np.float32).astype(BF16)


def round_bf16(x32):
    """float32 → bf16 with golden.fp32_to_bf16 (the layer's conversion)."""
    return golden.fp.bf16_from_bits(fp32_to_bf16(as_fp32_bits(x32).reshape(np.shape(x32))))


def expected(op, dtype, a, b=None, **kw):
    """golden's result as uint32 words per element (what the unit writes), and s_out or None."""
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
        y = dequantize_acc(a, kw["multiplier"], kw["shift"], kw.get("row_exp"))
        return as_fp32_bits(y).reshape(a.shape), None
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
        q, e = quantize_per_token(a)
        return (q.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32), e
    raise ValueError(op)


def command(op, dtype, a, b=None, *, lanes, max_len, **kw):
    """(run_commands command, expected o [rows, length] uint32, expected s_out or None)."""
    code, f, lead = _prepare(op, a, b, dtype, dict(kw), lanes, max_len)
    want, s = expected(op, dtype, a, b, **kw)
    return make_command(code, **f), want.reshape(f["rows"], f["length"]), (None if s is None else s.reshape(-1))


def random_case(rng, op, dtype, rows, length, *, lanes, max_len, table=None, scale=3.0):
    """A random command of ``op`` with data of Llama-like magnitudes."""
    shape = (rows, length)
    f32 = lambda: (rng.normal(0, scale, shape) * rng.choice([1, 1, 1, 50], shape)).astype(np.float32)
    src = (lambda: bf16(f32())) if dtype == "bf16" else f32
    kw = {}
    b = None
    if op in ("add", "swiglu"):
        a, b = src(), src()
    elif op == "rmsnorm":
        a = src()
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
    elif op == "quant_static":
        a = src()
        kw = dict(scale=float(rng.uniform(0.01, 2.0)))
    elif op == "quant_token":
        a = bf16(f32())
    return command(op, dtype, a, b, lanes=lanes, max_len=max_len, **kw)


__all__ = ["OPS", "bf16", "round_bf16", "expected", "command", "random_case"]
