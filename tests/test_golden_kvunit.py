"""golden.kvunit, the KV instruction's model: rows round-trip through scratchpad words (int8
sign-extended, bf16 bit patterns); ALLOC/FREE are the cache's; an APPEND refused at a token keeps
the tokens before it and changes nothing else; execute() reads the rows from scratchpad strides;
what the dispatcher refuses raises."""

import ml_dtypes
import numpy as np
import pytest

from golden.kvcache import PagedKVCache
from golden.kvunit import execute, execute_rows, row_words, rows_from_words, words_from_rows
from golden.scratchpad import ScratchpadModel
from spec.codes import KVOp, KVStatus

LANES = 2


def cache(dtype="int8", pages=4):
    return PagedKVCache(page_size=2, num_pages=pages, kv_heads=2, head_dim=4, max_seqs=2, dtype=dtype, beat_elems=LANES)


def rows(rng, c, n):
    if c.dtype == "int8":
        return rng.integers(-128, 128, (n, c.kv_heads, c.head_dim)).astype(np.int8)
    return rng.integers(0, 1 << 16, (n, c.kv_heads, c.head_dim)).astype(np.uint16).view(ml_dtypes.bfloat16)


@pytest.mark.parametrize("dtype", ["int8", "bf16"])
def test_rows_round_trip_through_scratchpad_words_as_a_load_leaves_them(dtype):
    rng = np.random.default_rng(1)
    c = cache(dtype)
    r = rows(rng, c, 3)
    w = words_from_rows(c, r, LANES)
    assert w.shape == (3, row_words(c, LANES), LANES) and w.dtype == np.uint32
    if dtype == "int8":      # sign-extended: the high 24 bits copy bit 7
        assert np.array_equal(w.reshape(-1).view(np.int32), r.reshape(-1).astype(np.int32))
    else:                    # zero-extended bit patterns
        assert np.array_equal(w.reshape(-1), r.view(np.uint16).reshape(-1).astype(np.uint32))
    noisy = w | np.uint32(0xABCD0000 if dtype == "bf16" else 0)     # only the low bits count
    assert np.array_equal(rows_from_words(c, noisy).view(np.uint8), r.view(np.uint8))


def test_alloc_and_free_are_the_caches_and_a_refusal_changes_nothing():
    c = cache()
    assert execute_rows(c, KVOp.ALLOC, 9) == (KVStatus.OK, 0)
    before = c.snapshot()
    assert execute_rows(c, KVOp.ALLOC, 9) == (KVStatus.DUPLICATE_SEQ, 0)
    assert execute_rows(c, KVOp.FREE, 8) == (KVStatus.UNKNOWN_SEQ, 0)
    assert execute_rows(c, KVOp.ALLOC, 1) == (KVStatus.OK, 0)
    assert execute_rows(c, KVOp.ALLOC, 2) == (KVStatus.TOO_MANY_SEQS, 0)
    assert execute_rows(c, KVOp.FREE, 1) == (KVStatus.OK, 0)
    assert c.snapshot() == before


def test_an_append_refused_in_the_middle_keeps_the_tokens_before_the_refused_one():
    rng = np.random.default_rng(2)
    c = cache(pages=4)                                   # 8 tokens
    execute_rows(c, KVOp.ALLOC, 1)
    execute_rows(c, KVOp.ALLOC, 2)
    k, v = rows(rng, c, 5), rows(rng, c, 5)
    assert execute_rows(c, KVOp.APPEND, 2, k[:3], v[:3]) == (KVStatus.OK, 3)       # 2 pages
    assert execute_rows(c, KVOp.APPEND, 1, k, v) == (KVStatus.OUT_OF_PAGES, 4)     # 2 pages left: 4 tokens
    assert c.status(1) == (4, 2, 0)
    assert np.array_equal(c.read_k_all(1, 1), k[:4, 1]) and np.array_equal(c.read_v_all(1, 0), v[:4, 0])
    before = c.snapshot()
    assert execute_rows(c, KVOp.APPEND, 3, k, v) == (KVStatus.UNKNOWN_SEQ, 0)
    assert execute_rows(c, KVOp.APPEND, 1, k[4:], v[4:]) == (KVStatus.OUT_OF_PAGES, 0)
    assert c.snapshot() == before


def test_execute_reads_each_tokens_rows_at_its_stride():
    rng = np.random.default_rng(3)
    c, ref = cache(), cache()
    spad = ScratchpadModel(lanes=LANES, words=64, banks=2)
    k, v = rows(rng, c, 3), rows(rng, c, 3)
    rw = row_words(c, LANES)
    for t in range(3):
        spad.write(np.arange(5 + 7 * t, 5 + 7 * t + rw), words_from_rows(c, k[t:t + 1], LANES)[0])
        spad.write(np.arange(60 + 11 * t, 60 + 11 * t + rw), words_from_rows(c, v[t:t + 1], LANES)[0])
    execute(c, spad, op=KVOp.ALLOC, seq=4)
    assert execute(c, spad, op=KVOp.APPEND, seq=4, rows=3, k_addr=5, k_stride=7, v_addr=60, v_stride=11) == (0, 3)
    execute_rows(ref, KVOp.ALLOC, 4)
    execute_rows(ref, KVOp.APPEND, 4, k, v)
    assert c.snapshot() == ref.snapshot()


def test_what_the_dispatcher_refuses_raises():
    c = cache()
    spad = np.zeros((16, LANES), np.uint32)
    for op in (KVOp.READ_K, KVOp.READ_V, KVOp.STATUS, 6, 7):
        with pytest.raises(ValueError, match="is not ALLOC, APPEND or FREE"):
            execute(c, spad, op=op, seq=1)
    execute(c, spad, op=KVOp.ALLOC, seq=1)
    with pytest.raises(ValueError, match="APPEND of 0 rows"):
        execute(c, spad, op=KVOp.APPEND, seq=1, rows=0)
    with pytest.raises(ValueError, match="reach past the scratchpad"):
        execute(c, spad, op=KVOp.APPEND, seq=1, rows=2, k_addr=13, k_stride=1)
    with pytest.raises(ValueError, match="more than the cache holds"):
        execute_rows(c, KVOp.APPEND, 1, np.zeros((9, 2, 4), np.int8), np.zeros((9, 2, 4), np.int8))
