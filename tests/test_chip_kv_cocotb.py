"""The KV unit in the Verilated chip (hdl/chip.py through sim.chip_api.ChipSim with the KV
traces of sim.chip_kv): programs of LOADs and KV instructions leave the cache golden.kvunit
describes — every controller response (the STATUS of the addressed sequence after each command)
and every K/V memory word equal golden.PagedKVCache's —, with many sequences, pages freed and
reused; OUT_OF_PAGES in the middle of a batch of APPENDs stops the chip at that instruction with
the tokens before the refused one appended, and after CLEAR a program that frees another
sequence continues; UNKNOWN_SEQ, DUPLICATE_SEQ, TOO_MANY_SEQS and the dispatcher's KV checks
stop programs with their codes; an error of another unit lets a started APPEND finish whole;
random AXI latency and backpressure give identical results; Q·Kᵀ and P·V matmuls that read the
cache (int8 and bf16) are bit-exact against golden; one case in the default configuration."""

import numpy as np
import pytest

from hdl.config import get_config
from sim.chip_api import ChipSim
from sim.chip_kv import KVPrograms, activations, kv_trace
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus

U = isa.Unit
TINY = get_config("tiny")
TINY_BF16 = TINY.replace(name="tiny_bf16", kvcache={"dtype": "bf16"})
SIMS = {}
SIM_DEFAULT = ChipSim("default")     # the untraced build, as the other default-configuration chip tests


def chip_sim(config):
    """One traced chip build per configuration, shared by the tests of this module."""
    if config.name not in SIMS:
        SIMS[config.name] = ChipSim(config, kv_trace=True)
    return SIMS[config.name]


def many_sequences(config, seed):
    """Two programs: sequences allocated, appended to across pages, freed, their pages reused by
    others and an id reused; a refused APPEND (OUT_OF_PAGES) at the end of the second."""
    b = KVPrograms(config, seed)
    a = b.rows(16)
    for s in (10, 11, 12):
        b.kv(KVOp.ALLOC, s)
    b.kv(KVOp.APPEND, 10, 6, **b.at(a, 0))
    b.kv(KVOp.APPEND, 11, 3, **b.at(a, 6))
    b.kv(KVOp.APPEND, 12, 9, **b.at(a, 3))
    b.kv(KVOp.APPEND, 10, 5, **b.at(a, 9))
    b.kv(KVOp.FREE, 11)
    b.kv(KVOp.ALLOC, 13)
    b.kv(KVOp.APPEND, 13, 7, **b.at(a, 1))
    b.end()
    c = b.rows(16)
    b.kv(KVOp.FREE, 10)
    b.kv(KVOp.APPEND, 12, 4, **c)
    b.kv(KVOp.ALLOC, 10)
    b.kv(KVOp.APPEND, 10, 16, **c)
    b.kv(KVOp.APPEND, 13, 16, **c)
    b.kv(KVOp.APPEND, 12, 16, **c)       # the pool runs out: 11 of the 16 tokens fit
    b.kv(KVOp.FREE, 12)
    b.end()
    assert b.expect == [(ChipError.OK, 0, 0), (ChipError.KV, KVStatus.OUT_OF_PAGES, 7)]
    assert b.appended[-1] == 11
    return b


@pytest.mark.parametrize("config", [pytest.param(TINY, marks=pytest.mark.xdist_group("chip_kvtrace_tiny")),
                                    pytest.param(TINY_BF16, marks=pytest.mark.xdist_group("chip_kvtrace_tiny_bf16"))],
                         ids=["int8", "bf16"])
def test_kv_programs_leave_the_cache_golden_has_with_and_without_axi_stalls(config):
    seed = 21
    print(f"seed {seed}")
    b = many_sequences(config, seed)
    sim = chip_sim(config)
    first = b.check(sim, b.run(sim, seed=seed))
    res = b.run(sim, stall=0.3, backpressure=0.3, seed=seed + 1)
    assert b.check(sim, res) == first                              # identical, response by response
    c = res.counters                                               # the last program's
    kv_instrs = 6                                                  # up to and including the refused APPEND
    assert c["kv_exec_instrs"] == kv_instrs and c["load_exec_instrs"] == 2
    tokens = sum(b.appended[-kv_instrs:])
    assert c["kvcache_kv_writes"] == 2 * b.row_words * tokens
    assert c["kvcache_beats_in"] >= 2 * b.row_words * (tokens + 1) and c["kvcache_cmds_rejected"] >= 1
    assert c["kv_exec_tokens"] == c["kvcache_beats_in"] // (2 * b.row_words)


@pytest.mark.xdist_group("chip_kvtrace_tiny")
def test_out_of_pages_stops_the_chip_at_that_append_and_after_free_and_clear_a_new_program_continues():
    seed = 5
    print(f"seed {seed}")
    b = KVPrograms(TINY, seed)
    a, c = b.rows(48), b.rows(20)
    b.kv(KVOp.ALLOC, 1)
    b.kv(KVOp.ALLOC, 2)
    b.kv(KVOp.APPEND, 1, 30, **a)            # 8 pages
    b.kv(KVOp.APPEND, 2, 20, **c)            # 5 pages: 3 left of 16
    rest = b.at(a, 30)
    b.kv(KVOp.APPEND, 1, 16, **rest)         # 2 + 12 fit (positions 30 … 43): refused at its 15th token…
    b.kv(KVOp.APPEND, 2, 1, **c)             # … and this one never runs
    b.end()
    assert b.expect[0] == (ChipError.KV, KVStatus.OUT_OF_PAGES, 8) and b.appended[-1] == 14
    # after CLEAR: free sequence 2, then the refused tokens of sequence 1 from the same rows
    b.kv(KVOp.FREE, 2)
    again = b.at(a, 44)
    b.kv(KVOp.APPEND, 1, 2, **again)
    b.kv(KVOp.ALLOC, 3)
    b.kv(KVOp.APPEND, 3, 4, **c)
    b.end()
    assert b.expect[1] == (ChipError.OK, 0, 0) and b.cache.status(1).length == 46
    # a WATCHDOG of 32 cycles: the KV unit shows progress in every cycle of its long APPENDs
    res = b.run(chip_sim(TINY), seed=seed, watchdog=32)
    b.check(chip_sim(b.cfg), res)
    assert int(res.outputs["run0_status"]) == 3 and int(res.outputs["run1_status"]) == 2   # ERROR, DONE


@pytest.mark.xdist_group("chip_kvtrace_tiny")
def test_unknown_duplicate_and_too_many_sequences_and_bad_kv_fields_stop_programs_with_their_codes():
    b = KVPrograms(TINY, 8)
    b.kv(KVOp.ALLOC, 5)
    b.kv(KVOp.ALLOC, 5)                                       # DUPLICATE_SEQ
    b.end()
    a = b.rows(2)
    b.kv(KVOp.APPEND, 6, 2, **a)                              # UNKNOWN_SEQ
    b.end()
    b.kv(KVOp.FREE, 6)                                        # UNKNOWN_SEQ
    b.end()
    for s in (6, 7, 8, 9):                                    # 4 slots, 5 holds one: TOO_MANY_SEQS at 9
        b.kv(KVOp.ALLOC, s)
    b.end()
    b.refused(isa.encode(isa.Opcode.KV, op=KVOp.READ_K, seq=7), ChipError.BAD_FIELD, 0)
    b.end()
    b.refused(isa.encode(isa.Opcode.KV, op=KVOp.APPEND, seq=7, rows=0), ChipError.BAD_FIELD, 1)
    b.end()
    b.refused(isa.encode(isa.Opcode.KV, op=KVOp.APPEND, seq=7, rows=1, v_addr=len(b.spad) - 1),
              ChipError.SPAD_RANGE, 3)
    b.end()
    b.refused(isa.encode(isa.Opcode.KV, op=KVOp.APPEND, seq=7, rows=65), ChipError.BAD_FIELD, 4)
    b.end()
    for s in (5, 6, 7, 8):
        b.kv(KVOp.FREE, s)
    b.end()
    want = [(ChipError.KV, KVStatus.DUPLICATE_SEQ, 1), (ChipError.KV, KVStatus.UNKNOWN_SEQ, 2),
            (ChipError.KV, KVStatus.UNKNOWN_SEQ, 0), (ChipError.KV, KVStatus.TOO_MANY_SEQS, 3),
            (ChipError.BAD_FIELD, 0, 0), (ChipError.BAD_FIELD, 1, 0), (ChipError.SPAD_RANGE, 3, 0),
            (ChipError.BAD_FIELD, 4, 0), (ChipError.OK, 0, 0)]
    assert b.expect == want
    res = b.run(chip_sim(TINY), seed=8)
    b.check(chip_sim(b.cfg), res)
    assert b.cache.sequences == []


@pytest.mark.xdist_group("chip_kvtrace_tiny")
def test_an_error_of_another_unit_lets_the_started_append_finish_whole_and_no_later_kv_instruction_starts():
    """A LOAD answered SLVERR while a 20-token APPEND runs: the program stops with AXI_READ at
    the LOAD, the APPEND has appended all 20 tokens, the KV instructions after it never ran."""
    b = KVPrograms(TINY, 13)
    a = b.rows(20)
    b.kv(KVOp.ALLOC, 4)
    b.kv(KVOp.APPEND, 4, 20, **a)
    # it waits for the two row LOADs, as the APPEND does: the APPEND starts before its error returns
    # (LOADs run several at once; without the wait it could fail before the APPEND started)
    bad_load = isa.encode(isa.Opcode.LOAD, wait={isa.Unit.LOAD: 2}, ext_addr=0xF000,
                          ext_stride=4, rows=1, elems=4, elem_bytes=0, spad_addr=len(b.spad) - 4, spad_stride=1)
    b.refused(bad_load, ChipError.AXI_READ, 0)   # detail 0: a LOAD's read (docs/dma.md)
    b.kv(KVOp.FREE, 4)
    b.kv(KVOp.ALLOC, 5)
    b.end()
    assert b.expect == [(ChipError.AXI_READ, 0, 4)]
    res = b.run(chip_sim(TINY), seed=13, errors=[(0xF000, 0xF004, 2)])
    b.check(chip_sim(b.cfg), res)
    assert b.cache.status(4).length == 20
    c = res.counters
    assert c["kv_exec_instrs"] == 2 and c["kvcache_kv_writes"] == 2 * b.row_words * 20


@pytest.mark.parametrize("config", [pytest.param(TINY, marks=pytest.mark.xdist_group("chip_kvtrace_tiny")),
                                    pytest.param(TINY_BF16, marks=pytest.mark.xdist_group("chip_kvtrace_tiny_bf16"))],
                         ids=["int8", "bf16"])
def test_qk_and_pv_matmuls_read_the_cache_bit_exact_against_golden(config):
    """Q·Kᵀ (KV_K) and P·V (KV_V) of every head of two sequences whose pages interleave, from
    position 0 and from the middle across pages; an APPEND that runs while the matmuls read, a
    FREE that waits for them; then a matmul past the sequence's length stops its program with
    ChipError.KV / READ_PAST_LENGTH."""
    seed = 31
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    b = KVPrograms(config, seed)
    kv = config.kvcache
    a = b.rows(30)
    b.kv(KVOp.ALLOC, 1)
    b.kv(KVOp.ALLOC, 2)
    b.kv(KVOp.APPEND, 1, 3, **b.at(a, 0))
    b.kv(KVOp.APPEND, 2, 5, **b.at(a, 3))
    b.kv(KVOp.APPEND, 1, 7, **b.at(a, 8))
    b.kv(KVOp.APPEND, 2, 9, **b.at(a, 15))
    for seq, n in ((1, 10), (2, 14)):
        for head in range(kv.heads):
            b.matmul(f"qk{seq}_{head}", isa.WSource.KV_K, seq, head, 0, n, activations(rng, config, (3, kv.head_dim)))
            b.matmul(f"pv{seq}_{head}", isa.WSource.KV_V, seq, head, 0, n,
                     activations(rng, config, (2, n), unsigned=True))
    b.matmul("qk_mid", isa.WSource.KV_K, 2, 1, 3, 9, activations(rng, config, (1, kv.head_dim)))
    b.matmul("pv_mid", isa.WSource.KV_V, 2, 0, 5, 7, activations(rng, config, (4, 7), unsigned=True))
    b.kv(KVOp.APPEND, 1, 6, **b.at(a, 24))          # no wait: runs while the matmuls read sequence 1
    b.kv(KVOp.FREE, 2)                         # waits for every MATMUL before it
    b.matmul("qk_after", isa.WSource.KV_K, 1, 0, 2, 14, activations(rng, config, (2, kv.head_dim)))
    b.end()
    b.matmul("past", isa.WSource.KV_K, 1, 1, 10, 7, activations(rng, config, (1, kv.head_dim)))   # 17 > 16
    b.end()
    assert b.expect == [(ChipError.OK, 0, 0), (ChipError.KV, KVStatus.READ_PAST_LENGTH, 1)]
    res = b.run(chip_sim(config), seed=seed, stall=0.2, backpressure=0.2)
    b.check(chip_sim(b.cfg), res)
    responses, _ = kv_trace(res, config)
    reads = [r for r in responses if r.op in (KVOp.READ_K, KVOp.READ_V)]
    assert len(reads) == 4 * kv.heads + 3 + 1 and reads[-1].status == KVStatus.READ_PAST_LENGTH


def test_default_configuration_appends_across_pages_and_reads_every_head_back_through_matmuls():
    """The default chip (8 lanes, pages of 16 tokens, 3 KV heads of 64; the untraced build the
    other default-configuration chip tests share): two sequences appended across pages in
    turns, one freed and its pages reused by a third; Q·Kᵀ and P·V of every head of the live
    sequences bit-exact against golden (so every K and V row they hold), and the K/V writes
    counted."""
    config = get_config("default")
    seed = 41
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    b = KVPrograms(config, seed)
    kv = config.kvcache
    a = b.rows(40)
    b.kv(KVOp.ALLOC, 100)
    b.kv(KVOp.ALLOC, 200)
    b.kv(KVOp.APPEND, 100, 12, **b.at(a, 0))
    b.kv(KVOp.APPEND, 200, 20, **b.at(a, 12))
    b.kv(KVOp.APPEND, 100, 8, **b.at(a, 32))
    b.kv(KVOp.FREE, 100)
    b.kv(KVOp.ALLOC, 300)
    b.kv(KVOp.APPEND, 300, 18, **b.at(a, 2))
    for seq, n in ((200, 20), (300, 18)):
        for head in range(kv.heads):
            b.matmul(f"qk{seq}_{head}", isa.WSource.KV_K, seq, head, 0, n, activations(rng, config, (2, kv.head_dim)))
            b.matmul(f"pv{seq}_{head}", isa.WSource.KV_V, seq, head, 0, n,
                     activations(rng, config, (2, n), unsigned=True))
    b.end()
    assert b.expect == [(ChipError.OK, 0, 0)]
    res = b.run(SIM_DEFAULT, seed=seed)
    b.check(SIM_DEFAULT, res)
    assert res.counters["kvcache_kv_writes"] == 2 * b.row_words * (12 + 20 + 8 + 18)
