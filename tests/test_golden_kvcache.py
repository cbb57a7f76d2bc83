"""golden.PagedKVCache: semantics against a plain dict-of-lists model, the free-list order,
isolation of sequences (also across freed and reused pages), and errors that change nothing."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from golden.kvcache import (
    BadShapeError,
    DuplicateSequenceError,
    HeadOutOfRangeError,
    KVOp,
    KVStatus,
    OutOfPagesError,
    PagedKVCache,
    ReadPastLengthError,
    TooManySequencesError,
    UnknownSequenceError,
    read_order,
)

SMALL = dict(page_size=4, num_pages=6, kv_heads=2, head_dim=3, max_seqs=3, dtype="int8")


def token(cache, value):
    """K and V rows of one token whose every element encodes ``value`` (K: +, V: −)."""
    k = np.full((cache.kv_heads, cache.head_dim), value, cache.np_dtype)
    k += np.arange(cache.head_dim, dtype=cache.np_dtype)[None, :] % 2
    return k, (-k).astype(cache.np_dtype)


class CacheVersusDictModel(RuleBasedStateMachine):
    """Random alloc/append/read/free through exhaustion; the reference is a dict of lists of
    rows plus a count of pages, which knows nothing about pages or block tables."""

    def __init__(self):
        super().__init__()
        self.cache = PagedKVCache(page_size=2, num_pages=5, kv_heads=2, head_dim=2, max_seqs=3,
                                  dtype="int8")
        self.model = {}  # seq → list of (k, v)
        self.counter = 0

    def pages_needed(self, length):
        return -(-length // self.cache.page_size)

    def expect_unchanged(self, exc_type, fn, *args):
        before = self.cache.snapshot()
        with pytest.raises(exc_type):
            fn(*args)
        assert self.cache.snapshot() == before

    @rule(seq=st.integers(0, 6))
    def alloc(self, seq):
        if seq in self.model:
            self.expect_unchanged(DuplicateSequenceError, self.cache.alloc, seq)
        elif len(self.model) == self.cache.max_seqs:
            self.expect_unchanged(TooManySequencesError, self.cache.alloc, seq)
        else:
            self.cache.alloc(seq)
            self.model[seq] = []

    @rule(seq=st.integers(0, 6))
    def append(self, seq):
        self.counter = (self.counter + 1) % 100
        k, v = token(self.cache, self.counter)
        if seq not in self.model:
            self.expect_unchanged(UnknownSequenceError, self.cache.append, seq, k, v)
            return
        used = sum(self.pages_needed(len(rows)) for rows in self.model.values())
        length = len(self.model[seq])
        if length % self.cache.page_size == 0 and used == self.cache.num_pages:
            self.expect_unchanged(OutOfPagesError, self.cache.append, seq, k, v)
        else:
            self.cache.append(seq, k, v)
            self.model[seq].append((k, v))

    @rule(seq=st.integers(0, 6), head=st.integers(0, 2), start=st.integers(0, 12),
          count=st.integers(0, 12), kind=st.sampled_from("kv"))
    def read(self, seq, head, start, count, kind):
        fn = self.cache.read_k if kind == "k" else self.cache.read_v
        if seq not in self.model:
            self.expect_unchanged(UnknownSequenceError, fn, seq, head, start, count)
        elif head >= self.cache.kv_heads:
            self.expect_unchanged(HeadOutOfRangeError, fn, seq, head, start, count)
        elif start + count > len(self.model[seq]):
            self.expect_unchanged(ReadPastLengthError, fn, seq, head, start, count)
        else:
            got = fn(seq, head, start, count)
            idx = 0 if kind == "k" else 1
            want = np.array([row[idx][head] for row in self.model[seq][start:start + count]],
                            dtype=np.int8).reshape(count, self.cache.head_dim)
            np.testing.assert_array_equal(got, want)

    @rule(seq=st.integers(0, 6))
    def free(self, seq):
        if seq not in self.model:
            self.expect_unchanged(UnknownSequenceError, self.cache.free, seq)
        else:
            self.cache.free(seq)
            del self.model[seq]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def fill_to_exhaustion(self, data):
        seq = data.draw(st.sampled_from(sorted(self.model)))
        while True:
            k, v = token(self.cache, 100)
            try:
                self.cache.append(seq, k, v)
            except OutOfPagesError:
                break
            self.model[seq].append((k, v))
        assert self.cache.free_pages == 0

    @invariant()
    def status_matches_model(self):
        used = 0
        for seq, rows in self.model.items():
            pages = self.pages_needed(len(rows))
            used += pages
            assert self.cache.status(seq)[:2] == (len(rows), pages)
            assert len(self.cache.block_table(seq)) == pages
        assert self.cache.free_pages == self.cache.num_pages - used
        assert self.cache.sequences == sorted(self.model)

    @invariant()
    def every_physical_page_is_owned_once(self):
        owned = [p for s in self.model for p in self.cache.block_table(s)]
        assert sorted(owned + self.cache.free_list()) == list(range(self.cache.num_pages))


TestCacheVersusDictModel = CacheVersusDictModel.TestCase
TestCacheVersusDictModel.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])


def test_free_list_is_a_lifo_stack_starting_at_page_zero():
    c = PagedKVCache(**SMALL)
    assert c.free_list() == [0, 1, 2, 3, 4, 5]
    c.alloc(1)
    c.alloc(2)
    for i in range(9):  # seq 1 takes pages 0, 1, 2 (first append takes the first page)
        c.append(1, *token(c, i))
    c.append(2, *token(c, 9))
    assert c.block_table(1) == [0, 1, 2] and c.block_table(2) == [3]
    c.free(1)  # pushed in block-table order: 0, 1, 2 → 2 is taken next
    assert c.free_list() == [2, 1, 0, 4, 5]
    for i in range(5):
        c.append(2, *token(c, i))
    assert c.block_table(2) == [3, 2]


def test_a_page_is_taken_exactly_when_an_append_starts_a_page():
    c = PagedKVCache(**SMALL)
    c.alloc(0)
    assert c.status(0) == (0, 0, 6)
    for n in range(1, 10):
        c.append(0, *token(c, n))
        assert c.status(0) == (n, -(-n // 4), 6 - (-(-n // 4)))


def test_reads_return_rows_in_position_order_across_pages():
    c = PagedKVCache(**SMALL)
    c.alloc(5)
    c.alloc(6)
    for i in range(11):  # interleave so the pages of seq 5 are not contiguous
        c.append(5, *token(c, i))
        c.append(6, *token(c, 50 + i))
    assert c.block_table(5) == [0, 2, 4]
    got = c.read_k(5, 1, 2, 7)
    assert [int(r[0]) for r in got] == list(range(2, 9))
    assert [int(r[0]) for r in c.read_v_all(6, 0)] == [-(50 + i) - 0 for i in range(11)]
    assert c.read_k(5, 0, 11, 0).shape == (0, 3)


def test_a_sequence_never_reads_stale_rows_of_a_freed_and_reused_page():
    c = PagedKVCache(**SMALL)
    sentinel = 99
    c.alloc(1)
    for _ in range(8):
        c.append(1, *token(c, sentinel))
    c.free(1)
    c.alloc(2)
    c.append(2, *token(c, 7))  # reuses page 1 (top of the stack), rows 1..3 still hold 99
    assert c.block_table(2) == [1]
    assert c.physical_rows("k", 1)[1, 0, 0] == sentinel  # the stale row is there ...
    with pytest.raises(ReadPastLengthError, match="past the length 1"):
        c.read_k(2, 0, 0, 2)  # ... but unreachable
    assert np.all(c.read_k_all(2, 0) == token(c, 7)[0][0])
    with pytest.raises(UnknownSequenceError):
        c.read_k(1, 0, 0, 1)


def test_reads_of_one_sequence_never_return_another_sequences_rows():
    rng = np.random.default_rng(1234)
    c = PagedKVCache(page_size=2, num_pages=12, kv_heads=2, head_dim=4, max_seqs=4, dtype="int8")
    tag = {}
    for round_ in range(40):
        live = c.sequences
        seq = int(rng.integers(0, 6))
        if seq not in live and len(live) < 4:
            c.alloc(seq)
            tag[seq] = seq + 1 + 10 * (round_ % 10)  # a new tag per incarnation
        elif seq in live and rng.random() < 0.2:
            c.free(seq)
        elif seq in live:
            try:
                c.append(seq, np.full((2, 4), tag[seq], np.int8), np.full((2, 4), -tag[seq], np.int8))
            except OutOfPagesError:
                pass
        for s in c.sequences:
            for h in range(2):
                assert np.all(c.read_k_all(s, h) == tag[s])
                assert np.all(c.read_v_all(s, h) == -tag[s])


def test_bf16_rows_are_stored_bit_exactly():
    c = PagedKVCache(**{**SMALL, "dtype": "bf16"})
    bits = np.array([[0x7FC1, 0xFF80, 0x0001], [0x8000, 0x3F80, 0xFFFF]], np.uint16)
    c.alloc(0)
    c.append(0, bits.view(ml_dtypes.bfloat16), (bits ^ 0x8000).view(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(c.read_k(0, 0, 0, 1).view(np.uint16), bits[:1])
    np.testing.assert_array_equal(c.read_v(0, 1, 0, 1).view(np.uint16), bits[1:] ^ 0x8000)


@pytest.mark.parametrize("bad, exc, message", [
    (lambda c: c.alloc(0), DuplicateSequenceError, "sequence 0 is already allocated"),
    (lambda c: c.append(3, *token(c, 1)), UnknownSequenceError, "sequence 3 is not allocated"),
    (lambda c: c.read_k(0, 2, 0, 1), HeadOutOfRangeError, "head 2 is out of range 0..1"),
    (lambda c: c.read_v(0, 0, 3, 3), ReadPastLengthError, "past the length 5"),
    (lambda c: c.read_v(0, 0, 6, 0), ReadPastLengthError, "past the length 5"),
    (lambda c: c.free(9), UnknownSequenceError, "sequence 9"),
    (lambda c: c.status(9), UnknownSequenceError, "sequence 9"),
    (lambda c: c.append(0, np.zeros((2, 3), np.int16), token(c, 1)[1]), TypeError, "k must have dtype int8"),
    (lambda c: c.append(0, token(c, 1)[0], np.zeros((3, 2), np.int8)), ValueError, r"v must have shape"),
    (lambda c: c.append(0, [[1, 2, 3]] * 2, token(c, 1)[1]), TypeError, "k must be a numpy array"),
    (lambda c: c.alloc(-1), ValueError, r"seq must be in 0..65535"),
    (lambda c: c.alloc(1 << 16), ValueError, r"seq must be in 0..65535"),
    (lambda c: c.alloc("0"), TypeError, "seq must be an int"),
    (lambda c: c.read_k(0, 0, -1, 1), ValueError, "start must be in"),
])
def test_bad_calls_raise_naming_the_problem_and_change_nothing(bad, exc, message):
    c = PagedKVCache(**SMALL)
    c.alloc(0)
    for i in range(5):
        c.append(0, *token(c, i))
    before = c.snapshot()
    with pytest.raises(exc, match=message):
        bad(c)
    assert c.snapshot() == before


def test_out_of_pages_and_too_many_sequences_change_nothing():
    c = PagedKVCache(**SMALL)
    for s in range(3):
        c.alloc(s)
    with pytest.raises(TooManySequencesError, match="all 3 sequence slots"):
        c.alloc(10)
    for i in range(24):
        c.append(i % 2, *token(c, i))
    assert c.free_pages == 0
    before = c.snapshot()
    with pytest.raises(OutOfPagesError, match="no free page"):
        c.append(2, *token(c, 1))
    with pytest.raises(OutOfPagesError):
        c.append(0, *token(c, 1))
    assert c.snapshot() == before


@pytest.mark.parametrize("change, message", [
    (dict(page_size=3), "page_size must be a power of two"),
    (dict(page_size=512), "page_size must be in 1..256"),
    (dict(num_pages=1), "num_pages must be in 2..65536"),
    (dict(kv_heads=0), "kv_heads must be in 1..64"),
    (dict(head_dim=2.0), "head_dim must be an int"),
    (dict(max_seqs=2000), "max_seqs must be in 1..1024"),
    (dict(dtype="fp8"), "dtype must be 'int8' or 'bf16'"),
])
def test_bad_parameters_raise_naming_the_parameter(change, message):
    with pytest.raises((TypeError, ValueError), match=message):
        PagedKVCache(**{**SMALL, **change})


def test_numpy_dtypes_are_accepted_as_the_element_type():
    assert PagedKVCache(**{**SMALL, "dtype": np.int8}).dtype == "int8"
    assert PagedKVCache(**{**SMALL, "dtype": ml_dtypes.bfloat16}).dtype == "bf16"


def test_from_config_reads_the_kv_parameters_of_a_hardware_config():
    from hdl.config import get_config
    c = PagedKVCache.from_config(get_config("tiny").kvcache)
    assert (c.page_size, c.num_pages, c.kv_heads, c.head_dim, c.max_seqs, c.dtype) == (
        4, 16, 2, 16, 4, "int8")


def test_execute_answers_hardware_codes_and_fields():
    c = PagedKVCache(**SMALL)
    k, v = token(c, 3)
    ok = int(KVStatus.OK)
    assert c.execute(KVOp.ALLOC, 4)[0] == (ok, KVOp.ALLOC, 0, 0, 6)
    assert c.execute(KVOp.ALLOC, 4)[0] == (KVStatus.DUPLICATE_SEQ, KVOp.ALLOC, 0, 0, 0)
    assert c.execute(KVOp.APPEND, 4, k=k, v=v)[0] == (ok, KVOp.APPEND, 1, 1, 5)
    resp, rows = c.execute(KVOp.READ_V, 4, head=1, start=0, count=1)
    assert resp == (ok, KVOp.READ_V, 1, 1, 5) and np.array_equal(rows, v[1:])
    assert c.execute(KVOp.READ_K, 4, head=2, count=1)[0].status == KVStatus.HEAD_OUT_OF_RANGE
    assert c.execute(KVOp.READ_K, 5, head=2, count=1)[0].status == KVStatus.UNKNOWN_SEQ
    assert c.execute(KVOp.READ_K, 4, head=1, count=2)[0].status == KVStatus.READ_PAST_LENGTH
    assert c.execute(KVOp.STATUS, 4)[0] == (ok, KVOp.STATUS, 1, 1, 5)
    assert c.execute(6, 4)[0] == (KVStatus.BAD_OPCODE, 6, 0, 0, 0)
    assert c.execute(KVOp.FREE, 4)[0] == (ok, KVOp.FREE, 0, 0, 6)
    assert c.execute(KVOp.STATUS, 4)[0].status == KVStatus.UNKNOWN_SEQ
    with pytest.raises(ValueError, match="op must be in 0..7"):
        c.execute(8, 4)


def test_read_order_is_blocks_then_groups_then_positions_then_beats():
    # 5 positions from 3, blocks of 2 (last one partial), rows of 4 beats in groups of 2
    got = [tuple(x) for x in read_order(3, 5, 2, 2, 4)]
    want = [(p, b) for b0, n in ((3, 2), (5, 2), (7, 1)) for g in (0, 2)
            for p in range(b0, b0 + n) for b in (g, g + 1)]
    assert got == want
    # block 0 = all positions in one block; group 0 = the whole row
    assert [tuple(x) for x in read_order(0, 3, 0, 1, 2)] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    rows = [(p, b) for p in range(2, 6) for b in range(4)]
    for block in (0, 1, 2, 3, 4, 9):
        assert [tuple(x) for x in read_order(2, 4, block, 0, 4)] == rows    # position order
        assert [tuple(x) for x in read_order(2, 4, block, 4, 4)] == rows
    assert read_order(7, 0, 3, 1, 4).shape == (0, 2)
    with pytest.raises(ValueError, match="group 3 does not divide beats_per_row 4"):
        read_order(0, 1, 0, 3, 4)


@pytest.mark.parametrize("start, count, block, group", [
    (0, 11, 0, 0), (1, 10, 4, 1), (2, 9, 3, 2), (0, 11, 0, 1), (5, 6, 1, 4), (0, 0, 2, 1), (3, 8, 20, 2)])
def test_read_beats_are_every_beat_of_the_rows_exactly_once_in_read_order(start, count, block, group):
    c = PagedKVCache(page_size=4, num_pages=8, kv_heads=2, head_dim=8, max_seqs=2, dtype="int8",
                     beat_elems=2)
    assert c.beats_per_row == 4
    c.alloc(1)
    c.alloc(2)
    rng = np.random.default_rng(start + 10 * count)
    for _ in range(11):
        for s in (1, 2):
            c.append(s, rng.integers(-128, 128, (2, 8)).astype(np.int8),
                     rng.integers(-128, 128, (2, 8)).astype(np.int8))
    rows = c.read_v(1, 1, start, count).reshape(count, 4, 2)
    beats = c.read_v_beats(1, 1, start, count, block, group)
    order = read_order(start, count, block, group, 4)
    assert beats.shape == (4 * count, 2)
    assert sorted(map(tuple, order)) == [(p, b) for p in range(start, start + count) for b in range(4)]
    for (p, b), beat in zip(order, beats, strict=True):
        np.testing.assert_array_equal(beat, rows[p - start, b])
    resp, got_rows = c.execute(KVOp.READ_V, 1, 1, start, count, None, None, block, group)
    assert resp.status == KVStatus.OK and np.array_equal(got_rows, c.read_v(1, 1, start, count))


def test_bad_group_is_bad_shape_after_head_before_length_and_changes_nothing():
    c = PagedKVCache(**{**SMALL, "head_dim": 4}, beat_elems=1)   # 4 beats per row
    c.alloc(0)
    for i in range(3):
        c.append(0, *token(c, i))
    before = c.snapshot()
    for group in (3, 5, 6, 7):
        assert c.execute(KVOp.READ_K, 0, 0, 0, 1, block=2, group=group)[0] == (
            KVStatus.BAD_SHAPE, KVOp.READ_K, 0, 0, 0)
        with pytest.raises(BadShapeError, match=f"group {group} does not divide"):
            c.read_k_beats(0, 0, 0, 1, 0, group)
    for group in (0, 1, 2, 4):
        assert c.execute(KVOp.READ_V, 0, 0, 0, 3, block=2, group=group)[0].status == KVStatus.OK
    # precedence: UNKNOWN_SEQ, HEAD_OUT_OF_RANGE, BAD_SHAPE, READ_PAST_LENGTH
    assert c.execute(KVOp.READ_K, 9, 0, 0, 9, group=3)[0].status == KVStatus.UNKNOWN_SEQ
    assert c.execute(KVOp.READ_K, 0, 2, 0, 9, group=3)[0].status == KVStatus.HEAD_OUT_OF_RANGE
    assert c.execute(KVOp.READ_K, 0, 0, 0, 9, group=3)[0].status == KVStatus.BAD_SHAPE
    assert c.execute(KVOp.READ_K, 0, 0, 0, 0, group=3)[0].status == KVStatus.BAD_SHAPE
    # group and block are ignored by the other commands
    assert c.execute(KVOp.STATUS, 0, 0, 0, 0, None, None, 5, 7)[0].status == KVStatus.OK
    assert c.snapshot() == before
    with pytest.raises(ValueError, match="group must be in 0..7"):
        c.execute(KVOp.READ_K, 0, 0, 0, 1, group=8)
    with pytest.raises(ValueError, match="beat_elems .3. must divide head_dim .4."):
        PagedKVCache(**{**SMALL, "head_dim": 4}, beat_elems=3)
