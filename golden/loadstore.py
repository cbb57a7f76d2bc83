"""LOAD and STORE: the model of the chip's data movement between external memory and the
scratchpad (hardware: ``hdl/loadstore.py``; docs/dma.md).

External memory is a flat byte array; the scratchpad a ``[words, lanes]`` uint32 array (global
word addresses). A descriptor (:class:`Descriptor`) moves ``rows`` rows of ``elems`` elements
of ``elem_bytes`` bytes:

* LOAD: row r's bytes at ``ext_addr + r·ext_stride`` → scratchpad words
  ``spad_addr + r·spad_stride + i``; element e in lane ``e % lanes`` of word ``e // lanes``,
  1- and 2-byte elements sign-extended when ``signed`` (else zero-extended), lanes past the
  row's end 0.
* STORE: the reverse: each lane's low ``elem_bytes`` bytes; only the row's
  ``elems · elem_bytes`` bytes are written.

Rows are moved in order, so overlapping rows end as the last one wrote them. A bad descriptor
(:func:`check`) moves nothing.
"""

from dataclasses import dataclass

import numpy as np

from spec.codes import LoadStoreStatus
from spec.isa import ElemBytes

__all__ = ["Descriptor", "check", "load", "store", "elem_code"]


def elem_code(elem_bytes):
    """The ``elem_bytes`` field of a descriptor or instruction (``spec.isa.ElemBytes``) for a
    size in bytes; 3 (bad) for anything but 1, 2, 4."""
    return {1: ElemBytes.B1, 2: ElemBytes.B2, 4: ElemBytes.B4}.get(elem_bytes, 3)


@dataclass(frozen=True)
class Descriptor:
    """A LOAD/STORE descriptor; ``elem_bytes`` in bytes (the hardware field holds
    :func:`elem_code` of it)."""
    ext_addr: int
    ext_stride: int
    rows: int
    elems: int
    elem_bytes: int
    spad_addr: int
    spad_stride: int
    signed: bool = False


def check(d, *, data_bytes, lanes, spad_words, addr_width):
    """The status of descriptor ``d`` (OK or the first failing check)."""
    if d.elem_bytes not in (1, 2, 4):
        return LoadStoreStatus.BAD_ELEM_BYTES
    if d.rows == 0 or d.elems == 0:
        return LoadStoreStatus.ZERO_SIZE
    if d.ext_addr % data_bytes or d.ext_stride % data_bytes:
        return LoadStoreStatus.UNALIGNED
    beats = -(-d.elems * d.elem_bytes // data_bytes)
    if d.ext_addr + (d.rows - 1) * d.ext_stride + beats * data_bytes > 1 << addr_width:
        return LoadStoreStatus.EXT_RANGE
    if d.spad_addr + (d.rows - 1) * d.spad_stride + -(-d.elems // lanes) > spad_words:
        return LoadStoreStatus.SPAD_RANGE
    return LoadStoreStatus.OK


def _row_elements(raw, elem_bytes, signed):
    dtype = {1: np.int8 if signed else np.uint8, 2: np.int16 if signed else np.uint16, 4: np.uint32}[elem_bytes]
    return raw.view(dtype).astype(np.int64).astype(np.uint32)


def load(mem, spad, d):
    """Apply LOAD ``d`` to ``spad`` (in place) from ``mem`` (uint8)."""
    lanes = spad.shape[1]
    words = -(-d.elems // lanes)
    n = d.elems * d.elem_bytes
    for r in range(d.rows):
        a = d.ext_addr + r * d.ext_stride
        row = np.zeros(words * lanes, np.uint32)
        row[:d.elems] = _row_elements(np.asarray(mem[a:a + n], np.uint8), d.elem_bytes, d.signed)
        w = d.spad_addr + r * d.spad_stride
        spad[w:w + words] = row.reshape(words, lanes)


def store(spad, mem, d):
    """Apply STORE ``d`` to ``mem`` (uint8, in place) from ``spad``."""
    lanes = spad.shape[1]
    words = -(-d.elems // lanes)
    n = d.elems * d.elem_bytes
    for r in range(d.rows):
        w = d.spad_addr + r * d.spad_stride
        lanes_u32 = spad[w:w + words].reshape(-1)[:d.elems].astype("<u4")
        raw = lanes_u32.view(np.uint8).reshape(d.elems, 4)[:, :d.elem_bytes].reshape(-1)
        a = d.ext_addr + r * d.ext_stride
        mem[a:a + n] = raw
