"""The KV unit in the Verilated chip (hdl/chip.py through sim.chip_api.ChipSim with the KV
traces of sim.chip_kv): programs of LOADs and KV instructions leave the cache golden.kvunit
describes — every controller response (the STATUS of the addressed sequence after each command)
and every K/V memory word equal golden.PagedKVCache's —, with many sequences, pages freed and
reused; OUT_OF_PAGES in the middle of a batch of APPENDs stops the chip at that instruction with
the tokens before the refused one appended, and after CLEAR a program that frees another
sequence continues; UNKNOWN_SEQ, DUPLICATE_SEQ, TOO_MANY_SEQS and the dispatcher's KV checks
stop programs with their codes; random AXI latency and backpressure give identical results."""

import ml_dtypes
import numpy as np
import pytest

import golden
from golden import loadstore
from golden.kvcache import KVCacheError, PagedKVCache
from golden.kvunit import execute, rows_from_words
from hdl.config import get_config
from hdl.kvcache import KVCacheParams
from sim.chip_api import ChipSim, Program
from sim.chip_kv import kv_memory_words, kv_trace
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus, LoadStoreStatus, OutFormat

U = isa.Unit
TINY = get_config("tiny")
TINY_BF16 = TINY.replace(name="tiny_bf16", kvcache={"dtype": "bf16"})
SIMS = {}
BF16 = ml_dtypes.bfloat16


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
        self.appended, self.read_back, self.results = [], [], {}
        self._new()

    def _new(self):
        self.words, self.loads, self.kvs, self.mms, self.stop = [], 0, 0, 0, None

    def _ext(self, nbytes):
        addr = self.data_at
        self.data_at += -(-nbytes // 256) * 256
        assert self.data_at <= len(self.ext)
        return addr

    def _spad(self, words):
        addr = self.spad_at
        self.spad_at += words
        assert self.spad_at <= len(self.spad)
        return addr

    def _load(self, rows_bytes, spad_addr, spad_stride, elem_bytes=None, signed=None):
        elem_bytes = elem_bytes or self.elem_bytes
        signed = elem_bytes == 1 if signed is None else signed
        n, nbytes = rows_bytes.shape
        stride = -(-nbytes // self.bus) * self.bus
        img = np.zeros((n, stride), np.uint8)
        img[:, :nbytes] = rows_bytes
        addr = self._ext(img.size)
        self.segments[addr] = img.tobytes()
        self.ext[addr:addr + img.size] = img.reshape(-1)
        d = loadstore.Descriptor(ext_addr=addr, ext_stride=stride, rows=n, elems=nbytes // elem_bytes,
                                 elem_bytes=elem_bytes, spad_addr=spad_addr, spad_stride=spad_stride, signed=signed)
        self.words.append(isa.encode(isa.Opcode.LOAD, ext_addr=addr, ext_stride=stride, rows=n, elems=d.elems,
                                     elem_bytes=elem_bytes - 1, signed=int(d.signed), spad_addr=spad_addr,
                                     spad_stride=spad_stride))
        self.loads += 1
        assert self.stop is None, "no LOAD after a failing instruction: the chip may not run it"
        loadstore.load(self.ext, self.spad, d)

    def rows(self, n):
        """LOAD n tokens' K rows (stride row_words) and V rows (stride row_words + 3): their
        scratchpad addresses and strides."""
        kv = self.cfg.kvcache
        shape = (n, kv.heads * kv.head_dim)
        if kv.dtype == "int8":
            k, v = (self.rng.integers(0, 256, shape).astype(np.uint8) for _ in range(2))
        else:
            k, v = (self.rng.standard_normal(shape).astype(BF16).view(np.uint8) for _ in range(2))
        ks, vs = self.row_words, self.row_words + 3
        k_addr, v_addr = self._spad(n * ks), self._spad(n * vs)
        self._load(k, k_addr, ks)
        self._load(v, v_addr, vs)
        return dict(k_addr=k_addr, k_stride=ks, v_addr=v_addr, v_stride=vs)

    def kv(self, op, seq, rows=0, **addrs):
        """A KV instruction; it waits for the LOADs before it, a FREE also for the MATMULs."""
        index = len(self.words)
        wait = {U.LOAD: self.loads, **({U.MATMUL: self.mms} if op == KVOp.FREE else {})}
        self.words.append(isa.encode(isa.Opcode.KV, wait={u: n for u, n in wait.items() if n} or None, op=op,
                                     seq=seq, rows=rows, **addrs))
        self.kvs += 1
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

    def matmul(self, name, src, seq, head, start, count, a):
        """LOAD ``a``, MATMUL it by the cache's rows (``src`` KV_K: a [M, head_dim] · Kᵀ of
        positions start … start+count−1, Q·Kᵀ; KV_V: a [M, count] · V, P·V), waiting for the KV
        instructions before it, and STORE the int32 / fp32 result as ``name``; the expected
        result from golden (golden.matmul_int8 / matmul_bf16 on the rows the cache holds)."""
        kv, L = self.cfg.kvcache, self.lanes
        M, K = a.shape
        bf16 = kv.dtype == "bf16"
        a_words = -(-K // L)
        a_addr = self._spad(M * a_words)
        raw = np.ascontiguousarray(a).view(np.uint8).reshape(M, -1)
        self._load(raw, a_addr, a_words, elem_bytes=a.dtype.itemsize, signed=a.dtype == np.int8)
        key = src == isa.WSource.KV_K
        k, n = (kv.head_dim, count) if key else (count, kv.head_dim)
        assert K == k
        o_words = -(-n // L)
        o_addr = self._spad(M * o_words)
        index = len(self.words)
        wait = {u: c for u, c in ((U.LOAD, self.loads), (U.KV, self.kvs)) if c}
        self.words.append(isa.encode(
            isa.Opcode.MATMUL, wait=wait, m=M, k=k, n=n, dtype=int(bf16),
            out_fmt=OutFormat.FP32 if bf16 else OutFormat.INT32, a_unsigned=int(a.dtype == np.uint8), w_src=src,
            a_addr=a_addr, a_stride=a_words, o_addr=o_addr, o_stride=o_words, kv_seq=seq, kv_head=head,
            kv_start=start))
        self.mms += 1
        stride = -(-n * 4 // self.bus) * self.bus
        ext = self._ext(M * stride)
        self.words.append(isa.encode(isa.Opcode.STORE, wait={U.MATMUL: self.mms}, ext_addr=ext, ext_stride=stride,
                                     spad_addr=o_addr, spad_stride=o_words, rows=M, elems=n,
                                     elem_bytes=isa.ElemBytes.B4))
        self.read_back.append((name, ext, M * stride))
        if self.stop is not None:
            return
        try:
            rows = (self.cache.read_k if key else self.cache.read_v)(seq, head, start, count)
        except KVCacheError as exc:
            self.stop = (ChipError.KV, int(exc.code), index)
            return
        w = rows.T if key else rows
        want = (golden.as_fp32_bits(golden.matmul_bf16(a, np.ascontiguousarray(w))) if bf16
                else golden.matmul_int8(a, np.ascontiguousarray(w)))
        self.results[name] = (np.asarray(want).view(np.uint32 if bf16 else np.int32), stride)

    def check_results(self, res):
        """Every stored MATMUL result equals golden's, bit for bit."""
        for name, (want, stride) in self.results.items():
            got = res.outputs[name].reshape(want.shape[0], stride)[:, :4 * want.shape[1]]
            assert np.array_equal(np.ascontiguousarray(got).view(want.dtype), want), name

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
        return sim.run(self.segments, self.programs, read_back=self.read_back, **kwargs)


def collapse_repeats(responses):
    """Responses with a refused APPEND's repeats removed: the KV unit may have issued the next
    token of an APPEND before the refusal came back; the controller refuses it the same way."""
    out = []
    for r in responses:
        if not (out and r.status != KVStatus.OK and r == out[-1]):
            out.append(r)
    return out


def check_against_golden(b, res):
    """Every program's error registers, every controller response to the KV unit and every K/V
    memory word the programs wrote."""
    sim = chip_sim(b.cfg)
    for r, want in enumerate(b.expect):
        assert sim.error_of(res, r) == want, f"program {r}"
    responses, writes = kv_trace(res, b.cfg)
    # the KV unit's commands (the matmul unit's READs interleave with them in time)
    own = [r for r in responses if r.op in (KVOp.ALLOC, KVOp.APPEND, KVOp.FREE)]
    assert collapse_repeats(own) == collapse_repeats(b.responses)
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


def activations(rng, config, shape, unsigned=False):
    """Q (int8) or P (uint8) rows, or bf16 ones, for the cache's dtype."""
    if config.kvcache.dtype == "bf16":
        return rng.standard_normal(shape).astype(BF16)
    return rng.integers(0, 256, shape).astype(np.uint8) if unsigned else rng.integers(-128, 128, shape).astype(np.int8)


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

    def at(t):
        return {k: v + t * a[k.replace("addr", "stride")] if k.endswith("addr") else v for k, v in a.items()}
    b.kv(KVOp.ALLOC, 1)
    b.kv(KVOp.ALLOC, 2)
    b.kv(KVOp.APPEND, 1, 3, **at(0))
    b.kv(KVOp.APPEND, 2, 5, **at(3))
    b.kv(KVOp.APPEND, 1, 7, **at(8))
    b.kv(KVOp.APPEND, 2, 9, **at(15))
    for seq, n in ((1, 10), (2, 14)):
        for head in range(kv.heads):
            b.matmul(f"qk{seq}_{head}", isa.WSource.KV_K, seq, head, 0, n, activations(rng, config, (3, kv.head_dim)))
            b.matmul(f"pv{seq}_{head}", isa.WSource.KV_V, seq, head, 0, n,
                     activations(rng, config, (2, n), unsigned=True))
    b.matmul("qk_mid", isa.WSource.KV_K, 2, 1, 3, 9, activations(rng, config, (1, kv.head_dim)))
    b.matmul("pv_mid", isa.WSource.KV_V, 2, 0, 5, 7, activations(rng, config, (4, 7), unsigned=True))
    b.kv(KVOp.APPEND, 1, 6, **at(24))          # no wait: runs while the matmuls read sequence 1
    b.kv(KVOp.FREE, 2)                         # waits for every MATMUL before it
    b.matmul("qk_after", isa.WSource.KV_K, 1, 0, 2, 14, activations(rng, config, (2, kv.head_dim)))
    b.end()
    b.matmul("past", isa.WSource.KV_K, 1, 1, 10, 7, activations(rng, config, (1, kv.head_dim)))   # 17 > 16
    b.end()
    assert b.expect == [(ChipError.OK, 0, 0), (ChipError.KV, KVStatus.READ_PAST_LENGTH, 1)]
    res = b.run(chip_sim(config), seed=seed, stall=0.2, backpressure=0.2)
    check_against_golden(b, res)
    b.check_results(res)
    responses, _ = kv_trace(res, config)
    reads = [r for r in responses if r.op in (KVOp.READ_K, KVOp.READ_V)]
    assert len(reads) == 4 * kv.heads + 3 + 1 and reads[-1].status == KVStatus.READ_PAST_LENGTH
