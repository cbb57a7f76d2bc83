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
  head; ``count == 0`` is allowed (no rows) when ``start <= length``. The hardware streams them
  as beats of ``beat_elems`` elements (``beats_per_row = head_dim / beat_elems`` per row) in the
  order the command's ``block`` and ``group`` fields choose (:func:`read_order`): for each block
  of ``block`` positions (0: all ``count``; the last block may be shorter), for each group of
  ``group`` beats of a row (0: the whole row), for each position of the block, the group's
  beats. ``block = group = 0`` is position order, whole rows. ``group`` must divide
  ``beats_per_row`` (else BAD_SHAPE).
* Every error leaves the state unchanged. Error precedence (first match wins):
  ``ALLOC``: DUPLICATE_SEQ, TOO_MANY_SEQS; ``APPEND``: UNKNOWN_SEQ, OUT_OF_PAGES;
  ``READ_*``: UNKNOWN_SEQ, HEAD_OUT_OF_RANGE, BAD_SHAPE, READ_PAST_LENGTH; ``FREE``/``STATUS``:
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

import ml_dtypes
import numpy as np

from spec.codes import KVOp, KVStatus  # the opcodes and status codes, shared with the hardware

__all__ = [
    "SEQ_ID_BITS", "KVOp", "KVStatus", "KVStatusInfo", "KVResponse", "KVCommand", "KVCacheError",
    "OutOfPagesError", "UnknownSequenceError", "DuplicateSequenceError", "ReadPastLengthError",
    "HeadOutOfRangeError", "TooManySequencesError", "BadShapeError", "PagedKVCache", "read_order",
    "group_field_bits",
]

#: Width of a sequence id in the hardware command; ids are 0 .. 2**SEQ_ID_BITS - 1.
SEQ_ID_BITS = 16


#: ``status(seq)``: tokens stored, pages the sequence holds, pages on the free list.
KVStatusInfo = namedtuple("KVStatusInfo", ["length", "pages", "free_pages"])

#: One hardware response. On OK the fields describe the addressed sequence after the command
#: (after FREE: length 0, pages 0); on an error every field but ``status`` and ``op`` is 0.
KVResponse = namedtuple("KVResponse", ["status", "op", "length", "pages", "free_pages"])

#: One hardware command: ``execute(*command)`` runs it on the model, ``sim.run_kvcache`` on the
#: RTL. ``k``/``v`` ([kv_heads, head_dim]) only for APPEND; ``block``/``group`` (the READ beat
#: order, :func:`read_order`; 0 and 0 give position order, whole rows) only for READ_K/READ_V.
KVCommand = namedtuple("KVCommand", ["op", "seq", "head", "start", "count", "k", "v", "block",
                                     "group"],
                       defaults=(0, 0, 0, None, None, 0, 0))


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


class BadShapeError(KVCacheError):
    code = KVStatus.BAD_SHAPE


def group_field_bits(beats_per_row):
    """Width of the READ command's ``group`` field: enough for ``beats_per_row``."""
    return int(beats_per_row).bit_length()


def read_order(start, count, block, group, beats_per_row):
    """The beats of a READ of rows ``start .. start+count-1``, in stream order: an int array
    [count · beats_per_row, 2] of (position, beat within the row).

    ``block`` positions per block (0: all ``count`` positions in one block; the last block may
    be shorter) and ``group`` beats per group (0: ``beats_per_row``, the whole row)::

        for each block [b0, b0 + n) of [start, start + count):
            for g in range(beats_per_row // group):
                for pos in range(b0, b0 + n):
                    for j in range(group):
                        beat (pos, g · group + j)

    ``group`` must divide ``beats_per_row`` (ValueError otherwise). Feeding the matmul weight
    loader with ``beat_elems = array_cols`` (C) on an R×C array, C | R: Q·Kᵀ (W = Kᵀ, transposed
    weights) is ``block = C, group = R / C``; P·V (W = V, rows) is ``block = 0, group = 1``.
    """
    start, count, block, group, bpr = (int(x) for x in (start, count, block, group,
                                                          beats_per_row))
    g = bpr if group == 0 else group
    if g < 1 or bpr % g:
        raise ValueError(f"group {group} does not divide beats_per_row {bpr}")
    if block < 0 or count < 0:
        raise ValueError("block and count must be ≥ 0")
    b = count if block == 0 else block
    out = []
    for b0 in range(start, start + count, max(b, 1)):
        pos = np.arange(b0, min(b0 + b, start + count))
        for g0 in range(0, bpr, g):
            beats = np.arange(g0, g0 + g)
            out.append(np.stack(np.broadcast_arrays(pos[:, None], beats[None, :]), -1)
                       .reshape(-1, 2))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


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
    beat_elems : int, optional
        Elements per read beat (the hardware's ``kv_beat_elems``), dividing ``head_dim``;
        default ``head_dim`` (one beat per row). Sets the units of a READ's ``group``.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range; the message names it.
    """

    def __init__(self, *, page_size, num_pages, kv_heads, head_dim, max_seqs, dtype,
                 beat_elems=None):
        self._page_size = _check_int("page_size", page_size, 1, 256)
        if not _is_pow2(self._page_size):
            raise ValueError(f"page_size must be a power of two, not {page_size}")
        self._num_pages = _check_int("num_pages", num_pages, 2, 65536)
        self._kv_heads = _check_int("kv_heads", kv_heads, 1, 64)
        self._head_dim = _check_int("head_dim", head_dim, 1, 1024)
        self._max_seqs = _check_int("max_seqs", max_seqs, 1, 1024)
        self._beat_elems = (self._head_dim if beat_elems is None
                            else _check_int("beat_elems", beat_elems, 1, self._head_dim))
        if self._head_dim % self._beat_elems:
            raise ValueError(f"beat_elems ({beat_elems}) must divide head_dim ({head_dim})")
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
    def from_config(cls, kv):
        """The cache a KV-cache configuration describes: any object with the attributes
        ``page_size``, ``pages``, ``heads``, ``head_dim``, ``max_seqs``, ``dtype`` and
        ``beat_elems`` (the hardware's ``hdl.config.KVCacheConfig``, ``config.kvcache``)."""
        return cls(page_size=kv.page_size, num_pages=kv.pages, kv_heads=kv.heads,
                   head_dim=kv.head_dim, max_seqs=kv.max_seqs, dtype=kv.dtype,
                   beat_elems=kv.beat_elems)

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
    def beat_elems(self):
        return self._beat_elems

    @property
    def beats_per_row(self):
        return self._head_dim // self._beat_elems

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

    def read_k_beats(self, seq, head, start, count, block=0, group=0):
        """The beats a READ_K with these fields streams: [count · beats_per_row, beat_elems]
        in :func:`read_order`. Raises like :meth:`read_k`, and BadShapeError (checked after
        the head, before the length) if ``group`` does not divide ``beats_per_row``."""
        return self._read_beats(self._k, seq, head, start, count, block, group)

    def read_v_beats(self, seq, head, start, count, block=0, group=0):
        """The beats a READ_V with these fields streams (see :meth:`read_k_beats`)."""
        return self._read_beats(self._v, seq, head, start, count, block, group)

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
    def execute(self, op, seq, head=0, start=0, count=0, k=None, v=None, block=0, group=0):
        """Run one hardware command; return ``(KVResponse, rows)``.

        ``rows`` is the [count, head_dim] array a successful READ_K/READ_V returns (in position
        order; the hardware streams its beats in :func:`read_order` of ``block``/``group``:
        :meth:`read_k_beats`), else None.
        Cache errors become a response status (state unchanged); only malformed fields
        (wrong types, values that do not fit the command's fields, K/V of the wrong
        dtype/shape for APPEND) raise TypeError/ValueError.
        """
        op = _check_int("op", op, 0, 7)
        seq = self._seq_id(seq)
        head = _check_int("head", head, 0, 255)
        start = _check_int("start", start, 0, self.max_length)
        count = _check_int("count", count, 0, self.max_length)
        block = _check_int("block", block, 0, self.max_length)
        group = _check_int("group", group, 0, (1 << group_field_bits(self.beats_per_row)) - 1)
        rows = None
        try:
            if op == KVOp.ALLOC:
                self.alloc(seq)
            elif op == KVOp.APPEND:
                if k is None or v is None:
                    raise TypeError("APPEND needs k and v")
                self.append(seq, k, v)
            elif op in (KVOp.READ_K, KVOp.READ_V):
                rows = self._read(self._k if op == KVOp.READ_K else self._v, seq, head, start,
                                  count, group)
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

    def _read(self, store, seq, head, start, count, group=0):
        seq = self._known(seq)
        head = _check_int("head", head, 0, (1 << 16) - 1)
        start = _check_int("start", start, 0, 1 << 32)
        count = _check_int("count", count, 0, 1 << 32)
        group = _check_int("group", group, 0, 1 << 32)
        if head >= self._kv_heads:
            raise HeadOutOfRangeError(f"head {head} is out of range 0..{self._kv_heads - 1}")
        if group != 0 and self.beats_per_row % group:
            raise BadShapeError(f"group {group} does not divide beats_per_row {self.beats_per_row}")
        length = self._lengths[seq]
        if start + count > length:
            raise ReadPastLengthError(
                f"read of rows {start}..{start + count - 1} is past the length {length} "
                f"of sequence {seq}")
        pos = np.arange(start, start + count)
        pages = np.asarray(self._tables[seq], dtype=np.int64)[pos // self._page_size]
        return store[pages, pos % self._page_size, head].copy()

    def _read_beats(self, store, seq, head, start, count, block, group):
        block = _check_int("block", block, 0, 1 << 32)
        rows = self._read(store, seq, head, start, count, group)
        order = read_order(start, count, block, group, self.beats_per_row)
        beats = rows.reshape(count, self.beats_per_row, self._beat_elems)
        return beats[order[:, 0] - start, order[:, 1]]
