"""The default-size scratchpad (8 lanes, 8192 words, 4 banks: Verilog RAM instances) in
Verilator with three SpadReaders and two SpadWriters running at once: the walks the units use
(rows, K-tile-major activations, a stride-0 parameter loop, interleaved and masked writes, two
writers on one bank, reads of two banks at once, reads past the end), checked word by word
against golden.scratchpad.ScratchpadModel, identical with and without stalls and
backpressure; the event counts; the measured words per cycle of every mover."""

import re

import numpy as np
import pytest

from golden.scratchpad import Descriptor, ScratchpadModel, walk
from sim.spad_api import run_spad, spad_design

pytestmark = [pytest.mark.cocotb, pytest.mark.xdist_group("spad_default")]

WORDS = 8192


def traffic(seed):
    """Three phases, each ordered after the writes before it by ``after`` (done pulses):
    A: two writers fill banks 0, 1 and 2; B: three readers read them back while both writers
    write bank 3 (conflicting on its write port); C: two readers read bank 3 at once, and past
    the end."""
    rng = np.random.default_rng(seed)
    a0 = [dict(base=0, count0=4, count1=32, stride0=1, stride1=4),                         # rows
          dict(base=WORDS, count0=8, count1=16, stride0=1, stride1=8)]
    a1 = [dict(base=2 * WORDS, count0=1, count1=64, count2=2, stride1=2, stride2=1)]      # interleaved
    b0 = [dict(base=3 * WORDS, count0=64, count1=2, stride0=2, stride1=1, after=3)]
    b1 = [dict(base=3 * WORDS + 128, count0=128, stride0=1, after=3)]
    reads = [
        {"descs": [dict(base=0, count0=32, count1=4, stride0=4, stride1=1, after=3),       # K-tile-major
                   dict(base=3 * WORDS, count0=256, after=5),
                   dict(base=4 * WORDS + 5, count0=2, stride0=20000, after=5)]},            # past the end
        {"descs": [dict(base=WORDS, count0=128, after=3),
                   dict(base=3 * WORDS + 64, count0=16, count1=8, stride0=1, stride1=16, after=5)]},
        {"descs": [dict(base=2 * WORDS, count0=16, count1=3, count2=8, stride0=1, stride1=0, stride2=16,
                        after=3),                                                            # RoPE-like
                   dict(base=1, count0=3, count1=2, stride0=WORDS, stride1=2, after=3)]},   # three banks
    ]

    def words(descs):
        n = sum(plain(d).size for d in descs)
        return rng.integers(0, 1 << 32, (n, 8), dtype=np.uint64).astype(np.uint32)
    d1 = words(a1 + b1)
    w0 = {"descs": a0 + b0, "data": words(a0 + b0)}
    w1 = {"descs": a1 + b1, "data": d1, "mask": rng.integers(1, 256, len(d1))}
    return [w0, w1], reads


def plain(d):
    return Descriptor(**{k: v for k, v in d.items() if k != "after"})


def expected(writes, reads):
    """What every read sees: the writes of phase A (after = 0) for reads after 3 done pulses,
    all writes for reads after 5."""
    model = ScratchpadModel(lanes=8, words=WORDS, banks=4)

    def apply(phase):
        for w in writes:
            pos = 0
            for d in w["descs"]:
                n = plain(d).size
                if d.get("after", 0) == phase:
                    mask = w.get("mask")
                    model.write_walk(plain(d), w["data"][pos:pos + n], None if mask is None else mask[pos:pos + n])
                pos += n
    apply(0)
    phase_a = model.mem.copy()
    apply(3)
    want = []
    for r in reads:
        rows = []
        for d in r["descs"]:
            mem = phase_a if d["after"] == 3 else model.mem
            addr = walk(plain(d), addr_width=model.addr_width)[0]
            rows.append(np.where((addr < model.capacity)[:, None], mem[np.minimum(addr, model.capacity - 1)], 0))
        want.append(np.concatenate(rows).astype(np.uint32))
    return want


def test_default_scratchpad_is_built_from_verilog_rams():
    design, _ = spad_design("default")
    text = design.verilog.read_text()
    instances = re.findall(r"^\s*tfa_sync_ram\s+#\(", text, re.M)
    assert len(instances) == 4 and "module tfa_sync_ram" in text


@pytest.mark.parametrize("stall, backpressure", [(0.0, 0.0), (0.3, 0.3)])
def test_concurrent_movers_round_trip_through_the_default_scratchpad(stall, backpressure):
    writes, reads = traffic(seed=7)
    want = expected(writes, reads)
    res = run_spad(writes=writes, reads=reads, stall=stall, backpressure=backpressure, seed=41)
    print(f"seed {res.seed}, {res.cycles} cycles")
    for i, r in enumerate(reads):
        np.testing.assert_array_equal(res.outputs[f"r{i}"], want[i], err_msg=f"reader {i}")
        flags = np.concatenate([np.stack(walk(plain(d))[1:], axis=1) for d in r["descs"]])
        np.testing.assert_array_equal(res.outputs[f"r{i}_flags"], flags)
    c = res.counters
    n_writes = [0] * 4
    for w in writes:
        for d in w["descs"]:
            for a in walk(plain(d))[0]:
                n_writes[a // WORDS] += 1
    assert [c[f"bank{b}_writes"] for b in range(4)] == n_writes
    banks = np.minimum(np.concatenate([walk(plain(d))[0] for r in reads for d in r["descs"]]) // WORDS, 4)
    reads_per_bank = np.bincount(banks, minlength=5)
    assert [c[f"bank{b}_reads"] for b in range(4)] == reads_per_bank[:4].tolist()
    assert c["bad_addr"] == reads_per_bank[4] == 2
    assert len(res.stamps["w0_done"]) == 3 and len(res.stamps["w1_done"]) == 2
