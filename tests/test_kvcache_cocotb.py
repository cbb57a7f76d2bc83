"""KVCacheController in Verilator against golden.PagedKVCache: random command streams (alloc /
append / read / free churn through exhaustion, every error code), checked response by
response and byte by byte, with and without random valid gaps and ready backpressure;
adversarial isolation; the free-list order; the streaming rate."""

import ml_dtypes
import numpy as np
import pytest

from golden.kvcache import KVCommand, KVOp, KVStatus, PagedKVCache
from hdl.config import get_config
from hdl.kvcache import KVCacheParams
from sim.kvcache_api import run_kvcache

STALLS = {
    "no_stalls": dict(),
    "random_stalls": dict(cmd_stall=0.3, data_stall=0.3, resp_backpressure=0.3,
                          read_backpressure=0.4),
}


def random_rows(rng, cache):
    shape = (cache.kv_heads, cache.head_dim)
    if cache.dtype == "int8":
        return rng.integers(-128, 128, shape).astype(np.int8)
    return rng.integers(0, 1 << 16, shape).astype(np.uint16).view(ml_dtypes.bfloat16)


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
        if phase_fill and cache.free_pages == 0:
            phase_fill = False
        elif not phase_fill and not live:
            phase_fill = True
        r = rng.random()
        seq = int(rng.choice(live)) if live and rng.random() < 0.9 else int(rng.choice(ids))
        # fill: mostly appends (reaching OUT_OF_PAGES); drain: frees and reads
        weights = [0.01, 0.06, 0.01, 0.03, 0.50] if phase_fill else [0.01, 0.05, 0.15, 0.05, 0.10]
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
            if x > 0.93:      # just past the end
                count = length - start + 1
            elif x > 0.88:    # exactly up to the end
                count = length - start
            cmd = KVCommand(KVOp.READ_K if rng.random() < 0.5 else KVOp.READ_V, seq, head,
                            start, count)
        cache.execute(*cmd)
        cmds.append(cmd)
    return cmds


def expected(config, cmds):
    golden = PagedKVCache.from_config(config)
    return [golden.execute(*c) for c in cmds]


def raw(rows):
    return rows.view(np.uint8 if rows.dtype == np.int8 else np.uint16)


def check_against_golden(config, cmds, result):
    """Every response equal to golden's, every read row bit-identical, the beat framing
    (``last`` on each READ's final beat, int8 lanes sign-extended, no extra beats) right."""
    ctrl = KVCacheParams.from_config(get_config(config))
    want = expected(config, cmds)
    assert len(result.responses) == len(cmds)
    for i, (cmd, (resp, rows), got, got_rows) in enumerate(
            zip(cmds, want, result.responses, result.reads, strict=True)):
        assert got == resp, f"command {i} {cmd[:5]}: hardware {got}, golden {resp} (seed {result.seed})"
        if rows is None:
            assert got_rows is None
        else:
            assert np.array_equal(raw(got_rows), raw(rows)), f"command {i} {cmd[:5]}: read data differs"
    n_beats = sum(len(r) for _, r in want if r is not None) * ctrl.beats_per_row
    assert result.counters["read_beats"] == n_beats
    ends = np.cumsum([len(r) * ctrl.beats_per_row for _, r in want if r is not None and len(r)])
    assert np.array_equal(np.flatnonzero(result.last), ends - 1)
    if ctrl.dtype == "int8":
        lanes = result.lanes.view(np.int16)
        assert np.array_equal(lanes, lanes.astype(np.int8).astype(np.int16)), "int8 lane not sign-extended"
    return want


@pytest.mark.cocotb
@pytest.mark.xdist_group("kvcache_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_random_command_stream_matches_golden_response_by_response_tiny(stalls):
    seed = 20260 + len(stalls)
    print(f"command seed {seed}")
    cmds = random_commands(PagedKVCache.from_config("tiny"), 10_000, seed)
    result = run_kvcache(cmds, config="tiny", seed=seed, **STALLS[stalls])
    want = check_against_golden("tiny", cmds, result)
    codes = {r.status for r, _ in want}
    assert codes == set(int(s) for s in KVStatus), f"not every status code exercised: {codes}"
