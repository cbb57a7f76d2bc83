"""The chip's KV instruction (spec/isa.py ``Opcode.KV``): what it does to the paged KV cache,
for the compiler, the driver and the tests (hardware: ``hdl/exec_kv.py`` ``KVExec``; the cache
itself is :class:`golden.PagedKVCache`; docs/chip.md, "The KV unit").

* ``ALLOC seq`` and ``FREE seq``: the cache's ALLOC and FREE.
* ``APPEND seq, rows, k_addr, k_stride, v_addr, v_stride``: token t = 0 … rows−1 is appended
  with its K row from the scratchpad words ``k_addr + t·k_stride …`` (:func:`row_words` words:
  ``kv_heads · head_dim`` elements, head 0 first, element e in lane ``e % lanes`` of word
  ``e // lanes``) and its V row from ``v_addr + t·v_stride``; an element is the low 8 (int8)
  or 16 (bf16: the bit pattern) bits of its 32-bit lane.
* The first token the cache refuses ends the instruction with that status (the chip's
  ``ChipError.KV``, ``ERROR_DETAIL`` the :class:`spec.codes.KVStatus`): the tokens before it are
  appended, it and the ones after it are not. A refused ALLOC or FREE changes nothing.

The dispatcher refuses, before anything runs, an op other than ALLOC/APPEND/FREE, an APPEND of
0 rows or of more rows than the cache holds, and rows past the scratchpad
(``hdl.cmdproc.CHECKS``); :func:`execute` raises ``ValueError`` for the first three.
"""

from collections import namedtuple

import numpy as np

from spec.codes import KVOp, KVStatus

from .kvcache import KVCacheError, PagedKVCache

__all__ = ["KVInstrResult", "row_words", "rows_from_words", "words_from_rows", "execute", "execute_rows"]

#: What one KV instruction did: ``status`` (:class:`spec.codes.KVStatus`, OK or the refusal)
#: and ``appended`` (tokens appended; 0 for ALLOC and FREE).
KVInstrResult = namedtuple("KVInstrResult", ["status", "appended"])


def row_words(cache, lanes):
    """Scratchpad words of one token's K (or V) row: ``kv_heads · head_dim / lanes``."""
    elems = cache.kv_heads * cache.head_dim
    if lanes < 1 or cache.head_dim % lanes:
        raise ValueError(f"lanes ({lanes}) must divide head_dim ({cache.head_dim})")
    return elems // lanes


def rows_from_words(cache, words):
    """Scratchpad words → rows: ``words`` [rows, row_words, lanes] (uint32 lanes) → [rows,
    kv_heads, head_dim] of the cache's dtype, each element the low 8 or 16 bits of its lane."""
    words = np.asarray(words)
    n = words.shape[0]
    bits = 8 if cache.dtype == "int8" else 16
    raw = (words.astype(np.uint64) & ((1 << bits) - 1)).astype(np.uint8 if bits == 8 else np.uint16)
    return raw.reshape(n, cache.kv_heads, cache.head_dim).view(cache.np_dtype)


def words_from_rows(cache, rows, lanes):
    """Rows → scratchpad words, as a LOAD with sign extension leaves them: [rows, kv_heads,
    head_dim] of the cache's dtype → [rows, row_words, lanes] uint32 (int8 sign-extended,
    bf16 bit patterns zero-extended)."""
    rows = np.asarray(rows)
    n = rows.shape[0]
    if cache.dtype == "int8":
        lanes32 = rows.view(np.int8).astype(np.int64).astype(np.uint32)
    else:
        lanes32 = rows.view(np.uint16).astype(np.uint32)
    return lanes32.reshape(n, row_words(cache, lanes), lanes)


def execute_rows(cache, op, seq, k=None, v=None):
    """One KV instruction on ``cache`` (a :class:`golden.PagedKVCache`, changed in place) with
    the APPEND rows given directly: ``k``, ``v`` [rows, kv_heads, head_dim]. Returns a
    :class:`KVInstrResult`."""
    if not isinstance(cache, PagedKVCache):
        raise TypeError(f"cache must be a PagedKVCache, not {type(cache).__name__}")
    op = int(op)
    if op not in (KVOp.ALLOC, KVOp.APPEND, KVOp.FREE):
        raise ValueError(f"op {op} is not ALLOC, APPEND or FREE (refused at decode)")
    try:
        if op == KVOp.ALLOC:
            cache.alloc(seq)
        elif op == KVOp.FREE:
            cache.free(seq)
    except KVCacheError as exc:
        return KVInstrResult(KVStatus(exc.code), 0)
    if op != KVOp.APPEND:
        return KVInstrResult(KVStatus.OK, 0)
    if k is None or v is None or len(k) != len(v):
        raise ValueError("APPEND needs k and v with one row per token each")
    if len(k) == 0:
        raise ValueError("APPEND of 0 rows (refused at decode)")
    if len(k) > cache.max_length:
        raise ValueError(f"APPEND of {len(k)} rows: more than the cache holds ({cache.max_length}; refused at decode)")
    for t in range(len(k)):
        try:
            cache.append(seq, np.ascontiguousarray(k[t]), np.ascontiguousarray(v[t]))
        except KVCacheError as exc:
            return KVInstrResult(KVStatus(exc.code), t)
    return KVInstrResult(KVStatus.OK, len(k))


def execute(cache, spad, *, op, seq, rows=0, k_addr=0, k_stride=0, v_addr=0, v_stride=0, lanes=None):
    """One KV instruction as the chip runs it, its rows read from the scratchpad ``spad`` (a
    :class:`golden.scratchpad.ScratchpadModel`, or a [words, lanes] uint32 array with
    ``lanes`` given). The fields are the instruction's (``spec.isa.decode`` gives them; extra
    header fields are not accepted). Returns a :class:`KVInstrResult`."""
    mem = getattr(spad, "mem", spad)
    mem = np.asarray(mem)
    lanes = mem.shape[1] if lanes is None else lanes
    if int(op) != KVOp.APPEND:
        return execute_rows(cache, op, seq)
    n = row_words(cache, lanes)
    t = np.arange(rows, dtype=np.int64)[:, None]
    w = np.arange(n, dtype=np.int64)[None, :]

    def rows_at(addr, stride):
        idx = addr + t * stride + w
        if rows and idx.max() >= mem.shape[0]:
            raise ValueError("the rows reach past the scratchpad (refused at decode)")
        return rows_from_words(cache, mem[idx])
    return execute_rows(cache, op, seq, rows_at(k_addr, k_stride), rows_at(v_addr, v_stride))
