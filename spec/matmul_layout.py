"""External-memory layouts of a MATMUL instruction's weights and parameters, defined once
(docs/chip.md, "The MATMUL unit"). The compiler packs with these functions, the tests build
their memory images with them, and the dispatcher's range checks (hdl/cmdproc.py) use the same
sizes (tests/test_matmul_layout.py proves it).

**Weights** (``w_src`` EXT or EXT_T, at ``w_addr``): the matmul engine's ``w`` beats
(docs/matmul.md, "Weight formats") in the order the engine takes them (:func:`tile_order`:
groups of G = ``interleave`` + 1 N tiles, ``for group: for kt: for nt in group``; ``for nt: for kt``
with ``interleave`` 0),
each beat in :func:`weight_beat_bytes` bytes, back to back, the whole stream padded with zeros
to a multiple of the bus width:

* int8, rows (EXT) or transposed (EXT_T): C bytes per beat, byte c is the int8 of lane c (the
  unit sign-extends it to the engine's 16-bit lane);
* bf16, rows or transposed: 2·C bytes, lane c's 16 bits little-endian in bytes 2c, 2c + 1;
* int8 wide rows (EXT with ``w_wide``): 2·C bytes, byte 2c = ``W[kt·R + 2j, nt·C + c]``, byte
  2c + 1 = ``W[kt·R + 2j + 1, nt·C + c]`` (0 past K): the engine's wide beat as it is.

Lanes past K or N are zero. The engine reads rows (EXT, KV_V) as ``⌈N/C⌉`` N tiles of K beats
(⌈K/2⌉ wide), transposed weights (EXT_T, KV_K) as ``⌈K/R⌉`` K tiles of N beats (R = C on the
chip, so one beat per column of a tile).

**Parameters** (at ``p_addr``, present when ``has_bias`` or ``out_fmt`` is INT8): one record of
:func:`param_beat_bytes` per N tile: C int32 biases (fp32 bits in bf16 mode) little-endian, C
uint32 requantization multipliers, C shift bytes, zeros up to the bus width. Column
``nt·C + c`` is entry c of record nt; entries past N are zero.

Only numpy: bf16 arrays may be ``ml_dtypes.bfloat16`` or their ``uint16`` bit patterns.
"""

import numpy as np

__all__ = ["tile_order", "weight_beat_bytes", "weight_beats", "weight_bytes", "engine_weight_beats",
           "weights_from_beats", "pack_weights", "unpack_weight_beats", "param_beat_bytes", "param_bytes",
           "pack_params", "needs_params"]

#: ``out_fmt`` of a requantized int8 result (spec.codes.OutFormat.INT8), which needs parameters.
_OUT_INT8 = 1


def _ceil(a, b):
    return -(-a // b)


def _check_dims(**dims):
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, not {v!r}")


def tile_order(kt_count, nt_count, interleave=0):
    """The order of the weight tiles (nt, kt) in a matmul command's stream: groups of G =
    ``interleave`` + 1 N tiles (the last may have fewer), ``for group: for kt: for nt in group``
    (docs/matmul.md, "Schedule"); ``interleave`` = 0 is ``for nt: for kt``."""
    _check_dims(kt_count=kt_count, nt_count=nt_count)
    if isinstance(interleave, bool) or not isinstance(interleave, (int, np.integer)) or not 0 <= interleave <= 15:
        raise ValueError(f"interleave must be an int in 0..15, not {interleave!r}")
    G = int(interleave) + 1
    return [(nt, kt) for n0 in range(0, nt_count, G) for kt in range(kt_count)
            for nt in range(n0, min(n0 + G, nt_count))]


def weight_beat_bytes(cols, *, bf16=False, wide=False):
    """Bytes of one weight beat in external memory: C (int8) or 2·C (bf16, wide int8)."""
    _check_dims(cols=cols)
    if wide and bf16:
        raise ValueError("the wide format carries int8 weights only")
    return cols * (2 if bf16 or wide else 1)


def weight_beats(k, n, *, rows, cols, transposed=False, wide=False):
    """The engine's weight beats of a K×N matrix: ``⌈N/C⌉·K`` in rows, ``⌈N/C⌉·⌈K/2⌉`` wide
    (R even), ``⌈K/R⌉·N·⌈R/C⌉`` transposed."""
    _check_dims(k=k, n=n, rows=rows, cols=cols)
    if wide and transposed:
        raise ValueError("the wide format is a rows format")
    if transposed:
        return _ceil(k, rows) * n * _ceil(rows, cols)
    if wide:
        per_tile = sum(_ceil(min(rows, k - k0), 2) for k0 in range(0, k, rows))
        return _ceil(n, cols) * per_tile
    return _ceil(n, cols) * k


def weight_bytes(k, n, *, rows, cols, bus_bytes, bf16=False, transposed=False, wide=False):
    """External-memory bytes of a K×N weight matrix: its beats, padded to the bus width."""
    raw = weight_beats(k, n, rows=rows, cols=cols, transposed=transposed, wide=wide) \
        * weight_beat_bytes(cols, bf16=bf16, wide=wide)
    return _ceil(raw, bus_bytes) * bus_bytes


def _lanes16(w):
    """int8 → sign-extended 16-bit lanes; a 2-byte dtype (bf16) → its bits."""
    if w.dtype == np.int8:
        return w.astype(np.int16).view(np.uint16)
    if w.dtype.itemsize == 2:
        return np.ascontiguousarray(w).view(np.uint16)
    raise ValueError(f"weights must be int8 or bf16 (2-byte), not {w.dtype}")


def engine_weight_beats(w, *, rows, cols, transposed=False, wide=False, interleave=0):
    """The engine's ``w`` beats of ``w`` [K, N] (int8 or bf16), uint16 [beats, C]: 16-bit lanes
    (int8 sign-extended, bf16 bits; wide: two int8 rows per lane, the even row in the low
    byte), in the engine's order (docs/matmul.md, "Weight formats"; :func:`tile_order`)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [K, N], got shape {list(w.shape)}")
    K, N = w.shape
    _check_dims(K=K, N=N, rows=rows, cols=cols)
    R, C = rows, cols
    Kt, Nt, J = _ceil(K, R), _ceil(N, C), _ceil(R, C)
    if wide and (transposed or w.dtype != np.int8):
        raise ValueError("the wide format carries int8 weights in row orientation only")
    wp = np.zeros((Kt * R, Nt * C), np.uint16)
    wp[:K, :N] = _lanes16(w)
    tiles = wp.reshape(Kt, R, Nt, C).transpose(2, 0, 1, 3)          # [nt, kt, r, c]
    beats = []
    for nt, kt in tile_order(Kt, Nt, interleave):
        kv, nv = min(R, K - kt * R), min(C, N - nt * C)
        t = tiles[nt, kt]
        if transposed:
            cols_t = np.zeros((C, J * C), np.uint16)
            cols_t[:, :R] = t.T
            beats.append(cols_t[:nv].reshape(nv * J, C))
        elif wide:
            blk = np.zeros((2 * _ceil(kv, 2), C), np.uint16)
            blk[:kv] = t[:kv] & 0xFF
            beats.append(blk[0::2] | (blk[1::2] << 8))
        else:
            beats.append(t[:kv])
    return np.concatenate(beats).astype(np.uint16)


def weights_from_beats(beats, k, n, *, rows, cols, transposed=False, wide=False, interleave=0):
    """The K×N matrix whose :func:`engine_weight_beats` (with the same ``interleave``) are
    ``beats`` (uint16 [beats, C], as :func:`unpack_weight_beats` gives them): uint16 [K, N]
    16-bit lanes (int8 sign-extended, bf16 bits). The inverse of :func:`engine_weight_beats`."""
    _check_dims(k=k, n=n, rows=rows, cols=cols)
    beats = np.asarray(beats, np.uint16)
    R, C = rows, cols
    Kt, Nt, J = _ceil(k, R), _ceil(n, C), _ceil(R, C)
    wp = np.zeros((Kt * R, Nt * C), np.uint16)
    want = weight_beats(k, n, rows=R, cols=C, transposed=transposed, wide=wide)
    if beats.shape != (want, C):
        raise ValueError(f"a {k}×{n} matrix has {want} beats of {C} lanes, not shape {list(beats.shape)}")
    pos = 0
    for nt, kt in tile_order(Kt, Nt, interleave):
        kv, nv = min(R, k - kt * R), min(C, n - nt * C)
        r0, c0 = kt * R, nt * C
        if transposed:
            cols_t = beats[pos:pos + nv * J].reshape(nv, J * C)[:, :R]
            wp[r0:r0 + R, c0:c0 + nv] = cols_t.T
            pos += nv * J
        elif wide:
            half = _ceil(kv, 2)
            pairs = np.stack([beats[pos:pos + half] & 0xFF, beats[pos:pos + half] >> 8], axis=1)
            wp[r0:r0 + kv, c0:c0 + C] = pairs.reshape(2 * half, C)[:kv].astype(np.uint8).view(np.int8) \
                .astype(np.int16).view(np.uint16)
            pos += half
        else:
            wp[r0:r0 + kv, c0:c0 + C] = beats[pos:pos + kv]
            pos += kv
    return wp[:k, :n].copy()


def pack_weights(w, *, rows, cols, bus_bytes, transposed=False, wide=False, interleave=0):
    """The external-memory bytes of ``w`` [K, N] (int8 or bf16) for a MATMUL with ``w_src``
    EXT (``transposed=False``, ``wide`` for ``w_wide``) or EXT_T (``transposed=True``) and
    ``interleave`` (:func:`tile_order`): :func:`weight_bytes` bytes, whatever the interleave."""
    w = np.asarray(w)
    beats = engine_weight_beats(w, rows=rows, cols=cols, transposed=transposed, wide=wide,
                                interleave=interleave)
    if w.dtype == np.int8 and not wide:
        raw = (beats & 0xFF).astype(np.uint8).tobytes()
    else:
        raw = beats.astype("<u2").tobytes()
    return raw + bytes(_ceil(len(raw), bus_bytes) * bus_bytes - len(raw))


def unpack_weight_beats(data, *, cols, beats, bf16=False, wide=False):
    """What the unit makes of weight bytes: the first ``beats`` engine beats, uint16 [beats, C]
    (int8 bytes sign-extended into 16-bit lanes; bf16 and wide beats as 16-bit lanes). The
    inverse of :func:`pack_weights`."""
    size = weight_beat_bytes(cols, bf16=bf16, wide=wide)
    buf = np.frombuffer(bytes(data), np.uint8)
    if len(buf) < beats * size:
        raise ValueError(f"{len(buf)} bytes hold fewer than {beats} beats of {size} bytes")
    buf = buf[:beats * size]
    if bf16 or wide:
        return buf.view("<u2").reshape(beats, cols).astype(np.uint16)
    return buf.view(np.int8).astype(np.int16).view(np.uint16).reshape(beats, cols)


def param_beat_bytes(cols, bus_bytes):
    """Bytes of one N tile's parameter record: 9·C (C int32 biases, C uint32 multipliers, C
    shift bytes) padded to a multiple of the bus width."""
    _check_dims(cols=cols, bus_bytes=bus_bytes)
    return _ceil(9 * cols, bus_bytes) * bus_bytes


def param_bytes(n, *, cols, bus_bytes):
    """External-memory bytes of the parameters of an N-column result: one record per N tile."""
    _check_dims(n=n)
    return _ceil(n, cols) * param_beat_bytes(cols, bus_bytes)


def needs_params(*, has_bias, out_fmt):
    """Whether a MATMUL reads parameters: ``has_bias`` or ``out_fmt`` INT8 (requantized)."""
    return bool(has_bias) or int(out_fmt) == _OUT_INT8


def _per_column(x, n, name, dtype):
    out = np.zeros(n, dtype)
    if x is not None:
        x = np.asarray(x)
        if x.shape != (n,):
            raise ValueError(f"{name} must have shape [N] = [{n}], got {list(x.shape)}")
        if x.dtype == np.float32:
            x = x.view(np.uint32)
        if x.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers (or float32 biases), not {x.dtype}")
        out[:] = x.astype(np.int64).astype(dtype)
    return out


def pack_params(n, *, cols, bus_bytes, bias=None, multiplier=None, shift=None):
    """The external-memory bytes of the parameters of an N-column result
    (:func:`param_bytes`): ``bias`` int32 or float32 [N] (its bits), ``multiplier`` [N]
    (0 ≤ m < 2**32; the engine reads the low 31 bits), ``shift`` [N] (0..255); missing ones are
    zero."""
    _check_dims(n=n)
    C = cols
    Nt = _ceil(n, C)
    rec = param_beat_bytes(C, bus_bytes)
    b = _per_column(bias, n, "bias", np.uint32)
    mult = _per_column(multiplier, n, "multiplier", np.uint32)
    sh = _per_column(shift, n, "shift", np.uint8)
    out = np.zeros((Nt, rec), np.uint8)
    for name, x, width in (("bias", b, 4), ("multiplier", mult, 4), ("shift", sh, 1)):
        full = np.zeros(Nt * C, x.dtype)
        full[:n] = x
        off = {"bias": 0, "multiplier": 4 * C, "shift": 8 * C}[name]
        out[:, off:off + width * C] = full.astype(f"<u{width}").view(np.uint8).reshape(Nt, width * C)
    return out.tobytes()
