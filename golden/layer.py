"""A Llama-style decoder layer in three arithmetic modes (docs/numerics.md, "The decoder layer").

::

    h  = RMSNorm(x) · g_attn
    q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ ;  q, k = RoPE(q, k, position)
    K, V cache ← k, v                       (golden.PagedKVCache, one page pool per layer)
    o_h = softmax(q_h K_gᵀ / sqrt(d_head), causal) V_g      (grouped-query: g = h // group)
    x1 = x + o Woᵀ
    h2 = RMSNorm(x1) · g_ffn
    y  = x1 + (SiLU(h2 W_gateᵀ) ⊙ h2 W_upᵀ) W_downᵀ

Modes
-----
``"float64"``
    The reference: float64 everywhere, exact RoPE angles, exact softmax. Input and output float64.
``"bf16"``
    Every matmul is :func:`golden.matmul_bf16` (bf16 operands, fp32 sequential accumulation)
    rounded to bf16; softmax is :func:`golden.softmax_bf16`; the vector ops are bf16 with fp32
    internals; the KV cache holds bf16. Input and output ``ml_dtypes.bfloat16``.
``"int8"``
    W8A8: int8 weights with per-output-channel scales, int8 activations into every matmul
    (:func:`golden.matmul_int8`), int32 accumulators. Per-token power-of-two activation scales
    into the projections (chosen from the row's largest exponent, a leading-one detect); static
    per-tensor scales (calibrated from a float64 run, :func:`calibrate`) for q, k, v and the
    attention output, so that the int8 KV cache and :func:`golden.softmax_int8` see one scale.
    The residual stream and the vector ops between the matmuls are fp32/bf16. Input and output
    float32. SmoothQuant-style smoothing (``smooth_alpha``, default 0.5) moves the outlier
    channels of the projection inputs into the weights before they are quantized.
    ``activation_scales="per_tensor", smooth_alpha=None`` gives the plain W8A8 baseline. The
    scheme and why are in docs/numerics.md.

Measured alternatives (opt-in; the defaults above are what the hardware computes)
---------------------------------------------------------------------------------
``mode="bf16", residual="fp32"``
    The residual stream stays fp32 (:func:`golden.fp32_add` of the unrounded fp32 Wo and W_down
    outputs; RMSNorm reads it rounded to bf16). Input and output float32.
``mode="bf16", residual="fp32", fp32_inputs=("rmsnorm", "rope", "swiglu")`` (or a subset)
    Vector ops that read fp32 and round once to bf16: RMSNorm of the fp32 stream
    (:func:`golden.vector.rmsnorm_fp32_in`), RoPE of the unrounded fp32 q/k matmul outputs with
    fp32 cos/sin (:func:`golden.vector.rope_fp32_in`), the SwiGLU product of the unrounded fp32
    gate/up outputs (:func:`golden.vector.swiglu_fp32_in`).
``mode="int8", hadamard=True``
    The inputs of Wq/Wk/Wv, W_gate/W_up and W_down pass through the 64-point fp32 Hadamard
    transform (:func:`golden.vector.hadamard_fp32`) before they are quantized per token; the
    inverse rotation is folded into the weights offline.
``mode="int8", attention="bf16"``
    q, k, v are dequantized to fp32 and rounded to bf16, attention is the bf16 mode's (bf16 KV
    cache, :func:`golden.softmax_bf16`), and the attention output is quantized per token into Wo
    (with ``hadamard=True`` through a per-head Hadamard rotation folded into Wv and Wo).
``mode="int8", attention="bf16", scale_bits=7``
    Per-token scales ``2**e · nu[j]`` with a 7-bit mantissa multiplier
    (:func:`quantize_per_token_scaled`, :func:`token_scale_table`), applied on dequantization by
    one fp32 multiply (:func:`dequantize_acc` ``row_scale``).

Every per-token computation depends only on that token's row (and the cache rows before it),
so prefilling S tokens and decoding them one by one give bit-identical outputs in the bf16 and
int8 modes.
"""

import dataclasses
import math

import ml_dtypes
import numpy as np

from .fp import as_fp32_bits, bf16_from_bits, fp32_add, fp32_daz, fp32_from_bits, fp32_to_bf16
from .kvcache import PagedKVCache
from .matmul import matmul_bf16, matmul_int8
from .requant import quantize_multiplier, requantize
from .softmax import INT8_ONE, softmax_bf16, softmax_int8, softmax_scale_bf16, softmax_scale_int8
from .vector import (
    HADAMARD_BLOCK,
    fp32_mul,
    hadamard_fp32,
    hadamard_matrix,
    residual_add_bf16,
    rmsnorm_bf16,
    rmsnorm_fp32_in,
    rope_bf16,
    rope_fp32_in,
    rope_int8,
    rope_table,
    swiglu_bf16,
    swiglu_fp32_in,
)

__all__ = [
    "MODES", "LayerConfig", "LayerWeights", "Calibration", "calibrate", "DecoderLayer",
    "quantize_per_token", "quantize_static", "dequantize_acc", "quantize_weights_per_channel",
    "ACTIVATION_SCALES", "HardwareParams", "ATTENTION", "RESIDUALS", "FP32_INPUTS", "TOKEN_SCALE_BITS",
    "token_scale_table", "quantize_per_token_scaled",
]

MODES = ("float64", "bf16", "int8")
_BF16 = np.dtype(ml_dtypes.bfloat16)
#: Mode → dtype of the layer input and output.
_IO_DTYPE = {"float64": np.dtype(np.float64), "bf16": _BF16, "int8": np.dtype(np.float32)}
#: Where the int8 mode computes attention (``DecoderLayer(attention=...)``; default ``"int8"``).
ATTENTION = ("int8", "bf16")
#: The bf16 mode's residual stream (``DecoderLayer(residual=...)``; default ``"bf16"``).
RESIDUALS = ("bf16", "fp32")
#: The bf16 mode's vector ops that can read fp32 inputs and round once to bf16
#: (``DecoderLayer(fp32_inputs=...)``, with ``residual="fp32"``; default none).
FP32_INPUTS = ("rmsnorm", "rope", "swiglu")


def _check_int(name, value, lo, hi=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f"≥ {lo}"
        raise ValueError(f"{name} must be in {rng}, not {value}")
    return value


def _check_float(name, value, lo_exclusive=0.0):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, not {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > lo_exclusive):
        raise ValueError(f"{name} must be finite and > {lo_exclusive}, not {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """Shape hyper-parameters of one decoder layer (keyword-only, validated).

    Parameters
    ----------
    d_model : int
        Model width; must equal ``n_heads * head_dim``.
    n_heads, n_kv_heads : int
        Query heads and KV heads; ``n_kv_heads`` divides ``n_heads`` (grouped-query attention).
    head_dim : int
        Even (RoPE rotates pairs), 2..1024.
    d_ff : int
        SwiGLU hidden width.
    rms_eps : float
        RMSNorm epsilon (> 0).
    rope_base : float
        RoPE base θ (> 1).
    """

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rms_eps: float = 1e-5
    rope_base: float = 1e4

    def __post_init__(self):
        _check_int("d_model", self.d_model, 2, 1 << 16)
        _check_int("n_heads", self.n_heads, 1, 1024)
        _check_int("n_kv_heads", self.n_kv_heads, 1, 1024)
        _check_int("head_dim", self.head_dim, 2, 1024)
        _check_int("d_ff", self.d_ff, 1, 1 << 18)
        _check_float("rms_eps", self.rms_eps)
        _check_float("rope_base", self.rope_base, 1.0)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs), not {self.head_dim}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.d_model != self.n_heads * self.head_dim:
            raise ValueError(f"d_model ({self.d_model}) must equal n_heads*head_dim "
                             f"({self.n_heads}*{self.head_dim})")

    @property
    def group(self):
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def kv_dim(self):
        return self.n_kv_heads * self.head_dim


_WEIGHT_SHAPES = {
    "attn_norm": lambda c: (c.d_model,),
    "wq": lambda c: (c.d_model, c.d_model),
    "wk": lambda c: (c.kv_dim, c.d_model),
    "wv": lambda c: (c.kv_dim, c.d_model),
    "wo": lambda c: (c.d_model, c.d_model),
    "ffn_norm": lambda c: (c.d_model,),
    "w_gate": lambda c: (c.d_ff, c.d_model),
    "w_up": lambda c: (c.d_ff, c.d_model),
    "w_down": lambda c: (c.d_model, c.d_ff),
}


@dataclasses.dataclass(frozen=True, eq=False)
class LayerWeights:
    """Float weights of one layer, ``(out_features, in_features)`` matrices (``y = x @ W.T``).

    Q and K rows are in the "half-split" RoPE order (element i of a head rotates with element
    i + head_dim/2, the Hugging Face order). Arrays are copied to read-only float32.

    Raises
    ------
    TypeError
        ``config`` not a LayerConfig, or a weight that is not a real-valued array.
    ValueError
        A weight of the wrong shape (the message names it and the expected shape), or not finite.
    """

    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    config: LayerConfig

    def __post_init__(self):
        if not isinstance(self.config, LayerConfig):
            raise TypeError(f"config must be a LayerConfig, not {type(self.config).__name__}")
        for name, shape in _WEIGHT_SHAPES.items():
            arr = np.asarray(getattr(self, name))
            if arr.dtype.kind not in "fiu" and arr.dtype != _BF16:
                raise TypeError(f"weight {name} must be a real-valued array, got dtype {arr.dtype}")
            want = shape(self.config)
            if arr.shape != want:
                raise ValueError(f"weight {name} must have shape {want}, got {arr.shape}")
            arr = np.array(arr, dtype=np.float32)
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"weight {name} has non-finite values")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    @classmethod
    def random(cls, config, *, seed):
        """Random weights of Llama-like magnitudes for ``config`` (tests, small synthetic layers)."""
        rng = np.random.default_rng(seed)
        w = {}
        for name, shape in _WEIGHT_SHAPES.items():
            s = shape(config)
            if len(s) == 1:
                w[name] = 1.0 + 0.1 * rng.standard_normal(s)
            else:
                w[name] = rng.standard_normal(s) / np.sqrt(s[1])
        return cls(config=config, **w)


# ----------------------------------------------------------------------------------------------
# int8 helpers: weight quantization, per-token activation quantization, accumulator dequantization

def quantize_weights_per_channel(w):
    """Symmetric per-output-channel int8 weights: ``(wq int8 [out, in], scale float64 [out])``.

    ``scale[n] = max|w[n, :]| / 127`` (1 for an all-zero row), ``wq = clamp(rint(w / scale),
    -127, 127)`` (round half to even). An offline step: its float arithmetic is not hardware.
    """
    w = np.asarray(w, dtype=np.float64)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_per_token(x):
    """fp32 (or bf16) rows → int8 rows with a power-of-two scale per row (per token).

    For each row, ``E`` is the largest biased exponent field of its elements (a leading-one
    detect on the exponents; 0 for an all-zero row); the row scale is ``2**(E - 133)``, so every
    ``|x| / scale < 128``, and ``q = clamp(rne(x / scale), -127, 127)`` (round half to even;
    the division by a power of two is exact). Subnormals read as zero; the input must be finite.

    Returns
    -------
    (q, e) : (int8 array of x's shape, int64 array of x.shape[:-1])
        ``x ≈ q * 2**e`` with ``e = E - 133``.
    """
    x = np.asarray(x)
    if x.dtype == _BF16:
        x = x.astype(np.float32)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32 or bfloat16, got dtype {x.dtype}")
    bits = as_fp32_bits(x).reshape(x.shape)
    expf = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64)
    if np.any(expf == 255):
        raise ValueError("x must be finite (no Inf or NaN) to be quantized")
    x = np.where(expf == 0, np.float32(0), x)  # DAZ
    E = expf.max(axis=-1) if x.shape[-1] else np.zeros(x.shape[:-1], np.int64)
    e = E - 133
    # x * 2**-e, exact in float64 (a float32 times a power of two within range)
    y = x.astype(np.float64) * np.ldexp(1.0, -e)[..., None]
    q = np.clip(np.rint(y), -127, 127).astype(np.int8)
    return q, e


#: Mantissa bits of the per-token scale multiplier (:func:`quantize_per_token_scaled`).
TOKEN_SCALE_BITS = 7


def token_scale_table(bits=TOKEN_SCALE_BITS):
    """The per-token scale multipliers of :func:`quantize_per_token_scaled`: ``(mu, nu)``, two
    float32 tables of ``2**bits`` entries (data the host writes into the vector unit).

    A row whose largest magnitude ``a`` has ``a·2**−e ∈ [64·(1 + j/2**bits), 64·(1 + (j+1)/2**bits))``
    is multiplied by ``mu[j] = 127 / (64·(1 + (j+1)/2**bits))``, which maps it into (−127, 127);
    ``nu[j] = 64·(1 + (j+1)/2**bits) / 127`` is the value of one step (times ``2**e``). Both are
    the float64 value rounded once to fp32 (RNE). ``bits`` in 1..10; ``bits = 0`` is the plain
    power-of-two scale, ``mu = nu = [1.0]`` (:func:`quantize_per_token`).
    """
    bits = _check_int("bits", bits, 0, 10)
    if bits == 0:
        return np.ones(1, np.float32), np.ones(1, np.float32)
    n = 1 << bits
    top = 64.0 * (1.0 + (np.arange(n) + 1.0) / n)
    return (127.0 / top).astype(np.float32), (top / 127.0).astype(np.float32)


def quantize_per_token_scaled(x, *, bits=TOKEN_SCALE_BITS):
    """fp32 (or bf16) rows → int8 rows with a per-row scale ``2**e · nu[j]`` (a power of two and
    a ``bits``-bit mantissa multiplier from :func:`token_scale_table`).

    For each row: ``a`` = the largest magnitude (DAZ; an integer max over the magnitude bits),
    ``E`` its biased exponent field (0 for an all-zero row), ``e = E − 133`` (as
    :func:`quantize_per_token`), ``j`` = the top ``bits`` bits of a's fraction field (0 for an
    all-zero row); then ``q = clamp(rne(fp32_mul(x·2**−e, mu[j])), −127, 127)`` (the scaling by
    2**−e is exact; :func:`golden.vector.fp32_mul`, then round half to even). The row's largest
    element lands in [126, 127] for bits = 7. ``bits = 0`` gives :func:`quantize_per_token`
    (j = 0, no multiplier).

    Returns
    -------
    (q, e, j) : (int8 array of x's shape, int64 array of x.shape[:-1], int64 array of x.shape[:-1])
        ``x ≈ q · 2**e · nu[j]``.
    """
    bits = _check_int("bits", bits, 0, 10)
    x = np.asarray(x)
    if x.dtype == _BF16:
        x = x.astype(np.float32)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32 or bfloat16, got dtype {x.dtype}")
    xb = as_fp32_bits(x).reshape(x.shape)
    if np.any((xb & np.uint32(0x7F800000)) == np.uint32(0x7F800000)):
        raise ValueError("x must be finite (no Inf or NaN) to be quantized")
    xb = fp32_daz(xb)
    mag = xb & np.uint32(0x7FFFFFFF)
    amax = mag.max(axis=-1) if x.shape[-1] else np.zeros(x.shape[:-1], np.uint32)
    E = (amax >> np.uint32(23)).astype(np.int64)
    j = ((amax & np.uint32(0x7FFFFF)) >> np.uint32(23 - bits)).astype(np.int64) if bits else np.zeros_like(E)
    e = E - 133
    mu, _ = token_scale_table(bits)
    xs = fp32_from_bits(xb).astype(np.float64) * np.ldexp(1.0, -e)[..., None]  # exact
    y = fp32_from_bits(fp32_mul(as_fp32_bits(xs.astype(np.float32)), as_fp32_bits(mu[j])[..., None]))
    q = np.clip(np.rint(y.astype(np.float64)), -127, 127).astype(np.int8)
    return q.reshape(x.shape), e, j


def quantize_static(x, scale):
    """fp32 (or bf16) → int8 with a static scale: ``clamp(rne(fp32_mul(x, fp32(1/scale))),
    -127, 127)`` (the plain per-tensor W8A8 baseline; :func:`golden.vector.fp32_mul`)."""
    x = np.asarray(x)
    if x.dtype == _BF16:
        x = x.astype(np.float32)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32 or bfloat16, got dtype {x.dtype}")
    inv = as_fp32_bits(np.float32(1.0 / _check_float("scale", scale)))
    y = fp32_from_bits(fp32_mul(as_fp32_bits(x).reshape(x.shape), inv)).reshape(x.shape)
    if not np.all(np.isfinite(y)):
        raise ValueError("x must be finite (no Inf or NaN) to be quantized")
    return np.clip(np.rint(y), -127, 127).astype(np.int8)


def _int64_to_fp32_bits(v, exp2):
    """The exact value ``v * 2**exp2`` (int64 ``v``, integer ``exp2`` broadcast) → fp32 bits.

    Rounded once to 24 significant bits (RNE); a result below 2**-126 in magnitude is flushed to
    a zero of v's sign (+0 for v = 0); at or above 2**128 it is ±Inf.
    """
    v = np.asarray(v, dtype=np.int64)
    exp2 = np.broadcast_to(np.asarray(exp2, dtype=np.int64), v.shape)
    neg = v < 0
    mag = np.abs(v).astype(np.uint64)  # |int64 min| = 2**63 fits in uint64
    bl = np.zeros(v.shape, np.int64)  # bit length of mag
    t = mag.copy()
    for step in (32, 16, 8, 4, 2, 1):
        big = t >= (np.uint64(1) << np.uint64(step))
        bl += np.where(big, step, 0)
        t = np.where(big, t >> np.uint64(step), t)
    bl += (t > 0).astype(np.int64)
    sh = np.maximum(bl - 24, 0)
    ush = sh.astype(np.uint64)
    m = mag >> ush
    rem = mag & ((np.uint64(1) << ush) - np.uint64(1))
    half = np.where(sh > 0, np.uint64(1) << np.maximum(sh - 1, 0).astype(np.uint64), np.uint64(0))
    up = (sh > 0) & ((rem > half) | ((rem == half) & ((m & np.uint64(1)) == np.uint64(1))))
    m = m + up.astype(np.uint64)
    carry = m == (np.uint64(1) << np.uint64(24))
    m = np.where(carry, np.uint64(1) << np.uint64(23), m)
    # normalise short values so that the leading bit sits at 2**23
    m = np.where(bl < 24, m << np.maximum(24 - bl, 0).astype(np.uint64), m)
    lead = np.where(bl >= 24, sh + carry + 23, bl - 1) + exp2  # exponent of the leading bit
    biased = lead + 127
    out = (np.clip(biased, 0, 255).astype(np.uint64) << np.uint64(23)) | (m & np.uint64(0x7FFFFF))
    out = np.where(biased >= 255, np.uint64(0x7F800000), out)
    out = np.where((biased <= 0) | (mag == 0), np.uint64(0), out)
    out = out | np.where(neg, np.uint64(0x80000000), np.uint64(0))
    return out.astype(np.uint32)


def dequantize_acc(acc, multiplier, shift, row_exp=None, row_scale=None):
    """int32 accumulators → fp32: the exact value ``acc * m[n] * 2**(e_row - s[n])`` rounded once,
    then (if ``row_scale`` is given) times the row's fp32 scale with :func:`golden.vector.fp32_mul`.

    ``(m, s)`` per output channel from :func:`golden.quantize_multiplier` (the channel's weight
    scale times the static activation scale); ``row_exp`` the per-token exponent of
    :func:`quantize_per_token` / :func:`quantize_per_token_scaled` (0 if omitted); ``row_scale``
    the per-token multiplier ``nu[j]`` (float32, one per row). RNE to fp32, FTZ, exactly as an
    int64 → fp32 converter with an exponent adjust computes it; then one fp32 multiply.
    """
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise TypeError(f"acc must be int32, got dtype {acc.dtype}")
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    prod = acc.astype(np.int64) * m  # |acc| < 2**31, m < 2**31: exact
    e = -s if row_exp is None else np.asarray(row_exp, np.int64)[..., None] - s
    out = _int64_to_fp32_bits(prod, e)
    if row_scale is not None:
        rs = np.asarray(row_scale)
        if rs.dtype != np.float32 or rs.shape != acc.shape[:-1]:
            raise TypeError(f"row_scale must be float32 of shape {acc.shape[:-1]}, got {rs.dtype} {rs.shape}")
        out = fp32_mul(out, as_fp32_bits(rs).reshape(rs.shape)[..., None])
    return fp32_from_bits(out).reshape(acc.shape)


def _requantize_rows(acc, multiplier, shift, row_exp):
    """:func:`golden.requantize` with the per-token exponent folded into the shift (row by row).

    Shifts are saturated into the 6-bit range [1, 62]: a shift above 62 would give 0 anyway for
    any int32 accumulator, and one below 1 needs a scale ≥ 2**30, which saturates.
    """
    out = np.empty(acc.shape, np.int8)
    for t in range(acc.shape[0]):
        out[t] = requantize(acc[t], multiplier, np.clip(shift - row_exp[t], 1, 62))
    return out


# ----------------------------------------------------------------------------------------------
# small conversions

def _bf16(x32):
    """float32 → bf16 with :func:`golden.fp32_to_bf16` (DAZ, RNE, canonical NaN)."""
    return bf16_from_bits(fp32_to_bf16(as_fp32_bits(x32).reshape(np.shape(x32))))


def _fp32_residual_add(a, b):
    """fp32 + fp32 with :func:`golden.fp32_add` (the int8 mode's residual stream)."""
    return fp32_from_bits(fp32_add(as_fp32_bits(a), as_fp32_bits(b))).reshape(np.shape(a))


def _rope_float(x, pos, base):
    """Exact float64 RoPE, half-split pairing (the float64 mode). x (S, H, hd), pos (S,)."""
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.asarray(pos, np.float64)[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


# ----------------------------------------------------------------------------------------------
# calibration

#: Activations with a static per-tensor int8 scale in int8 mode (absmax from a float64 run).
STATIC_ACTIVATIONS = ("q", "k", "v", "o")
#: The matmul inputs: per-token scales by default; static per-tensor with
#: ``activation_scales="per_tensor"`` (the plain W8A8 baseline the report compares against).
MATMUL_INPUTS = ("h", "h2", "act")
ACTIVATION_SCALES = ("per_token", "per_tensor")


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
    """Largest |value| of each statically quantized activation in a float64 run.

    ``q`` and ``k`` are taken after RoPE, ``o`` is the attention output (the input of Wo).
    ``h``, ``h2`` and ``act`` (the inputs of the Q/K/V, gate/up and down projections) are used
    only with ``activation_scales="per_tensor"``. The int8 scale of each is ``absmax / 127``.
    ``channels`` maps ``"h"``, ``"h2"``, ``"act"`` to their per-channel absmax (float64 arrays):
    the statistics of the SmoothQuant-style smoothing (``DecoderLayer(smooth_alpha=...)``).
    """

    q: float
    k: float
    v: float
    o: float
    h: float = None
    h2: float = None
    act: float = None
    channels: dict = None

    def __post_init__(self):
        for name in STATIC_ACTIVATIONS:
            object.__setattr__(self, name, _check_float(f"calibration {name}", getattr(self, name)))
        for name in MATMUL_INPUTS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _check_float(f"calibration {name}", getattr(self, name)))
        if self.channels is not None:
            if not isinstance(self.channels, dict) or set(self.channels) != set(MATMUL_INPUTS):
                raise ValueError(f"calibration channels must map {', '.join(MATMUL_INPUTS)} to arrays")
            ch = {}
            for name, arr in self.channels.items():
                arr = np.array(arr, dtype=np.float64)
                if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                    raise ValueError(f"calibration channels[{name!r}] must be a 1-D array of finite values ≥ 0")
                arr.flags.writeable = False
                ch[name] = arr
            object.__setattr__(self, "channels", ch)

    def scalars(self):
        """The per-tensor absmax values as a dict (JSON-able)."""
        return {n: getattr(self, n) for n in STATIC_ACTIVATIONS + MATMUL_INPUTS}

    def scale(self, name):
        return getattr(self, name) / 127.0


def calibrate(weights, x, *, return_output=False):
    """Run the float64 layer on ``x`` (float64 ``(S, d_model)``) and record the absmax of the
    statically quantized activations and the per-channel absmax of the projection inputs: a
    :class:`Calibration` (and the layer's float64 output with ``return_output=True``)."""
    layer = DecoderLayer(weights, mode="float64", max_tokens=max(1, np.shape(x)[0]))
    y = layer.prefill(x)
    cal = Calibration(**{k: max(v, 1e-6) for k, v in layer.absmax.items()},
                      channels=dict(layer.channel_absmax))
    return (cal, y) if return_output else cal


# ----------------------------------------------------------------------------------------------
# the float64 KV store (PagedKVCache holds int8 or bf16 only)

class _Float64KVStore:
    """float64 K/V rows per sequence with the PagedKVCache methods the layer uses."""

    def __init__(self, kv_heads, head_dim):
        self._k, self._v, self._shape = {}, {}, (kv_heads, head_dim)
        self.dtype = "float64"
        self.kv_heads, self.head_dim = kv_heads, head_dim

    @property
    def sequences(self):
        return sorted(self._k)

    def alloc(self, seq):
        if seq in self._k:
            raise ValueError(f"sequence {seq} is already allocated")
        self._k[seq], self._v[seq] = [], []

    def append(self, seq, k, v):
        self._k[seq].append(np.array(k, np.float64))
        self._v[seq].append(np.array(v, np.float64))

    def length(self, seq):
        return len(self._k[seq])

    def read_k_all(self, seq, head):
        return np.array([r[head] for r in self._k[seq]]).reshape(-1, self.head_dim)

    def read_v_all(self, seq, head):
        return np.array([r[head] for r in self._v[seq]]).reshape(-1, self.head_dim)

    def free(self, seq):
        del self._k[seq], self._v[seq]


# ----------------------------------------------------------------------------------------------
# what a chip needs of a layer

@dataclasses.dataclass(frozen=True, eq=False)
class HardwareParams:
    """Everything a chip needs to compute a :class:`DecoderLayer` bit for bit (its
    :meth:`~DecoderLayer.hardware_params`): the operands of each matmul and vector operation in
    the order the layer applies them. Projections that read the same input are fused (their
    weight columns side by side), which changes no output: each output column depends only on
    its own weight column.

    Attributes
    ----------
    mode : str
        ``"int8"`` or ``"bf16"``.
    weights : dict of str → ndarray [K, N]
        ``"wqkv"`` (Wq | Wk | Wv), ``"wo"``, ``"wgu"`` (Wgate | Wup), ``"wdown"``: int8 (per
        output channel quantized, smoothing applied) or bf16.
    gains : dict of str → bf16 ndarray
        ``"attn_norm"``, ``"ffn_norm"`` (smoothing folded in, int8 mode).
    channel_scales : dict of str → (multiplier, shift) int64 arrays per output channel
        int8 mode: ``"qkv"`` (requantization of the Q/K/V accumulators to the static q/k/v
        scales, shift minus the token's exponent), ``"o"``, ``"gu"``, ``"down"`` (dequantization
        to fp32). Empty in bf16 mode.
    pv : (int, int) or None
        int8 mode: the P·V requantization (multiplier, shift) of every column.
    softmax_scale : (int, int) or int
        int8: ``(m, sh)`` of :func:`golden.softmax_scale_int8`; bf16: the fp32 constant's bits.
    rope : golden.RopeTable
    rms_eps : float
    activation_scales : str
        ``"per_token"`` (QUANT_TOKEN before each projection) or ``"per_tensor"``.
    static_input_scales : dict of str → float
        ``"per_tensor"`` only: the static scale of ``"h"``, ``"h2"``, ``"act"``.
    """

    mode: str
    weights: dict
    gains: dict
    channel_scales: dict
    pv: tuple
    softmax_scale: object
    rope: object
    rms_eps: float
    activation_scales: str = "per_token"
    static_input_scales: dict = None


# ----------------------------------------------------------------------------------------------
# the layer

class DecoderLayer:
    """One Llama-style decoder layer with its own KV cache.

    Parameters
    ----------
    weights : LayerWeights
    mode : str
        ``"float64"``, ``"bf16"`` or ``"int8"`` (see the module docstring).
    calibration : Calibration
        Required in int8 mode (static activation scales), ignored otherwise.
    max_tokens : int
        Longest sequence the internal cache holds (1..65536); default 256.
    max_seqs : int
        Sequences the internal cache holds at once (1..1024); default 1.
    page_size : int
        Tokens per KV-cache page (power of two, 1..256); default 16.
    activation_scales : str
        int8 mode: ``"per_token"`` (default: power-of-two scale per token for the inputs of the
        Q/K/V, gate/up and down projections) or ``"per_tensor"`` (static calibrated scales, the
        plain W8A8 baseline).
    smooth_alpha : float or None
        int8 mode: SmoothQuant migration strength α in [0, 1] (default 0.5), or None for no
        smoothing. Needs ``calibration.channels``.
    smooth_points : tuple of str
        Which projection inputs are smoothed: a subset of ``("h", "h2", "act")`` (default all).
    residual : str
        bf16 mode: ``"bf16"`` (default: bf16 residual stream, bfloat16 input and output) or
        ``"fp32"`` (a measured alternative: fp32 stream, float32 input and output).
    attention : str
        int8 mode: ``"int8"`` (default: static per-tensor int8 q, k, v, the int8 KV cache,
        :func:`golden.softmax_int8`) or ``"bf16"`` (a measured alternative: q, k, v dequantized
        to fp32, the bf16 mode's attention with a bf16 KV cache, o quantized per token).
    hadamard : bool
        int8 mode, a measured alternative: rotate the projection inputs with the 64-point fp32
        Hadamard transform (online for h, h2 and the SwiGLU output; with ``attention="bf16"``
        offline through Wv/Wo for the attention output); default False. Needs d_model, d_ff
        and head_dim to be multiples of 64 and per-token activation scales.
    scale_bits : int
        int8 mode with ``attention="bf16"``, a measured alternative: mantissa bits of the
        per-token scale multiplier (0..10; default 0, a power of two only).
    fp32_inputs : tuple of str
        bf16 mode with ``residual="fp32"``, a measured alternative: the vector ops, a subset of
        :data:`FP32_INPUTS`, that read their inputs in fp32 and round once to bf16 —
        ``"rmsnorm"`` (the fp32 stream, :func:`golden.vector.rmsnorm_fp32_in`), ``"rope"`` (the
        fp32 q/k matmul outputs, :func:`golden.vector.rope_fp32_in`), ``"swiglu"`` (the fp32
        gate/up matmul outputs, :func:`golden.vector.swiglu_fp32_in`). Default ``()``: every
        vector op reads bf16. A non-empty set needs ``residual="fp32"`` (ValueError otherwise).
    trace : bool
        Record every attention row (scores, probabilities) in :attr:`trace` (the accuracy
        report reads them); default False.

    Members
    -------
    mode, config, cache
        Read-only. ``cache`` is the :class:`golden.PagedKVCache` (int8/bf16 modes) or a float64
        store (float64 mode).
    trace : list of dict or None
        With ``trace=True``: per call and query head, ``head``, ``pos`` (query positions),
        ``scores`` (the matmul output: float64, fp32 or int32 by mode), ``scale`` (the real
        factor that turns scores into logits) and ``probs`` (float64 probabilities).
    absmax : dict
        Float64 mode only: largest |q|, |k|, |v|, |o|, |h|, |h2|, |act| seen so far (what
        :func:`calibrate` reads; ``act`` is the SwiGLU output, the input of W_down).

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range (the message names it); int8 mode without
        a calibration.
    """

    def __init__(self, weights, *, mode="float64", calibration=None, max_tokens=256, max_seqs=1,
                 page_size=16, trace=False, activation_scales="per_token", smooth_alpha=0.5,
                 smooth_points=MATMUL_INPUTS, residual="bf16", attention="int8", hadamard=False,
                 scale_bits=0, fp32_inputs=()):
        if not isinstance(weights, LayerWeights):
            raise TypeError(f"weights must be a LayerWeights, not {type(weights).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
        max_tokens = _check_int("max_tokens", max_tokens, 1, 1 << 16)
        max_seqs = _check_int("max_seqs", max_seqs, 1, 1024)
        page_size = _check_int("page_size", page_size, 1, 256)
        if page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, not {page_size}")
        if mode == "int8":
            if not isinstance(calibration, Calibration):
                raise TypeError("int8 mode needs calibration=Calibration(...) (see golden.layer.calibrate), "
                                f"got {type(calibration).__name__}")
        if activation_scales not in ACTIVATION_SCALES:
            raise ValueError(f"activation_scales must be one of {', '.join(map(repr, ACTIVATION_SCALES))}, "
                             f"not {activation_scales!r}")
        if mode == "int8" and activation_scales == "per_tensor":
            missing = [n for n in MATMUL_INPUTS if getattr(calibration, n) is None]
            if missing:
                raise ValueError(f"activation_scales='per_tensor' needs calibration of {', '.join(missing)}")
        for name, value, allowed in (("residual", residual, RESIDUALS), ("attention", attention, ATTENTION)):
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")
        if not isinstance(hadamard, (bool, np.bool_)):
            raise TypeError(f"hadamard must be a bool, not {hadamard!r}")
        scale_bits = _check_int("scale_bits", scale_bits, 0, 10)
        if (isinstance(fp32_inputs, str) or not isinstance(fp32_inputs, (tuple, list))
                or any(not isinstance(o, str) or o not in FP32_INPUTS for o in fp32_inputs)):
            raise ValueError(f"fp32_inputs must be a tuple of distinct names from {FP32_INPUTS}, not {fp32_inputs!r}")
        if len(set(fp32_inputs)) != len(fp32_inputs):
            raise ValueError(f"fp32_inputs must be a tuple of distinct names from {FP32_INPUTS}, not {fp32_inputs!r}")
        if mode == "bf16" and fp32_inputs and residual != "fp32":
            raise ValueError(f"fp32_inputs={tuple(fp32_inputs)!r} needs residual='fp32' (fp32 vector inputs extend "
                             f"the fp32 residual stream's datapath), not residual={residual!r}")
        if mode == "int8":
            if hadamard and activation_scales == "per_tensor":
                raise ValueError("hadamard=True needs activation_scales='per_token' (the static scales are "
                                 "calibrated on the unrotated inputs)")
            if scale_bits and attention != "bf16":
                raise ValueError("scale_bits > 0 needs attention='bf16' (the int8 attention requantizes q, k, v "
                                 "with a power-of-two row scale)")
            if scale_bits and activation_scales == "per_tensor":
                raise ValueError("scale_bits > 0 needs activation_scales='per_token'")
            for dim, d in (("d_model", weights.config.d_model), ("d_ff", weights.config.d_ff),
                           ("head_dim", weights.config.head_dim)):
                if hadamard and d % HADAMARD_BLOCK:
                    raise ValueError(f"hadamard=True needs {dim} ({d}) to be a multiple of {HADAMARD_BLOCK}")
        self._act_scales = activation_scales
        self._residual = residual if mode == "bf16" else "bf16"
        self._attention = attention if mode == "int8" else "int8"
        self._hadamard = bool(hadamard) and mode == "int8"
        self._scale_bits = scale_bits if mode == "int8" else 0
        self._fp32_inputs = tuple(o for o in FP32_INPUTS if o in fp32_inputs) if mode == "bf16" else ()
        if smooth_alpha is not None:
            smooth_alpha = _check_float("smooth_alpha", smooth_alpha, -1e-300)
            if smooth_alpha > 1:
                raise ValueError(f"smooth_alpha must be in [0, 1] or None, not {smooth_alpha}")
        bad = [p for p in smooth_points if p not in MATMUL_INPUTS]
        if bad or isinstance(smooth_points, str):
            raise ValueError(f"smooth_points must be a subset of {MATMUL_INPUTS}, not {smooth_points!r}")
        if mode == "int8" and smooth_alpha is not None and smooth_points and calibration.channels is None:
            raise ValueError("smooth_alpha needs calibration.channels (per-channel absmax, see calibrate); "
                             "pass smooth_alpha=None for no smoothing")
        self._smooth = smooth_alpha if mode == "int8" and smooth_points else None
        self._smooth_points = tuple(smooth_points)
        c = weights.config
        self._w, self._c, self._mode, self._cal = weights, c, mode, calibration
        self._max_tokens = max_tokens
        if mode == "float64":
            self._cache = _Float64KVStore(c.n_kv_heads, c.head_dim)
        else:
            pages = max(2, -(-max_tokens // page_size) * max_seqs)
            self._cache = PagedKVCache(page_size=page_size, num_pages=pages, kv_heads=c.n_kv_heads,
                                       head_dim=c.head_dim, max_seqs=max_seqs,
                                       dtype="int8" if mode == "int8" and attention == "int8" else "bf16")
        self.absmax = {k: 0.0 for k in STATIC_ACTIVATIONS + MATMUL_INPUTS}
        self.channel_absmax = {}
        self._trace = [] if trace else None
        self._prepare()

    # -- properties ---------------------------------------------------------------------------
    @property
    def mode(self):
        return self._mode

    @property
    def config(self):
        return self._c

    @property
    def weights(self):
        return self._w

    @property
    def calibration(self):
        return self._cal

    @property
    def cache(self):
        return self._cache

    @property
    def activation_scales(self):
        return self._act_scales

    @property
    def options(self):
        """The measured-alternative options in effect (defaults: residual "bf16", attention
        "int8", hadamard False, scale_bits 0, fp32_inputs ())."""
        return dict(residual=self._residual, attention=self._attention, hadamard=self._hadamard,
                    scale_bits=self._scale_bits, fp32_inputs=self._fp32_inputs)

    @property
    def trace(self):
        return self._trace

    def _record(self, head, pos, scores, scale, probs):
        if self._trace is not None:
            self._trace.append(dict(head=head, pos=pos.copy(), scores=np.array(scores), scale=scale,
                                    probs=np.asarray(probs, np.float64)))

    @property
    def io_dtype(self):
        """dtype of the input and output hidden states in this mode (float32 for the bf16 mode
        with ``residual="fp32"``)."""
        if self._mode == "bf16" and self._residual == "fp32":
            return np.dtype(np.float32)
        return _IO_DTYPE[self._mode]

    # -- weight preparation -------------------------------------------------------------------
    def _prepare(self):
        w, c = self._w, self._c
        if self._mode != "float64":
            self._rope = rope_table(head_dim=c.head_dim, max_pos=self._max_tokens, base=c.rope_base)
        names = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
        if self._mode == "float64":
            # (out, in) float64; used as W.T (a BLAS transposed operand, no copy)
            self._W = {n: np.asarray(getattr(w, n), np.float64).T for n in names}
            self._g = {n: np.asarray(getattr(w, n), np.float64) for n in ("attn_norm", "ffn_norm")}
        elif self._mode == "bf16":
            self._W = {n: np.ascontiguousarray(getattr(w, n).T).astype(_BF16) for n in names}
            self._g = {n: getattr(w, n).astype(_BF16) for n in ("attn_norm", "ffn_norm")}
            self._sm_scale = softmax_scale_bf16(1.0 / math.sqrt(c.head_dim))
            self._sm_bf16 = self._sm_scale
        else:
            cal = self._cal
            wf = {n: np.asarray(getattr(w, n), np.float64) for n in names + ("attn_norm", "ffn_norm")}
            in_absmax = {n: getattr(cal, n) for n in MATMUL_INPUTS}
            if self._smooth is not None:
                in_absmax = self._apply_smoothing(wf, cal.channels, self._smooth_points)
            if self._hadamard:
                _apply_rotations(wf, c, rotate_v=self._attention == "bf16")
            self._g = {n: wf[n].astype(np.float32).astype(_BF16) for n in ("attn_norm", "ffn_norm")}
            self._W, self._ws = {}, {}
            for n in names:
                q, s = quantize_weights_per_channel(wf[n])
                self._W[n] = np.ascontiguousarray(q.T)
                self._ws[n] = s
            sq, sk, sv, so = (cal.scale(n) for n in STATIC_ACTIVATIONS)
            # scale of one step of each matmul input: 2**e per token (folded into the shift), or static
            per_tensor = self._act_scales == "per_tensor"
            s_in = {n: in_absmax[n] / 127.0 if per_tensor else 1.0 for n in MATMUL_INPUTS}
            self._s_in = s_in
            # input (s_in · 2**e) → static int8 q/k/v: multiplier = weight scale · s_in / out scale
            self._mq = quantize_multiplier(self._ws["wq"] * s_in["h"] / sq)
            self._mk = quantize_multiplier(self._ws["wk"] * s_in["h"] / sk)
            self._mv = quantize_multiplier(self._ws["wv"] * s_in["h"] / sv)
            # scores → softmax: q·k·scale / sqrt(d)
            self._score_scale = sq * sk / math.sqrt(c.head_dim)
            self._sm_scale = softmax_scale_int8(self._score_scale)
            # P (uint8, scale 1/INT8_ONE) · V → o (static)
            self._mpv = quantize_multiplier(sv / INT8_ONE / so)
            # dequantizing multipliers: weight scale × static input scale (or × 1 for per-token)
            self._dq_o = quantize_multiplier(self._ws["wo"] * so)
            self._dq_gate = quantize_multiplier(self._ws["w_gate"] * s_in["h2"])
            self._dq_up = quantize_multiplier(self._ws["w_up"] * s_in["h2"])
            self._dq_down = quantize_multiplier(self._ws["w_down"] * s_in["act"])
            if self._attention == "bf16":
                self._sm_bf16 = softmax_scale_bf16(1.0 / math.sqrt(c.head_dim))
                self._nu = token_scale_table(self._scale_bits)[1]
                # o: per token (or static per tensor) into Wo
                s_o = so if per_tensor else 1.0
                self._s_in["o"] = s_o
                self._dq = {n: quantize_multiplier(self._ws[n] * s_in["h"]) for n in ("wq", "wk", "wv")}
                self._dq["wo"] = quantize_multiplier(self._ws["wo"] * s_o)

    def _apply_smoothing(self, wf, channels, points):
        """SmoothQuant-style: divide input channel j of a matmul by ``s_j`` (folded into the op
        before it) and multiply the weights' column j by ``s_j``; exact in float64, done before
        the weights are quantized. ``s_j = a_j**α / w_j**(1−α)`` (a_j the calibrated channel
        absmax of the input, w_j the largest |weight| of column j), 1 where either is 0.
        Returns the per-tensor absmax of the smoothed inputs (max_j a_j / s_j)."""
        alpha = self._smooth
        out = {n: getattr(self._cal, n) for n in MATMUL_INPUTS}
        # (input, weights reading it, where 1/s_j goes: a norm gain (vector) or rows of a matrix)
        plan = (("act", ("w_down",), ("w_up", "rows")),
                ("h2", ("w_gate", "w_up"), ("ffn_norm", "gain")),
                ("h", ("wq", "wk", "wv"), ("attn_norm", "gain")))
        for name, readers, (prev, kind) in plan:
            if name not in points:
                continue
            a = channels[name]
            wmax = np.max([np.abs(wf[r]).max(axis=0) for r in readers], axis=0)
            ok = (a > 0) & (wmax > 0)
            s = np.where(ok, np.where(ok, a, 1.0) ** alpha / np.where(ok, wmax, 1.0) ** (1 - alpha), 1.0)
            for r in readers:
                wf[r] = wf[r] * s[None, :]
            wf[prev] = wf[prev] / (s[:, None] if kind == "rows" else s)
            out[name] = float(np.max(a / s))
        return out

    def hardware_params(self):
        """The layer as a chip computes it: :class:`HardwareParams` (int8 and bf16 modes)."""
        if self._mode == "float64":
            raise ValueError("hardware_params: the float64 mode is the reference, not hardware")
        options = (("residual", self._residual, "bf16"), ("attention", self._attention, "int8"),
                   ("hadamard", self._hadamard, False), ("scale_bits", self._scale_bits, 0),
                   ("fp32_inputs", self._fp32_inputs, ()))
        extra = [f"{n}={v!r}" for n, v, d in options if v != d]
        if extra:
            raise ValueError(f"hardware_params: the chip computes the default modes only, not {', '.join(extra)} "
                             f"(docs/numerics.md, measured alternatives)")
        W = self._W
        weights = {"wqkv": np.concatenate([W["wq"], W["wk"], W["wv"]], axis=1),
                   "wo": W["wo"], "wgu": np.concatenate([W["w_gate"], W["w_up"]], axis=1), "wdown": W["w_down"]}
        gains = {"attn_norm": self._g["attn_norm"], "ffn_norm": self._g["ffn_norm"]}
        if self._mode == "bf16":
            return HardwareParams(mode="bf16", weights=weights, gains=gains, channel_scales={}, pv=None,
                                  softmax_scale=int(as_fp32_bits(np.float32(self._sm_scale))), rope=self._rope,
                                  rms_eps=self._c.rms_eps)

        def cat(*pairs):
            return (np.concatenate([np.asarray(p[0], np.int64) for p in pairs]),
                    np.concatenate([np.asarray(p[1], np.int64) for p in pairs]))
        scales = {"qkv": cat(self._mq, self._mk, self._mv), "o": cat(self._dq_o),
                  "gu": cat(self._dq_gate, self._dq_up), "down": cat(self._dq_down)}
        static = ({n: float(self._s_in[n]) for n in MATMUL_INPUTS}
                  if self._act_scales == "per_tensor" else None)
        return HardwareParams(mode="int8", weights=weights, gains=gains, channel_scales=scales,
                              pv=(int(self._mpv[0]), int(self._mpv[1])),
                              softmax_scale=(int(self._sm_scale[0]), int(self._sm_scale[1])), rope=self._rope,
                              rms_eps=self._c.rms_eps, activation_scales=self._act_scales,
                              static_input_scales=static)

    # -- sequences ----------------------------------------------------------------------------
    def _cache_length(self, seq):
        if self._mode == "float64":
            return self._cache.length(seq)
        return self._cache.status(seq).length

    def free(self, seq=0):
        """Forget sequence ``seq`` (its cache pages are returned)."""
        self._cache.free(seq)

    def length(self, seq=0):
        """Tokens of ``seq`` in the cache (0 if it is not allocated)."""
        if seq not in self._cache.sequences:
            return 0
        return self._cache_length(seq)

    # -- the public entry points ----------------------------------------------------------------
    def prefill(self, x, seq=0):
        """Process ``S`` tokens of sequence ``seq`` (appended after those already cached).

        Parameters
        ----------
        x : ndarray (S, d_model) of :attr:`io_dtype`
            Hidden states (float64 / ml_dtypes.bfloat16 / float32 by mode).
        seq : int
            Sequence id; allocated on first use.

        Returns
        -------
        ndarray (S, d_model) of :attr:`io_dtype`.

        Raises
        ------
        TypeError, ValueError
            Wrong dtype or shape, non-finite values, or a sequence that would exceed
            ``max_tokens``; nothing is changed then.
        """
        x = self._check_x(x, 2)
        seq = _check_int("seq", seq, 0, (1 << 16) - 1)
        pos0 = self.length(seq)
        if pos0 + x.shape[0] > self._max_tokens:
            raise ValueError(f"sequence {seq} would hold {pos0 + x.shape[0]} tokens, more than "
                             f"max_tokens={self._max_tokens}")
        if seq not in self._cache.sequences:
            self._cache.alloc(seq)
        if x.shape[0] == 0:
            return x.copy()
        return getattr(self, f"_forward_{self._mode}")(x, seq, pos0)

    def decode(self, x, seq=0):
        """Process one token: ``x`` (d_model,) or (1, d_model); returns the same shape."""
        arr = np.asarray(x)
        if arr.ndim == 1:
            return self.prefill(self._check_x(arr, 1)[None, :], seq)[0]
        arr = self._check_x(arr, 2)
        if arr.shape[0] != 1:
            raise ValueError(f"decode takes one token: x must be (d_model,) or (1, d_model), got {arr.shape}")
        return self.prefill(arr, seq)

    def to_input(self, x):
        """float hidden states → this mode's input dtype (:attr:`io_dtype`; bf16: RNE, float32
        otherwise)."""
        x = np.asarray(x, dtype=np.float64)
        if self.io_dtype == np.float64:
            return x.copy()
        if self.io_dtype == _BF16:
            return _bf16(x.astype(np.float32))
        return x.astype(np.float32)

    # -- validation -----------------------------------------------------------------------------
    def _check_x(self, x, ndim):
        want = self.io_dtype
        if isinstance(x, (list, tuple)) or not hasattr(x, "dtype"):
            raise TypeError(f"x must be a numpy array of {want.name}, got {type(x).__name__}")
        if x.dtype != want:
            raise TypeError(f"x must have dtype {want.name} in {self._mode} mode, got {x.dtype} "
                            f"(use layer.to_input)")
        if x.ndim != ndim or x.shape[-1] != self._c.d_model:
            shape = "(S, d_model)" if ndim == 2 else "(d_model,)"
            raise ValueError(f"x must have shape {shape} with d_model={self._c.d_model}, got {x.shape}")
        if not np.all(np.isfinite(np.asarray(x, np.float32))):
            raise ValueError("x must be finite (no Inf or NaN)")
        return x

    # -- float64 ----------------------------------------------------------------------------
    def _forward_float64(self, x, seq, pos0):
        c, W, g = self._c, self._W, self._g
        S = x.shape[0]
        pos = np.arange(pos0, pos0 + S)
        h = self._rms64(x, g["attn_norm"])
        q = (h @ W["wq"]).reshape(S, c.n_heads, c.head_dim)
        k = (h @ W["wk"]).reshape(S, c.n_kv_heads, c.head_dim)
        v = (h @ W["wv"]).reshape(S, c.n_kv_heads, c.head_dim)
        q, k = _rope_float(q, pos, c.rope_base), _rope_float(k, pos, c.rope_base)
        for t in range(S):
            self._cache.append(seq, k[t], v[t])
        L = pos0 + S
        o = np.empty((S, c.n_heads, c.head_dim))
        visible = np.arange(L)[None, :] <= pos[:, None]
        for hh in range(c.n_heads):
            kh = self._cache.read_k_all(seq, hh // c.group)
            vh = self._cache.read_v_all(seq, hh // c.group)
            sc = np.where(visible, q[:, hh] @ kh.T / math.sqrt(c.head_dim), -np.inf)
            p = np.exp(sc - sc.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            self._record(hh, pos, q[:, hh] @ kh.T, 1.0 / math.sqrt(c.head_dim), p)
            o[:, hh] = p @ vh
        o = o.reshape(S, c.d_model)
        for name, val in (("q", q), ("k", k), ("v", v), ("o", o)):
            self.absmax[name] = max(self.absmax[name], float(np.abs(val).max()))
        x1 = x + o @ W["wo"]
        h2 = self._rms64(x1, g["ffn_norm"])
        gate = h2 @ W["w_gate"]
        act = gate / (1.0 + np.exp(-gate)) * (h2 @ W["w_up"])
        for name, val in (("h", h), ("h2", h2), ("act", act)):
            self.absmax[name] = max(self.absmax[name], float(np.abs(val).max()))
            ch = np.abs(val).max(axis=0)
            self.channel_absmax[name] = np.maximum(self.channel_absmax.get(name, ch), ch)
        return x1 + act @ W["w_down"]

    def _rms64(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self._c.rms_eps) * g

    # -- bf16 -------------------------------------------------------------------------------
    def _mm_bf16(self, a, w):
        return _bf16(matmul_bf16(a, w))

    def _forward_bf16(self, x, seq, pos0):
        if self._residual == "fp32":
            return self._forward_bf16_fp32_residual(x, seq, pos0)
        c, W, g = self._c, self._W, self._g
        S = x.shape[0]
        pos = np.arange(pos0, pos0 + S)
        h = rmsnorm_bf16(x, g["attn_norm"], eps=c.rms_eps)
        q = self._mm_bf16(h, W["wq"]).reshape(S, c.n_heads, c.head_dim)
        k = self._mm_bf16(h, W["wk"]).reshape(S, c.n_kv_heads, c.head_dim)
        v = self._mm_bf16(h, W["wv"]).reshape(S, c.n_kv_heads, c.head_dim)
        q, k = rope_bf16(q, pos[:, None], self._rope), rope_bf16(k, pos[:, None], self._rope)
        for t in range(S):
            self._cache.append(seq, np.ascontiguousarray(k[t]), np.ascontiguousarray(v[t]))
        o = np.empty((S, c.n_heads, c.head_dim), _BF16)
        for kvh in range(c.n_kv_heads):
            kh = self._cache.read_k_all(seq, kvh)
            vh = self._cache.read_v_all(seq, kvh)
            kt = np.ascontiguousarray(kh.T)
            for hh in range(kvh * c.group, (kvh + 1) * c.group):
                scores = matmul_bf16(np.ascontiguousarray(q[:, hh]), kt)
                p = softmax_bf16(scores, self._sm_scale, causal_pos=pos)
                self._record(hh, pos, scores, 1.0 / math.sqrt(c.head_dim), p.astype(np.float64))
                o[:, hh] = self._mm_bf16(p, vh)
        attn = self._mm_bf16(o.reshape(S, c.d_model), W["wo"])
        x1 = residual_add_bf16(x, attn)
        h2 = rmsnorm_bf16(x1, g["ffn_norm"], eps=c.rms_eps)
        act = swiglu_bf16(self._mm_bf16(h2, W["w_gate"]), self._mm_bf16(h2, W["w_up"]))
        return residual_add_bf16(x1, self._mm_bf16(act, W["w_down"]))

    def _attention_bf16(self, q, k, v, seq, pos, rotated=False):
        """bf16 q (S, H, hd), k, v (S, H_kv, hd) → bf16 attention output (S, d_model), as the
        default bf16 mode computes it: RoPE (unless ``rotated``: q and k arrive rotated), the
        bf16 cache, scores :func:`golden.matmul_bf16`, :func:`golden.softmax_bf16`, P·V
        :func:`golden.matmul_bf16` rounded to bf16."""
        c = self._c
        S = q.shape[0]
        if not rotated:
            q, k = rope_bf16(q, pos[:, None], self._rope), rope_bf16(k, pos[:, None], self._rope)
        for t in range(S):
            self._cache.append(seq, np.ascontiguousarray(k[t]), np.ascontiguousarray(v[t]))
        o = np.empty((S, c.n_heads, c.head_dim), _BF16)
        for kvh in range(c.n_kv_heads):
            kt = np.ascontiguousarray(self._cache.read_k_all(seq, kvh).T)
            vh = self._cache.read_v_all(seq, kvh)
            for hh in range(kvh * c.group, (kvh + 1) * c.group):
                scores = matmul_bf16(np.ascontiguousarray(q[:, hh]), kt)
                p = softmax_bf16(scores, self._sm_bf16, causal_pos=pos)
                self._record(hh, pos, scores, 1.0 / math.sqrt(c.head_dim), p.astype(np.float64))
                o[:, hh] = self._mm_bf16(p, vh)
        return o.reshape(S, c.d_model)

    def _forward_bf16_fp32_residual(self, x, seq, pos0):
        """``residual="fp32"``: the default bf16 layer, except that Wo and W_down outputs stay
        fp32 and are added to the fp32 stream (:func:`golden.fp32_add`); RMSNorm reads the
        stream rounded to bf16. With ``fp32_inputs``, the named vector ops read fp32 instead
        (the stream, the unrounded q/k and gate/up matmul outputs) and round once to bf16."""
        c, W, g = self._c, self._W, self._g
        S = x.shape[0]
        pos = np.arange(pos0, pos0 + S)
        ops = self._fp32_inputs

        def norm(xs, gain):
            if "rmsnorm" in ops:
                return rmsnorm_fp32_in(xs, gain, eps=c.rms_eps)
            return rmsnorm_bf16(_bf16(xs), gain, eps=c.rms_eps)

        h = norm(x, g["attn_norm"])
        v = self._mm_bf16(h, W["wv"]).reshape(S, c.n_kv_heads, c.head_dim)
        if "rope" in ops:
            q = matmul_bf16(h, W["wq"]).reshape(S, c.n_heads, c.head_dim)
            k = matmul_bf16(h, W["wk"]).reshape(S, c.n_kv_heads, c.head_dim)
            q, k = rope_fp32_in(q, pos[:, None], self._rope), rope_fp32_in(k, pos[:, None], self._rope)
            o = self._attention_bf16(q, k, v, seq, pos, rotated=True)
        else:
            q = self._mm_bf16(h, W["wq"]).reshape(S, c.n_heads, c.head_dim)
            k = self._mm_bf16(h, W["wk"]).reshape(S, c.n_kv_heads, c.head_dim)
            o = self._attention_bf16(q, k, v, seq, pos)
        x1 = _fp32_residual_add(x, matmul_bf16(o, W["wo"]))
        h2 = norm(x1, g["ffn_norm"])
        if "swiglu" in ops:
            act = swiglu_fp32_in(matmul_bf16(h2, W["w_gate"]), matmul_bf16(h2, W["w_up"]))
        else:
            act = swiglu_bf16(self._mm_bf16(h2, W["w_gate"]), self._mm_bf16(h2, W["w_up"]))
        return _fp32_residual_add(x1, matmul_bf16(act, W["w_down"]))

    # -- int8 -------------------------------------------------------------------------------
    def _quantize_input(self, name, xb):
        """bf16 matmul input → (int8, per-token exponent): per token, or static per tensor;
        with ``hadamard=True`` the 64-point fp32 Hadamard transform first."""
        if self._hadamard:
            xb = hadamard_fp32(xb)
        if self._act_scales == "per_token":
            return quantize_per_token(xb)
        return quantize_static(xb, self._s_in[name]), np.zeros(xb.shape[:-1], np.int64)

    def _forward_int8(self, x, seq, pos0):
        if self._attention == "bf16":
            return self._forward_int8_bf16_attention(x, seq, pos0)
        c, W, g = self._c, self._W, self._g
        S = x.shape[0]
        pos = np.arange(pos0, pos0 + S)
        # attention input: bf16 RMSNorm of the fp32 residual, per-token int8
        hq, he = self._quantize_input("h", rmsnorm_bf16(_bf16(x), g["attn_norm"], eps=c.rms_eps))
        q = _requantize_rows(matmul_int8(hq, W["wq"]), *self._mq, he).reshape(S, c.n_heads, c.head_dim)
        k = _requantize_rows(matmul_int8(hq, W["wk"]), *self._mk, he).reshape(S, c.n_kv_heads, c.head_dim)
        v = _requantize_rows(matmul_int8(hq, W["wv"]), *self._mv, he).reshape(S, c.n_kv_heads, c.head_dim)
        q, k = rope_int8(q, pos[:, None], self._rope), rope_int8(k, pos[:, None], self._rope)
        for t in range(S):
            self._cache.append(seq, np.ascontiguousarray(k[t]), np.ascontiguousarray(v[t]))
        o = np.empty((S, c.n_heads, c.head_dim), np.int8)
        for kvh in range(c.n_kv_heads):
            kt = np.ascontiguousarray(self._cache.read_k_all(seq, kvh).T)
            vh = self._cache.read_v_all(seq, kvh)
            for hh in range(kvh * c.group, (kvh + 1) * c.group):
                scores = matmul_int8(np.ascontiguousarray(q[:, hh]), kt)
                p = softmax_int8(scores, self._sm_scale, causal_pos=pos)
                self._record(hh, pos, scores, self._score_scale, p / INT8_ONE)
                o[:, hh] = requantize(matmul_int8(p, vh), *self._mpv)
        attn = dequantize_acc(matmul_int8(o.reshape(S, c.d_model), W["wo"]), *self._dq_o)
        x1 = _fp32_residual_add(x, attn)
        # MLP: per-token int8 into gate/up, fp32 dequantization, bf16 SiLU·up, per-token int8
        h2q, h2e = self._quantize_input("h2", rmsnorm_bf16(_bf16(x1), g["ffn_norm"], eps=c.rms_eps))
        gate = dequantize_acc(matmul_int8(h2q, W["w_gate"]), *self._dq_gate, h2e)
        up = dequantize_acc(matmul_int8(h2q, W["w_up"]), *self._dq_up, h2e)
        aq, ae = self._quantize_input("act", swiglu_bf16(_bf16(gate), _bf16(up)))
        down = dequantize_acc(matmul_int8(aq, W["w_down"]), *self._dq_down, ae)
        return _fp32_residual_add(x1, down)

    # -- int8 with attention="bf16" (a measured alternative) ---------------------------------------
    def _quantize_scaled(self, name, x):
        """Projection input → (int8, per-token exponent, per-token fp32 multiplier or None):
        Hadamard (``hadamard=True``; not for o, which arrives rotated through Wv), then
        :func:`quantize_per_token_scaled` (or the static per-tensor scale)."""
        if self._hadamard and name != "o":
            x = hadamard_fp32(x)
        if self._act_scales == "per_tensor":
            return quantize_static(x, self._s_in[name]), np.zeros(np.shape(x)[:-1], np.int64), None
        q, e, j = quantize_per_token_scaled(x, bits=self._scale_bits)
        return q, e, (self._nu[j] if self._scale_bits else None)

    def _project(self, xq, name, dq):
        q, e, rs = xq
        return dequantize_acc(matmul_int8(q, self._W[name]), *dq, e, rs)

    def _forward_int8_bf16_attention(self, x, seq, pos0):
        """``attention="bf16"``: int8 projections, q, k, v dequantized to fp32 and rounded to
        bf16, the bf16 mode's attention, o quantized per token into Wo."""
        c, g = self._c, self._g
        S = x.shape[0]
        pos = np.arange(pos0, pos0 + S)
        hq = self._quantize_scaled("h", rmsnorm_bf16(_bf16(x), g["attn_norm"], eps=c.rms_eps))
        q = _bf16(self._project(hq, "wq", self._dq["wq"])).reshape(S, c.n_heads, c.head_dim)
        k = _bf16(self._project(hq, "wk", self._dq["wk"])).reshape(S, c.n_kv_heads, c.head_dim)
        v = _bf16(self._project(hq, "wv", self._dq["wv"])).reshape(S, c.n_kv_heads, c.head_dim)
        o = self._attention_bf16(q, k, v, seq, pos)
        x1 = _fp32_residual_add(x, self._project(self._quantize_scaled("o", o), "wo", self._dq["wo"]))
        h2q = self._quantize_scaled("h2", rmsnorm_bf16(_bf16(x1), g["ffn_norm"], eps=c.rms_eps))
        gate = self._project(h2q, "w_gate", self._dq_gate)
        up = self._project(h2q, "w_up", self._dq_up)
        aq = self._quantize_scaled("act", swiglu_bf16(_bf16(gate), _bf16(up)))
        return _fp32_residual_add(x1, self._project(aq, "w_down", self._dq_down))


def _apply_rotations(wf, c, *, rotate_v, rotate_inputs=True):
    """Fold the int8 mode's Hadamard rotations into float64 weights (offline, exact in float64).

    The online transform multiplies each block of 64 input elements by the Sylvester matrix H
    (unnormalized, H·H = 64·I), so every reader of h, h2 and the SwiGLU output gets
    ``W ← W·blockdiag(H)/64``. With ``rotate_v``, each head's V is rotated by the orthonormal
    H/8 (``Wv`` rows of the head ← (H/8)·rows) and Wo's columns of the head undo it
    (``← cols·H/8``), so the attention output reaches Wo already rotated.
    """
    b = HADAMARD_BLOCK
    h = hadamard_matrix(b)
    for readers in (("wq", "wk", "wv"), ("w_gate", "w_up"), ("w_down",)) if rotate_inputs else ():
        for r in readers:
            n_out, n_in = wf[r].shape
            wf[r] = (wf[r].reshape(n_out, n_in // b, b) @ h / b).reshape(n_out, n_in)
    if rotate_v:
        hd = c.head_dim
        hn = hadamard_matrix(hd) / math.sqrt(hd)
        wv = wf["wv"].reshape(c.n_kv_heads, hd, -1)
        wf["wv"] = np.einsum("ij,gjk->gik", hn, wv).reshape(c.kv_dim, -1)
        wo = wf["wo"].reshape(wf["wo"].shape[0], c.n_heads, hd)
        wf["wo"] = (wo @ hn).reshape(wf["wo"].shape[0], c.d_model)
