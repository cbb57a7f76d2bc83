"""The KV unit in the Verilated chip (hdl/chip.py through sim.chip_api.ChipSim with the KV
traces of sim.chip_kv): programs of LOADs and KV instructions leave the cache golden.kvunit
describes — every controller response (the STATUS of the addressed sequence after each command)
and every K/V memory word equal golden.PagedKVCache's —, with many sequences, pages freed and
reused; OUT_OF_PAGES in the middle of a batch of APPENDs stops the chip at that instruction with
the tokens before the refused one appended, and after CLEAR a program that frees another
sequence continues; UNKNOWN_SEQ, DUPLICATE_SEQ, TOO_MANY_SEQS and the dispatcher's KV checks
stop programs with their codes; random AXI latency and backpressure give identical results."""

import numpy as np
import pytest

from golden import loadstore
from golden.kvcache import PagedKVCache
from golden.kvunit import execute, rows_from_words
from hdl.config import get_config
from hdl.kvcache import KVCacheParams
from sim.chip_api import ChipSim, Program
from sim.chip_kv import kv_memory_words, kv_trace
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus, LoadStoreStatus

U = isa.Unit
TINY = get_config("tiny")
TINY_BF16 = TINY.replace(name="tiny_bf16", kvcache={"dtype": "bf16"})
SIMS = {}


def chip_sim(config):
    """One traced chip build per configuration, shared by the tests of this module."""
    if config.name not in SIMS:
        SIMS[config.name] = ChipSim(config, kv_trace=True)
    return SIMS[config.name]


class KVPrograms:
    """Programs of LOADs and KV instructions with their golden effect, built in program order.

    ``rows(n)`` puts ``n`` random tokens' K and V rows in external memory and LOADs them into
    the scratchpad (K rows dense, V rows with a gap); ``kv(...)`` adds a KV instruction that
    waits for those LOADs and applies it to the golden cache (golden.kvunit.execute, on the
    scratchpad as golden.loadstore leaves it), and to a second cache command by command
    (``PagedKVCache.execute``: the controller responses to expect). The first instruction that
    fails is where the program stops (``expect``); nothing after it is applied."""

    def __init__(self, config, seed):
        self.cfg, self.rng = config, np.random.default_rng(seed)
        mem, kv = config.memory, config.kvcache
        self.lanes = mem.spad_lanes
        self.cache = PagedKVCache.from_config(kv)
        self.replay = PagedKVCache.from_config(kv)
        self.params = KVCacheParams.from_config(config)
        self.spad = np.zeros((mem.spad_banks * mem.spad_words, self.lanes), np.uint32)
        self.row_words = kv.heads * kv.head_dim // self.lanes
        self.elem_bytes = 1 if kv.dtype == "int8" else 2
        self.bus = mem.axi_data_bits // 8
        self.ext = np.zeros(1 << 20, np.uint8)
        self.segments, self.data_at, self.spad_at = {}, 0x20000, 0
        self.programs, self.expect, self.responses, self.rows_written = [], [], [], []
        self.appended = []
        self._new()

    def _new(self):
        self.words, self.loads, self.stop = [], 0, None

    def _load(self, rows_bytes, spad_addr, spad_stride):
        n, nbytes = rows_bytes.shape
        stride = -(-nbytes // self.bus) * self.bus
        img = np.zeros((n, stride), np.uint8)
        img[:, :nbytes] = rows_bytes
        addr = self.data_at
        self.segments[addr] = img.tobytes()
        self.ext[addr:addr + img.size] = img.reshape(-1)
        self.data_at += -(-img.size // 256) * 256
        d = loadstore.Descriptor(ext_addr=addr, ext_stride=stride, rows=n, elems=nbytes // self.elem_bytes,
                                 elem_bytes=self.elem_bytes, spad_addr=spad_addr, spad_stride=spad_stride,
                                 signed=self.elem_bytes == 1)
        self.words.append(isa.encode(isa.Opcode.LOAD, ext_addr=addr, ext_stride=stride, rows=n, elems=d.elems,
                                     elem_bytes=self.elem_bytes - 1, signed=int(d.signed), spad_addr=spad_addr,
                                     spad_stride=spad_stride))
        self.loads += 1
        assert self.stop is None, "no LOAD after a failing instruction: the chip may not run it"
        loadstore.load(self.ext, self.spad, d)

    def rows(self, n):
        """LOAD n tokens' K rows (stride row_words) and V rows (stride row_words + 3): their
        scratchpad addresses and strides."""
        kv = self.cfg.kvcache
        shape = (n, kv.heads * kv.head_dim * self.elem_bytes)
        k, v = (self.rng.integers(0, 256, shape).astype(np.uint8) for _ in range(2))
        ks, vs = self.row_words, self.row_words + 3
        k_addr = self.spad_at
        v_addr = k_addr + n * ks
        self.spad_at = v_addr + n * vs
        assert self.spad_at <= len(self.spad)
        self._load(k, k_addr, ks)
        self._load(v, v_addr, vs)
        return dict(k_addr=k_addr, k_stride=ks, v_addr=v_addr, v_stride=vs)

    def kv(self, op, seq, rows=0, **addrs):
        index = len(self.words)
        self.words.append(isa.encode(isa.Opcode.KV, wait={U.LOAD: self.loads} if self.loads else None, op=op,
                                     seq=seq, rows=rows, **addrs))
        if self.stop is not None:
            return
        res = execute(self.cache, self.spad, op=op, seq=seq, rows=rows, **addrs)
        self.appended.append(res.appended)
        if op == KVOp.APPEND:
            for t in range(min(rows, res.appended + 1)):
                k, v = self._token_rows(addrs, t)
                self.responses.append(self.replay.execute(KVOp.APPEND, seq, k=k, v=v)[0])
                if t < res.appended:
                    self.rows_written.append(self.replay.physical_page(seq, self.replay.status(seq).length - 1))
        else:
            self.responses.append(self.replay.execute(op, seq)[0])
        assert self.responses[-1].status == res.status
        if res.status != KVStatus.OK:
            self.stop = (ChipError.KV, int(res.status), index)

    def _token_rows(self, a, t):
        words = [self.spad[a[f"{x}_addr"] + t * a[f"{x}_stride"]:][:self.row_words] for x in "kv"]
        return (rows_from_words(self.cache, w[None])[0] for w in words)

    def refused(self, word, code, detail):
        """An instruction that stops the program with ``code`` and ``detail``: refused by the
        dispatcher, or failing in its unit (a LOAD from an error window)."""
        if self.stop is None:
            self.stop = (code, detail, len(self.words))
        self.words.append(word)

    def end(self, with_end=True):
        if with_end:
            self.words.append(isa.encode(isa.Opcode.END))
        self.programs.append(Program(self.words, addr=0x2000 * len(self.programs)))
        self.expect.append(self.stop or (ChipError.OK, 0, 0))
        self._new()

    def run(self, sim, **kwargs):
        return sim.run(self.segments, self.programs, **kwargs)


def collapse_repeats(responses):
    """Responses with a refused APPEND's repeats removed: the KV unit may have issued the next
    token of an APPEND before the refusal came back; the controller refuses it the same way."""
    out = []
    for r in responses:
        if not (out and r.status != KVStatus.OK and r == out[-1]):
            out.append(r)
    return out


def check_against_golden(b, res):
    """Every program's error registers, every controller response and every K/V memory word
    the programs wrote."""
    sim = chip_sim(b.cfg)
    for r, want in enumerate(b.expect):
        assert sim.error_of(res, r) == want, f"program {r}"
    responses, writes = kv_trace(res, b.cfg)
    assert collapse_repeats(responses) == collapse_repeats(b.responses)
    memory = {}
    for addr, data in writes:
        memory[addr] = data
    assert memory == kv_memory_words(b.cache, b.params, set(b.rows_written))
    return responses, memory


def many_sequences(config, seed):
    """Two programs: sequences allocated, appended to across pages, freed, their pages reused by
    others and an id reused; a refused APPEND (OUT_OF_PAGES) at the end of the second."""
    b = KVPrograms(config, seed)
    a = b.rows(16)

    def at(t):
        return {k: v + t * (a[k.replace("addr", "stride")] if k.endswith("addr") else 0) for k, v in a.items()}
    for s in (10, 11, 12):
        b.kv(KVOp.ALLOC, s)
    b.kv(KVOp.APPEND, 10, 6, **at(0))
    b.kv(KVOp.APPEND, 11, 3, **at(6))
    b.kv(KVOp.APPEND, 12, 9, **at(3))
    b.kv(KVOp.APPEND, 10, 5, **at(9))
    b.kv(KVOp.FREE, 11)
    b.kv(KVOp.ALLOC, 13)
    b.kv(KVOp.APPEND, 13, 7, **at(1))
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
    first = check_against_golden(b, b.run(sim, seed=seed))
    res = b.run(sim, stall=0.3, backpressure=0.3, seed=seed + 1)
    assert check_against_golden(b, res) == first                  # identical, response by response
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
    rest = {k: v + 30 * a[k.replace("addr", "stride")] if k.endswith("addr") else v for k, v in a.items()}
    b.kv(KVOp.APPEND, 1, 16, **rest)         # 2 + 12 fit (positions 30 … 43): refused at its 15th token…
    b.kv(KVOp.APPEND, 2, 1, **c)             # … and this one never runs
    b.end()
    assert b.expect[0] == (ChipError.KV, KVStatus.OUT_OF_PAGES, 8) and b.appended[-1] == 14
    # after CLEAR: free sequence 2, then the refused tokens of sequence 1 from the same rows
    b.kv(KVOp.FREE, 2)
    again = {k: v + 14 * a[k.replace("addr", "stride")] if k.endswith("addr") else v for k, v in rest.items()}
    b.kv(KVOp.APPEND, 1, 2, **again)
    b.kv(KVOp.ALLOC, 3)
    b.kv(KVOp.APPEND, 3, 4, **c)
    b.end()
    assert b.expect[1] == (ChipError.OK, 0, 0) and b.cache.status(1).length == 46
    res = b.run(chip_sim(TINY), seed=seed)
    check_against_golden(b, res)
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
    check_against_golden(b, res)
    assert b.cache.sequences == []


@pytest.mark.xdist_group("chip_kvtrace_tiny")
def test_an_error_of_another_unit_lets_the_started_append_finish_whole_and_no_later_kv_instruction_starts():
    """A LOAD answered SLVERR while a 20-token APPEND runs: the program stops with AXI_READ at
    the LOAD, the APPEND has appended all 20 tokens, the KV instructions after it never ran."""
    b = KVPrograms(TINY, 13)
    a = b.rows(20)
    b.kv(KVOp.ALLOC, 4)
    b.kv(KVOp.APPEND, 4, 20, **a)
    bad_load = isa.encode(isa.Opcode.LOAD, ext_addr=0xF000, ext_stride=4, rows=1, elems=4, elem_bytes=0,
                          spad_addr=len(b.spad) - 4, spad_stride=1)
    b.refused(bad_load, ChipError.AXI_READ, LoadStoreStatus.AXI_ERROR)
    b.kv(KVOp.FREE, 4)
    b.kv(KVOp.ALLOC, 5)
    b.end()
    assert b.expect == [(ChipError.AXI_READ, LoadStoreStatus.AXI_ERROR, 4)]
    res = b.run(chip_sim(TINY), seed=13, errors=[(0xF000, 0xF004, 2)])
    check_against_golden(b, res)
    assert b.cache.status(4).length == 20
    c = res.counters
    assert c["kv_exec_instrs"] == 2 and c["kvcache_kv_writes"] == 2 * b.row_words * 20
