"""Paged KV cache: the bit-exact model of the hardware KV-cache controller (docs/numerics.md,
"Paged KV cache"; hardware: ``hdl/kvcache.py`` ``KVCacheController``).

The cache stores, for every live sequence, one K row and one V row per KV head per token, in
fixed-size pages of ``page_size`` tokens taken from one shared pool of ``num_pages`` physical
pages. Each sequence has a block table (logical page → physical page); unused physical pages sit
on a free list. The rules, which the hardware reproduces exactly (also which physical page is
taken):

* **Sequence ids** are integers ``0..2**16-1`` (:data:`SEQ_ID_BITS`), chosen by the caller. At
  most ``max_seqs`` sequences are live at once; ``ALLOC`` of one more is ``TOO_MANY_SEQS``.
* **Free list**: a LIFO stack. After reset, pages are taken in the order 0, 1, 2, …
  ``FREE`` pushes the sequence's pages in block-table order (logical page 0 first), so the
  next page taken is the freed sequence's *last* page.
* A page is taken when an ``APPEND`` starts a new page (``length % page_size == 0``; the first
  append takes the first page) and returned only by ``FREE``.
* ``READ_K``/``READ_V(seq, head, start, count)`` return rows ``start .. start+count-1`` of one
  head in position order; ``count == 0`` is allowed (no rows) when ``start <= length``.
* Every error leaves the state unchanged. Error precedence (first match wins):
  ``ALLOC``: DUPLICATE_SEQ, TOO_MANY_SEQS; ``APPEND``: UNKNOWN_SEQ, OUT_OF_PAGES;
  ``READ_*``: UNKNOWN_SEQ, HEAD_OUT_OF_RANGE, READ_PAST_LENGTH; ``FREE``/``STATUS``:
  UNKNOWN_SEQ.
* Freed pages keep their old contents (like the hardware's memory), but no read can reach
  them: a read is bounded by the reading sequence's own length and block table.

Two APIs over the same state:

* the Python API (:meth:`PagedKVCache.alloc`, :meth:`~PagedKVCache.append`,
  :meth:`~PagedKVCache.read_k`, …) raises a :class:`KVCacheError` subclass carrying the
  hardware status code, or ``TypeError``/``ValueError`` for malformed arguments;
* :meth:`PagedKVCache.execute` runs one hardware command and returns a :class:`KVResponse`
  (status code + fields) exactly as the controller answers it, never raising on a cache error.
"""

from collections import namedtuple
from enum import IntEnum

import ml_dtypes
import numpy as np

__all__ = [
    "SEQ_ID_BITS", "KVOp", "KVStatus", "KVStatusInfo", "KVResponse", "KVCommand", "KVCacheError",
    "OutOfPagesError", "UnknownSequenceError", "DuplicateSequenceError", "ReadPastLengthError",
    "HeadOutOfRangeError", "TooManySequencesError", "PagedKVCache",
]

#: Width of a sequence id in the hardware command; ids are 0 .. 2**SEQ_ID_BITS - 1.
SEQ_ID_BITS = 16


class KVOp(IntEnum):
    """Command opcodes (the ``op`` field of the hardware command, 3 bits)."""
    ALLOC = 0
    APPEND = 1
    READ_K = 2
    READ_V = 3
    FREE = 4
    STATUS = 5


class KVStatus(IntEnum):
    """Response status codes (the ``status`` field of the hardware response, 4 bits)."""
    OK = 0
    OUT_OF_PAGES = 1
    UNKNOWN_SEQ = 2
    DUPLICATE_SEQ = 3
    READ_PAST_LENGTH = 4
    HEAD_OUT_OF_RANGE = 5
    TOO_MANY_SEQS = 6
    BAD_OPCODE = 7


#: ``status(seq)``: tokens stored, pages the sequence holds, pages on the free list.
KVStatusInfo = namedtuple("KVStatusInfo", ["length", "pages", "free_pages"])

#: One hardware response. On OK the fields describe the addressed sequence after the command
#: (after FREE: length 0, pages 0); on an error every field but ``status`` and ``op`` is 0.
KVResponse = namedtuple("KVResponse", ["status", "op", "length", "pages", "free_pages"])

#: One hardware command: ``execute(*command)`` runs it on the model, ``sim.run_kvcache`` on the
#: RTL. ``k``/``v`` ([kv_heads, head_dim]) only for APPEND.
KVCommand = namedtuple("KVCommand", ["op", "seq", "head", "start", "count", "k", "v"],
                       defaults=(0, 0, 0, None, None))


class KVCacheError(ValueError):
    """A command the cache refuses; ``code`` is the hardware :class:`KVStatus`."""
    code = None


class OutOfPagesError(KVCacheError):
    code = KVStatus.OUT_OF_PAGES


class UnknownSequenceError(KVCacheError):
    code = KVStatus.UNKNOWN_SEQ


class DuplicateSequenceError(KVCacheError):
    code = KVStatus.DUPLICATE_SEQ


class ReadPastLengthError(KVCacheError):
    code = KVStatus.READ_PAST_LENGTH


class HeadOutOfRangeError(KVCacheError):
    code = KVStatus.HEAD_OUT_OF_RANGE


class TooManySequencesError(KVCacheError):
    code = KVStatus.TOO_MANY_SEQS


_DTYPES = {"int8": np.dtype(np.int8), "bf16": np.dtype(ml_dtypes.bfloat16)}


def _check_int(name, value, lo, hi):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int, not {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, not {value}")
    return value


def _is_pow2(x):
    return x >= 1 and (x & (x - 1)) == 0


class PagedKVCache:
    """A paged KV cache shared by up to ``max_seqs`` sequences.

    Parameters
    ----------
    page_size : int
        Tokens per page; a power of two, 1..256.
    num_pages : int
        Physical pages in the pool, 2..65536.
    kv_heads : int
        KV heads per token, 1..64.
    head_dim : int
        Elements per head row, 1..1024.
    max_seqs : int
        Sequences live at once, 1..1024.
    dtype : str
        ``"int8"`` (arrays of ``np.int8``) or ``"bf16"`` (arrays of ``ml_dtypes.bfloat16``).

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range; the message names it.
    """

    def __init__(self, *, page_size, num_pages, kv_heads, head_dim, max_seqs, dtype):
        self._page_size = _check_int("page_size", page_size, 1, 256)
        if not _is_pow2(self._page_size):
            raise ValueError(f"page_size must be a power of two, not {page_size}")
        self._num_pages = _check_int("num_pages", num_pages, 2, 65536)
        self._kv_heads = _check_int("kv_heads", kv_heads, 1, 64)
        self._head_dim = _check_int("head_dim", head_dim, 1, 1024)
        self._max_seqs = _check_int("max_seqs", max_seqs, 1, 1024)
        if isinstance(dtype, str) and dtype in _DTYPES:
            self._dtype_name = dtype
        else:
            try:
                dt = np.dtype(dtype)
            except TypeError:
                dt = None
            names = [k for k, v in _DTYPES.items() if v == dt]
            if not names:
                raise ValueError(f"dtype must be 'int8' or 'bf16', not {dtype!r}")
            self._dtype_name = names[0]
        self._dtype = _DTYPES[self._dtype_name]
        shape = (self._num_pages, self._page_size, self._kv_heads, self._head_dim)
        self._k = np.zeros(shape, self._dtype)
        self._v = np.zeros(shape, self._dtype)
        # top of the stack is the end of the list: pages are taken 0, 1, 2, ... after reset
        self._free = list(range(self._num_pages - 1, -1, -1))
        self._tables = {}   # seq id → list of physical pages (the block table)
        self._lengths = {}  # seq id → tokens stored

    @classmethod
    def from_config(cls, config):
        """The cache an :class:`hdl.config.AccelConfig` (or a preset name) describes."""
        from hdl.config import get_config
        c = get_config(config)
        return cls(page_size=c.kv_page_size, num_pages=c.kv_pages, kv_heads=c.kv_heads,
                   head_dim=c.kv_head_dim, max_seqs=c.kv_max_seqs, dtype=c.kv_dtype)

    # -- parameters -------------------------------------------------------------------------
    @property
    def page_size(self):
        return self._page_size

    @property
    def num_pages(self):
        return self._num_pages

    @property
    def kv_heads(self):
        return self._kv_heads

    @property
    def head_dim(self):
        return self._head_dim

    @property
    def max_seqs(self):
        return self._max_seqs

    @property
    def dtype(self):
        """``"int8"`` or ``"bf16"``."""
        return self._dtype_name

    @property
    def np_dtype(self):
        """The numpy dtype of K/V rows: ``np.int8`` or ``ml_dtypes.bfloat16``."""
        return self._dtype

    @property
    def max_length(self):
        """Most tokens one sequence can hold (all pages)."""
        return self._num_pages * self._page_size

    # -- inspection -------------------------------------------------------------------------
    @property
    def free_pages(self):
        return len(self._free)

    @property
    def sequences(self):
        """Live sequence ids, sorted."""
        return sorted(self._tables)

    def free_list(self):
        """Free physical pages in the order they will be taken (next first)."""
        return self._free[::-1]

    def block_table(self, seq):
        """Physical pages of ``seq`` in logical order (a copy)."""
        return list(self._tables[self._known(seq)])

    def physical_page(self, seq, position):
        """(physical page, row within it) that holds token ``position`` of ``seq``."""
        seq = self._known(seq)
        position = _check_int("position", position, 0, self.max_length)
        if position >= self._lengths[seq]:
            raise ReadPastLengthError(
                f"position {position} is past the length {self._lengths[seq]} of sequence {seq}")
        return self._tables[seq][position // self._page_size], position % self._page_size

    def physical_rows(self, kind, page):
        """Raw contents of physical ``page`` (``kind`` ``"k"`` or ``"v"``), including stale rows
        of freed pages: [page_size, kv_heads, head_dim] (a copy)."""
        if kind not in ("k", "v"):
            raise ValueError(f"kind must be 'k' or 'v', not {kind!r}")
        page = _check_int("page", page, 0, self._num_pages - 1)
        return (self._k if kind == "k" else self._v)[page].copy()

    def snapshot(self):
        """A deep copy of the whole state, comparable with ``==`` via :meth:`same_state`."""
        return (self._k.tobytes(), self._v.tobytes(), tuple(self._free),
                tuple(sorted((s, tuple(t)) for s, t in self._tables.items())),
                tuple(sorted(self._lengths.items())))

    # -- the Python API ---------------------------------------------------------------------
    def status(self, seq):
        """(length, pages held, free pages) of ``seq``; raises UnknownSequenceError."""
        seq = self._known(seq)
        return KVStatusInfo(self._lengths[seq], len(self._tables[seq]), len(self._free))

    def alloc(self, seq):
        """Start sequence ``seq`` with length 0 and no pages."""
        seq = self._seq_id(seq)
        if seq in self._tables:
            raise DuplicateSequenceError(f"sequence {seq} is already allocated")
        if len(self._tables) >= self._max_seqs:
            raise TooManySequencesError(
                f"cannot allocate sequence {seq}: all {self._max_seqs} sequence slots are in use")
        self._tables[seq] = []
        self._lengths[seq] = 0

    def append(self, seq, k, v):
        """Store one token: ``k`` and ``v`` are [kv_heads, head_dim] arrays of the cache dtype."""
        seq = self._known(seq)
        k = self._check_rows("k", k)
        v = self._check_rows("v", v)
        length = self._lengths[seq]
        table = self._tables[seq]
        if length % self._page_size == 0 and not self._free:
            raise OutOfPagesError(
                f"cannot append token {length} to sequence {seq}: no free page "
                f"({self._num_pages} pages all in use)")
        if length % self._page_size == 0:
            table.append(self._free.pop())
        page, row = table[length // self._page_size], length % self._page_size
        self._k[page, row] = k
        self._v[page, row] = v
        self._lengths[seq] = length + 1

    def read_k(self, seq, head, start, count):
        """K rows ``start .. start+count-1`` of ``head``: [count, head_dim] in position order."""
        return self._read(self._k, seq, head, start, count)

    def read_v(self, seq, head, start, count):
        """V rows ``start .. start+count-1`` of ``head``: [count, head_dim] in position order."""
        return self._read(self._v, seq, head, start, count)

    def read_k_all(self, seq, head):
        """Every K row of ``head`` of ``seq``: [length, head_dim]."""
        return self.read_k(seq, head, 0, self.status(seq).length)

    def read_v_all(self, seq, head):
        """Every V row of ``head`` of ``seq``: [length, head_dim]."""
        return self.read_v(seq, head, 0, self.status(seq).length)

    def free(self, seq):
        """End ``seq``: its pages go back on the free list (block-table order, last on top)."""
        seq = self._known(seq)
        self._free.extend(self._tables.pop(seq))
        del self._lengths[seq]

    # -- the hardware command interface -----------------------------------------------------
    def execute(self, op, seq, head=0, start=0, count=0, k=None, v=None):
        """Run one hardware command; return ``(KVResponse, rows)``.

        ``rows`` is the [count, head_dim] array a successful READ_K/READ_V streams, else None.
        Cache errors become a response status (state unchanged); only malformed fields
        (wrong types, values that do not fit the command's fields, K/V of the wrong
        dtype/shape for APPEND) raise TypeError/ValueError.
        """
        op = _check_int("op", op, 0, 7)
        seq = self._seq_id(seq)
        head = _check_int("head", head, 0, 255)
        start = _check_int("start", start, 0, self.max_length)
        count = _check_int("count", count, 0, self.max_length)
        rows = None
        try:
            if op == KVOp.ALLOC:
                self.alloc(seq)
            elif op == KVOp.APPEND:
                if k is None or v is None:
                    raise TypeError("APPEND needs k and v")
                self.append(seq, k, v)
            elif op in (KVOp.READ_K, KVOp.READ_V):
                rows = (self.read_k if op == KVOp.READ_K else self.read_v)(seq, head, start, count)
            elif op == KVOp.FREE:
                self.free(seq)
            elif op == KVOp.STATUS:
                self.status(seq)
            else:
                return KVResponse(int(KVStatus.BAD_OPCODE), op, 0, 0, 0), None
        except KVCacheError as exc:
            return KVResponse(int(exc.code), op, 0, 0, 0), None
        if op == KVOp.FREE:
            return KVResponse(int(KVStatus.OK), op, 0, 0, len(self._free)), None
        length, pages, free = self.status(seq)
        return KVResponse(int(KVStatus.OK), op, length, pages, free), rows

    # -- helpers ----------------------------------------------------------------------------
    def _seq_id(self, seq):
        return _check_int("seq", seq, 0, (1 << SEQ_ID_BITS) - 1)

    def _known(self, seq):
        seq = self._seq_id(seq)
        if seq not in self._tables:
            raise UnknownSequenceError(f"sequence {seq} is not allocated")
        return seq

    def _check_rows(self, name, rows):
        if not isinstance(rows, np.ndarray):
            raise TypeError(f"{name} must be a numpy array of {self._dtype_name}, "
                            f"not {type(rows).__name__}")
        if rows.dtype != self._dtype:
            raise TypeError(f"{name} must have dtype {self._dtype_name} ({self._dtype}), "
                            f"not {rows.dtype}")
        expected = (self._kv_heads, self._head_dim)
        if rows.shape != expected:
            raise ValueError(f"{name} must have shape [kv_heads, head_dim] = {expected}, "
                             f"not {rows.shape}")
        return rows

    def _read(self, store, seq, head, start, count):
        seq = self._known(seq)
        head = _check_int("head", head, 0, (1 << 16) - 1)
        start = _check_int("start", start, 0, 1 << 32)
        count = _check_int("count", count, 0, 1 << 32)
        if head >= self._kv_heads:
            raise HeadOutOfRangeError(f"head {head} is out of range 0..{self._kv_heads - 1}")
        length = self._lengths[seq]
        if start + count > length:
            raise ReadPastLengthError(
                f"read of rows {start}..{start + count - 1} is past the length {length} "
                f"of sequence {seq}")
        pos = np.arange(start, start + count)
        pages = np.asarray(self._tables[seq], dtype=np.int64)[pos // self._page_size]
        return store[pages, pos % self._page_size, head].copy()
