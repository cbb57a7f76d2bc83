"""KVCacheController in Verilator against golden.PagedKVCache: random command streams (alloc /
append / read / free churn through exhaustion, every error code, READs in random block/group
beat orders), checked response by response and beat by beat, with and without random valid
gaps and ready backpressure; adversarial isolation; the free-list order; the streaming rate,
also of tiled READs."""

import ml_dtypes
import numpy as np
import pytest

from golden.kvcache import KVCommand, KVOp, KVResponse, KVStatus, PagedKVCache, read_order
from hdl.config import get_config
from hdl.kvcache import KVCacheParams
from sim.kvcache_api import run_kvcache

STALLS = {
    "no_stalls": dict(),
    "random_stalls": dict(stall=0.3, backpressure=0.4),
}


def responses(result):
    """The responses of a run as golden.KVResponse tuples."""
    return [KVResponse(*r.tolist()) for r in result.responses]


def random_rows(rng, cache):
    shape = (cache.kv_heads, cache.head_dim)
    if cache.dtype == "int8":
        return rng.integers(-128, 128, shape).astype(np.int8)
    return rng.integers(0, 1 << 16, shape).astype(np.uint16).view(ml_dtypes.bfloat16)


def random_shape(rng, cache, length):
    """(block, group) of a READ: half the time 0, 0 (position order, whole rows); else a random
    block (0 = all, small ones that split pages, large ones) and a group that divides
    beats_per_row, or 1 time in 10 one that does not (BAD_SHAPE) where the field allows it."""
    if rng.random() < 0.5:
        return 0, 0
    bpr = cache.beats_per_row
    x = rng.random()
    block = 0 if x < 0.2 else int(rng.integers(1, 2 * cache.page_size + 2)) if x < 0.9 \
        else int(rng.integers(1, max(length, 1) + 2))
    divisors = [0] + [d for d in range(1, bpr + 1) if bpr % d == 0]
    bad = [g for g in range(1, 1 << bpr.bit_length()) if bpr % g]
    if bad and rng.random() < 0.1:
        return block, int(rng.choice(bad))
    return block, int(rng.choice(divisors))


def random_commands(cache, n, seed):
    """``n`` commands that cycle through fill phases (appends until the pages run out) and
    drain phases (frees), with every error case mixed in. ``cache`` is a fresh golden model
    used only to steer the choices (a copy must be used to compute the expected answers)."""
    rng = np.random.default_rng(seed)
    ids = [0, 65535] + [int(x) for x in rng.choice(np.arange(1, 65535), 2 * cache.max_seqs + 2,
                                                   replace=False)]
    cmds = []
    phase_fill = True
    while len(cmds) < n:
        live = cache.sequences
        if not phase_fill and not live:
            phase_fill = True
        r = rng.random()
        seq = int(rng.choice(live)) if live and rng.random() < (0.97 if phase_fill else 0.9) \
            else int(rng.choice(ids))
        # fill: mostly appends (reaching OUT_OF_PAGES); drain: frees and reads
        weights = [0.01, 0.03, 0.001, 0.02, 0.80] if phase_fill else [0.01, 0.05, 0.15, 0.05, 0.10]
        edges = np.cumsum(weights)
        if r < edges[0]:
            cmd = KVCommand(int(rng.integers(6, 8)), seq)
        elif r < edges[1]:
            cmd = KVCommand(KVOp.ALLOC, int(rng.choice(ids)) if rng.random() < 0.8 else seq)
        elif r < edges[2]:
            cmd = KVCommand(KVOp.FREE, seq)
        elif r < edges[3]:
            cmd = KVCommand(KVOp.STATUS, seq)
        elif r < edges[4]:
            cmd = KVCommand(KVOp.APPEND, seq, k=random_rows(rng, cache), v=random_rows(rng, cache))
        else:
            length = cache.status(seq).length if seq in live else 0
            head = int(rng.integers(0, cache.kv_heads))
            x = rng.random()
            if x < 0.04:
                head = int(rng.integers(cache.kv_heads, 256))
            start = int(rng.integers(0, length + 1))
            count = int(rng.integers(0, min(length - start, 4 * cache.page_size) + 1))
            if x > 0.93:      # just past the end (up to it when the sequence holds the whole pool)
                count = min(length - start + 1, cache.max_length)
            elif x > 0.88:    # exactly up to the end
                count = length - start
            block, group = random_shape(rng, cache, count)
            cmd = KVCommand(KVOp.READ_K if rng.random() < 0.5 else KVOp.READ_V, seq, head,
                            start, count, block=block, group=group)
        if cache.execute(*cmd)[0].status == KVStatus.OUT_OF_PAGES:
            phase_fill = False  # exhausted: drain
        cmds.append(cmd)
    return cmds


def expected(config, cmds):
    """Golden's (response, rows) per command and the K/V memory addresses the hardware must
    write, in order (from golden's physical page of each appended token)."""
    golden = PagedKVCache.from_config(get_config(config).kvcache)
    p = KVCacheParams.from_config(get_config(config))
    hb = p.kv_heads * p.beats_per_row
    out, addrs = [], []
    for c in cmds:
        resp, rows = golden.execute(*c)
        out.append((resp, rows))
        if c.op == KVOp.APPEND and resp.status == KVStatus.OK:
            page, row = golden.physical_page(c.seq, resp.length - 1)
            base = (page * p.page_size + row) * hb
            addrs += [base + j for j in range(hb)]
            addrs += [p.mem_words // 2 + base + j for j in range(hb)]
    return out, addrs


def raw(rows):
    return rows.view(np.uint8 if rows.dtype == np.int8 else np.uint16)


def golden_beats(ctrl, cmd, rows):
    """The beats golden says a READ with ``cmd``'s block/group streams, from its rows."""
    order = read_order(cmd.start, cmd.count, cmd.block, cmd.group, ctrl.beats_per_row)
    beats = rows.reshape(len(rows), ctrl.beats_per_row, ctrl.beat_elems)
    return beats[order[:, 0] - cmd.start, order[:, 1]]


def check_against_golden(config, cmds, result):
    """Every response equal to golden's, every read beat bit-identical and in golden's beat
    order (block/group), every K/V write in the physical page golden chose, the beat framing
    (``last`` on each READ's final beat, int8 lanes sign-extended, no extra beats) right, and
    the event counts equal to what golden says happened."""
    ctrl = KVCacheParams.from_config(get_config(config))
    want, addrs = expected(config, cmds)
    assert len(result.responses) == len(cmds)
    for i, (cmd, (resp, rows), got, got_rows, got_beats) in enumerate(
            zip(cmds, want, responses(result), result.reads, result.read_beats, strict=True)):
        where = f"command {i} {cmd[:5]} block {cmd.block} group {cmd.group}"
        assert got == resp, f"{where}: hardware {got}, golden {resp} (seed {result.seed})"
        if rows is None:
            assert got_rows is None
        else:
            assert np.array_equal(raw(got_beats), raw(golden_beats(ctrl, cmd, rows))), \
                f"{where}: read beats differ (data or order)"
            assert np.array_equal(raw(got_rows), raw(rows)), f"{where}: read data differs"
    n_beats = sum(len(r) for _, r in want if r is not None) * ctrl.beats_per_row
    assert len(result.rdata) == n_beats
    ends = np.cumsum([len(r) * ctrl.beats_per_row for _, r in want if r is not None and len(r)])
    assert np.array_equal(np.flatnonzero(result.last), ends - 1)
    if ctrl.dtype == "int8":
        lanes = result.rdata.view(np.int16)
        assert np.array_equal(lanes, lanes.astype(np.int8).astype(np.int16)), "int8 lane not sign-extended"
    assert np.array_equal(result.mem_writes, np.array(addrs, np.int64)), \
        "K/V memory writes differ from golden's physical pages (or an error wrote)"
    c = result.counters
    appends = sum(1 for cmd in cmds if cmd.op == KVOp.APPEND)
    assert (c["cmds"], c["cmds_rejected"]) == (len(cmds), sum(1 for r, _ in want if r.status != KVStatus.OK))
    assert (c["beats_in"], c["beats_out"], c["kv_reads"]) == (appends * ctrl.append_beats, n_beats, n_beats)
    assert c["kv_writes"] == len(addrs) and c["busy"] <= result.cycles
    return want


def assert_tiled_reads_exercised(config, cmds, want, at_least=50):
    """Enough successful READs whose order differs from position order: several blocks with
    the rows split into groups."""
    bpr = KVCacheParams.from_config(get_config(config)).beats_per_row
    tiled = [c for c, (r, rows) in zip(cmds, want, strict=True)
             if rows is not None and c.group not in (0, bpr) and len(rows) > max(c.block, 1)]
    assert len(tiled) > at_least, f"only {len(tiled)} tiled READs over several blocks"


def tagged(cache, tag):
    """K and V rows whose every element is ``tag`` (K) and ``-tag`` (V)."""
    k = np.full((cache.kv_heads, cache.head_dim), tag, cache.np_dtype)
    return k, (-k).astype(cache.np_dtype)


@pytest.mark.xdist_group("kvcache_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_random_command_stream_matches_golden_response_by_response_tiny(stalls):
    seed = 20260 + len(stalls)
    print(f"command seed {seed}")
    cmds = random_commands(PagedKVCache.from_config(get_config("tiny").kvcache), 10_000, seed)
    result = run_kvcache(cmds, config="tiny", seed=seed, **STALLS[stalls])
    want = check_against_golden("tiny", cmds, result)
    assert len(result.rdata) > 10_000
    codes = {r.status for r, _ in want}
    assert codes == set(int(s) for s in KVStatus), f"not every status code exercised: {codes}"
    assert_tiled_reads_exercised("tiny", cmds, want)


def isolation_commands(cache):
    """Adversarial isolation: sequences with distinct tags; a freed sequence's pages (full of
    its tag) reused by others; reads of exactly the length, one past it, of other heads; an
    OUT_OF_PAGES append whose data must go nowhere; too many sequences."""
    ps, H = cache.page_size, cache.kv_heads
    A, B, C, D = 11, 22, 33, 65535
    cmds = [KVCommand(KVOp.ALLOC, A), KVCommand(KVOp.ALLOC, B)]
    cmds += [KVCommand(KVOp.APPEND, A, k=tagged(cache, 1)[0], v=tagged(cache, 1)[1])
             for _ in range(3 * ps + 1)]
    cmds += [KVCommand(KVOp.APPEND, B, k=tagged(cache, 2)[0], v=tagged(cache, 2)[1])
             for _ in range(2)]
    cmds += [KVCommand(KVOp.FREE, A), KVCommand(KVOp.ALLOC, C)]
    cmds += [KVCommand(KVOp.APPEND, C, k=tagged(cache, 3)[0], v=tagged(cache, 3)[1])]
    for op in (KVOp.READ_K, KVOp.READ_V):
        cmds += [KVCommand(op, C, 0, 0, 1), KVCommand(op, C, 0, 0, 2), KVCommand(op, C, 0, 1, 0),
                 KVCommand(op, C, 0, 2, 0), KVCommand(op, C, H, 0, 1), KVCommand(op, C, 255, 0, 1),
                 KVCommand(op, A, 0, 0, 1)]
        cmds += [KVCommand(op, B, h, 0, 2) for h in range(H)]
        cmds += [KVCommand(op, B, h, 1, 1) for h in range(H)]
    cmds += [KVCommand(KVOp.ALLOC, A), KVCommand(KVOp.ALLOC, D), KVCommand(KVOp.ALLOC, 5)]
    cmds += [KVCommand(KVOp.APPEND, A, k=tagged(cache, 4)[0], v=tagged(cache, 4)[1]),
             KVCommand(KVOp.READ_K, A, 0, 0, 1), KVCommand(KVOp.READ_V, A, H - 1, 0, 1)]
    # C fills every free page, then one more append fails; then everyone reads everything
    free_rows = (cache.num_pages - 3) * ps  # A, B and C hold one page each
    cmds += [KVCommand(KVOp.APPEND, C, k=tagged(cache, 3)[0], v=tagged(cache, 3)[1])
             for _ in range(free_rows + ps - 1)]
    cmds += [KVCommand(KVOp.APPEND, C, k=tagged(cache, 99)[0], v=tagged(cache, 99)[1]),
             KVCommand(KVOp.APPEND, D, k=tagged(cache, 99)[0], v=tagged(cache, 99)[1]),
             KVCommand(KVOp.STATUS, C)]
    for seq, n in ((A, 1), (B, 2), (C, free_rows + ps)):
        for h in range(H):
            cmds += [KVCommand(KVOp.READ_K, seq, h, 0, n), KVCommand(KVOp.READ_V, seq, h, 0, n)]
    cmds += [KVCommand(KVOp.FREE, C), KVCommand(KVOp.FREE, C), KVCommand(KVOp.STATUS, B)]
    return cmds, {A: 4, B: 2, C: 3}


@pytest.mark.xdist_group("kvcache_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_sequences_only_read_their_own_rows_after_free_reuse_and_failed_appends(stalls):
    cache = PagedKVCache.from_config(get_config("tiny").kvcache)
    cmds, tags = isolation_commands(cache)
    result = run_kvcache(cmds, config="tiny", seed=7, **STALLS[stalls])
    want = check_against_golden("tiny", cmds, result)
    statuses = [r.status for r, _ in want]
    for code in (KVStatus.OUT_OF_PAGES, KVStatus.READ_PAST_LENGTH, KVStatus.HEAD_OUT_OF_RANGE,
                 KVStatus.UNKNOWN_SEQ, KVStatus.TOO_MANY_SEQS):
        assert code in statuses, f"{code.name} not exercised"
    seen = 0
    for cmd, rows in zip(cmds, result.reads, strict=True):
        if rows is not None and len(rows):
            tag = tags[cmd.seq]
            assert np.all(rows == (tag if cmd.op == KVOp.READ_K else -tag)), \
                f"sequence {cmd.seq} read rows that are not its own: {np.unique(rows)}"
            seen += len(rows)
    assert seen > 4 * cache.num_pages * cache.page_size // 2


@pytest.mark.xdist_group("kvcache_tiny")
def test_back_to_back_reads_stream_one_beat_per_cycle_across_pages_and_heads():
    cache = PagedKVCache.from_config(get_config("tiny").kvcache)
    ctrl = KVCacheParams.from_config(get_config("tiny"))
    n = 3 * cache.page_size
    cmds = [KVCommand(KVOp.ALLOC, 3), KVCommand(KVOp.ALLOC, 4)]
    for i in range(n):  # interleaved appends: the pages of sequence 3 are not contiguous
        for seq in (3, 4):
            cmds.append(KVCommand(KVOp.APPEND, seq, k=tagged(cache, i)[0], v=tagged(cache, i)[1]))
    reads = [KVCommand(op, 3, h, 0, n) for op in (KVOp.READ_K, KVOp.READ_V)
             for h in range(cache.kv_heads)]
    result = run_kvcache(cmds + reads, config="tiny", seed=3)
    check_against_golden("tiny", cmds + reads, result)
    beats = len(reads) * n * ctrl.beats_per_row
    assert beats // len(reads) >= ctrl.command_cycles
    rc = result.rdata_cycles
    assert len(rc) == beats and np.all(np.diff(rc) == ctrl.throughput), \
        f"bubbles in the read stream: gaps {np.unique(np.diff(rc))}"
    first_read_accepted = result.cmd_cycles[len(cmds)]
    assert rc[0] - first_read_accepted == ctrl.read_latency
    ac = result.wdata_cycles
    per_append = ctrl.append_beats
    assert np.all(np.diff(ac.reshape(-1, per_append), axis=1) == 1), "bubbles inside an APPEND"


@pytest.mark.xdist_group("kvcache_tiny")
@pytest.mark.parametrize("block, group", [(3, 1), (0, 1), (2, 0), (5, 1), (1, 1)])
def test_tiled_reads_stream_one_beat_per_cycle_across_pages_and_block_jumps(block, group):
    """READs in block/group order (jumps back to a block's first position, blocks that straddle
    pages of non-contiguous sequences), back to back: one beat per cycle, same latency."""
    cache = PagedKVCache.from_config(get_config("tiny").kvcache)
    ctrl = KVCacheParams.from_config(get_config("tiny"))
    n = 3 * cache.page_size + 1
    cmds = [KVCommand(KVOp.ALLOC, 3), KVCommand(KVOp.ALLOC, 4)]
    for i in range(n):
        for seq in (3, 4):
            cmds.append(KVCommand(KVOp.APPEND, seq, k=tagged(cache, i)[0], v=tagged(cache, i)[1]))
    reads = [KVCommand(op, 3, h, 1, n - 1, block=block, group=group)
             for op in (KVOp.READ_K, KVOp.READ_V) for h in range(cache.kv_heads)]
    result = run_kvcache(cmds + reads, config="tiny", seed=5)
    check_against_golden("tiny", cmds + reads, result)
    beats = len(reads) * (n - 1) * ctrl.beats_per_row
    rc = result.rdata_cycles
    assert len(rc) == beats and np.all(np.diff(rc) == ctrl.throughput), \
        f"bubbles in the tiled read stream: gaps {np.unique(np.diff(rc))}"
    assert rc[0] - result.cmd_cycles[len(cmds)] == ctrl.read_latency
    # every element of row p is p: the stream's positions are golden's read order
    order = read_order(1, n - 1, block, group, ctrl.beats_per_row)
    assert np.array_equal(result.read_beats[len(cmds)][:, 0].astype(int), order[:, 0])


def back_to_back_appends(config, n, seed):
    """ALLOC of three sequences, then ``n`` APPENDs with nothing in between: runs of 1 … 2 pages
    of one sequence (page crossings with the previous APPEND's page still being written), the
    sequence changing from one run to the next, every 13th APPEND to a sequence never
    allocated (UNKNOWN_SEQ); in ``tiny`` the pool runs out (OUT_OF_PAGES next to APPENDs that
    still fit in a tail page)."""
    cache = PagedKVCache.from_config(get_config(config).kvcache)
    rng = np.random.default_rng(seed)
    seqs = [1, 2, 3]
    cmds = [KVCommand(KVOp.ALLOC, s) for s in seqs]
    while len(cmds) < len(seqs) + n:
        seq = int(rng.choice(seqs))
        for _ in range(int(rng.integers(1, 2 * cache.page_size + 1))):
            s = 9 if (len(cmds) - len(seqs)) % 13 == 12 else seq
            cmds.append(KVCommand(KVOp.APPEND, s, k=random_rows(rng, cache), v=random_rows(rng, cache)))
    return cmds[:len(seqs) + n], len(seqs)


@pytest.mark.parametrize("config, n", [("tiny", 128), ("default", 64)])
@pytest.mark.parametrize("stalls", STALLS)
def test_back_to_back_appends_stream_one_beat_per_cycle_without_bubbles_between_commands(
        config, n, stalls):
    """The next APPEND is accepted and checked while the previous one's beats stream, against
    that APPEND's effect on the length and pages: results identical to golden (page
    crossings, out of pages, unknown sequences, with and without stalls), and with a producer
    that never stalls every beat of every APPEND follows the previous beat by one cycle."""
    ctrl = KVCacheParams.from_config(get_config(config))
    cmds, first = back_to_back_appends(config, n, seed=17)
    result = run_kvcache(cmds, config=config, seed=11, **STALLS[stalls])
    want = check_against_golden(config, cmds, result)
    codes = {r.status for r, _ in want[first:]}
    assert {KVStatus.OK, KVStatus.UNKNOWN_SEQ} <= codes
    if config == "tiny":
        assert KVStatus.OUT_OF_PAGES in codes
    lengths = [r.length for r, _ in want[first:] if r.status == KVStatus.OK]
    assert sum(1 for a, b in zip(lengths[:-1], lengths[1:], strict=True) if b == a + 1 and a % ctrl.page_size == 0) >= 2
    if stalls == "no_stalls":
        ac = result.wdata_cycles
        assert len(ac) == n * ctrl.append_beats
        assert ac[0] - result.cmd_cycles[first] == ctrl.append_latency
        assert np.all(np.diff(ac) == ctrl.throughput), \
            f"bubbles in the append stream: gaps {np.unique(np.diff(ac))}"


TINY_BF16 = get_config("tiny").replace(name="tiny_bf16", kvcache={"dtype": "bf16"})


@pytest.mark.xdist_group("kvcache_tiny_bf16")
@pytest.mark.parametrize("stalls", STALLS)
def test_bf16_random_command_stream_matches_golden_bit_for_bit(stalls):
    seed = 31337
    print(f"command seed {seed}")
    cmds = random_commands(PagedKVCache.from_config(get_config(TINY_BF16).kvcache), 10_000, seed)
    result = run_kvcache(cmds, config=TINY_BF16, seed=seed, **STALLS[stalls])
    want = check_against_golden(TINY_BF16, cmds, result)
    assert {r.status for r, _ in want} == set(int(s) for s in KVStatus)
    assert_tiled_reads_exercised(TINY_BF16, cmds, want)
    nan_rows = sum(np.isnan(r.astype(np.float32)).any() for r in result.reads if r is not None)
    assert nan_rows > 100  # random bit patterns: NaN payloads travel untouched


@pytest.mark.xdist_group("kvcache_default")
@pytest.mark.parametrize("stalls", STALLS)
def test_default_config_random_command_stream_matches_golden(stalls):
    seed = 4242
    print(f"command seed {seed}")
    cmds = random_commands(PagedKVCache.from_config(get_config("default").kvcache), 10_000, seed)
    result = run_kvcache(cmds, config="default", seed=seed, **STALLS[stalls])
    want = check_against_golden("default", cmds, result)
    assert {r.status for r, _ in want} == set(int(s) for s in KVStatus)
    assert_tiled_reads_exercised("default", cmds, want)
    assert len({c.seq for c in cmds if c.op == KVOp.ALLOC}) > 16


EDGE_GEOMETRIES = {
    "one_beat_per_row": get_config("tiny").replace(name="tiny_bpr1", kvcache={"head_dim": 8, "beat_elems": 8}),
    "one_token_per_page_one_element_beats": get_config("tiny").replace(
        name="tiny_ps1", kvcache={"head_dim": 8, "page_size": 1, "pages": 64, "beat_elems": 1}),
}


@pytest.mark.xdist_group("kvcache_edges")
@pytest.mark.parametrize("geometry", EDGE_GEOMETRIES)
def test_edge_geometries_random_command_stream_matches_golden(geometry):
    """beats_per_row = 1 (group field of one bit, no bad group) and page_size = 1 with
    beats_per_row = 8 (every position another page): random streams with stalls."""
    cfg = EDGE_GEOMETRIES[geometry]
    seed = 99
    print(f"command seed {seed}")
    cmds = random_commands(PagedKVCache.from_config(get_config(cfg).kvcache), 3000, seed)
    result = run_kvcache(cmds, config=cfg, seed=seed, **STALLS["random_stalls"])
    want = check_against_golden(cfg, cmds, result)
    assert len(result.rdata) > 1000
    if KVCacheParams.from_config(cfg).beats_per_row > 1:
        assert KVStatus.BAD_SHAPE in {r.status for r, _ in want}
        assert_tiled_reads_exercised(cfg, cmds, want, at_least=20)
