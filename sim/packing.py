"""Payload packing: the one place that turns fields and lanes into stream words and back.

Used on both sides of a simulation: by the ``sim.run_*`` APIs (numpy in, payload words to the
testbench; payload words back, numpy out), by the cocotb testbenches (:mod:`sim.tb.common`) and
by amaranth.sim tests (:mod:`sim.amaranth_streams`). A payload word is a Python ``int`` (any
width); in ``inputs.npz``/``outputs.npz`` a list of words travels as a ``uint8`` array of
little-endian byte rows, one row per word.

Layouts are ``amaranth.lib.data.StructLayout`` objects (a block's ``cmd_layout``,
``resp_layout``, …) or ``{name: width}`` dicts (fields packed from bit 0 in order).
"""

import numpy as np

__all__ = ["field_slices", "pack_fields", "unpack_fields", "words_to_rows", "rows_to_words",
           "pack_lanes", "unpack_lanes"]


def field_slices(layout):
    """``{name: (offset, width)}`` of a StructLayout or a ``{name: width}`` dict."""
    if isinstance(layout, dict):
        out, offset = {}, 0
        for name, width in layout.items():
            out[name] = (offset, int(width))
            offset += int(width)
        return out
    from amaranth.hdl import Shape
    return {name: (fld.offset, Shape.cast(fld.shape).width) for name, fld in layout}


def pack_fields(layout, values, *, what="field"):
    """One payload word from ``values`` (``{name: int}``; missing fields are 0).

    Raises ``ValueError`` naming the field when a value does not fit its width, and when
    ``values`` names a field the layout does not have (``what`` names the thing in the message,
    e.g. ``"command 3: field"``)."""
    fields = field_slices(layout)
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{what} {sorted(unknown)[0]!r} is not one of {', '.join(fields)}")
    word = 0
    for name, value in values.items():
        offset, width = fields[name]
        v = int(value)
        if not 0 <= v < (1 << width):
            raise ValueError(f"{what} {name}={v} does not fit {width} bits")
        word |= v << offset
    return word


def unpack_fields(layout, words):
    """``{name: int64 array}`` of a sequence of payload words (``{name: int}`` for one word)."""
    fields = field_slices(layout)
    if isinstance(words, (int, np.integer)):
        w = int(words)
        return {name: (w >> off) & ((1 << width) - 1) for name, (off, width) in fields.items()}
    words = [int(w) for w in words]
    return {name: np.array([(w >> off) & ((1 << width) - 1) for w in words],
                           dtype=np.int64 if width < 64 else object)
            for name, (off, width) in fields.items()}


def words_to_rows(words, nbytes=None):
    """Payload words → ``uint8`` array [n, nbytes] of little-endian byte rows (``nbytes``: enough
    for the widest word when not given)."""
    words = [int(w) for w in words]
    if nbytes is None:
        nbytes = max([1] + [(w.bit_length() + 7) // 8 for w in words])
    if not words:
        return np.zeros((0, nbytes), np.uint8)
    return np.frombuffer(b"".join(w.to_bytes(nbytes, "little") for w in words),
                         np.uint8).reshape(len(words), nbytes)


def rows_to_words(rows):
    """The inverse of :func:`words_to_rows`: a list of ints."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


def pack_lanes(values, width):
    """Rows of lanes ([n, lanes] unsigned integers, lane 0 in the low bits) → payload words."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"lanes must be a 2-D array [beats, lanes], not {values.ndim}-D")
    mask = (1 << width) - 1
    if width % 8 == 0 and values.dtype.kind in "iu":
        dt = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}.get(width)
        if dt is not None:
            raw = (values.astype(np.int64) & mask if width < 64 else values).astype(dt)
            return rows_to_words(np.ascontiguousarray(raw).view(np.uint8).reshape(len(values), -1))
    return [sum((int(v) & mask) << (width * j) for j, v in enumerate(row)) for row in values.tolist()]


def unpack_lanes(words, lanes, width):
    """Payload words → [n, lanes] array of the low ``lanes · width`` bits (uint16 for width ≤ 16,
    uint32 for ≤ 32, else uint64)."""
    dtype = np.uint16 if width <= 16 else np.uint32 if width <= 32 else np.uint64
    words = [int(w) for w in words]
    if width in (8, 16, 32, 64):
        nbytes = lanes * width // 8
        mask = (1 << (8 * nbytes)) - 1
        raw = words_to_rows([w & mask for w in words], nbytes)
        return raw.view(f"<u{width // 8}").reshape(len(words), lanes).astype(dtype)
    mask = (1 << width) - 1
    return np.array([[(w >> (width * j)) & mask for j in range(lanes)] for w in words],
                    dtype=dtype).reshape(len(words), lanes)
