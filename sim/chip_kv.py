"""The chip's KV cache seen from a testbench: :class:`KVTraceChip`, the decoding of its traces,
and :class:`KVPrograms`, programs of KV instructions and KV-sourced matmuls with their golden
effect.

``ChipSim(config, kv_trace=True)`` simulates :class:`KVTraceChip`: the chip (hdl/chip.py)
unchanged, with two more outputs that the testbench (sim/tb/chip.py) records in every cycle
their ``valid`` is 1:

* ``kv_resp``: every response the KV-cache controller gives (to the KV unit and to the matmul
  unit): ``status``, ``op``, ``length``, ``pages``, ``free_pages`` — the STATUS of the
  addressed sequence after each command;
* ``kv_write``: every write of the K/V data memory: word address and data.

:func:`kv_trace` decodes them; :func:`kv_memory_words` gives the memory words a
:class:`golden.PagedKVCache` holds, in the controller's layout (hdl/kvcache.py), so a test
compares the chip's cache with golden's word for word.
"""

import ml_dtypes
import numpy as np
from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

import golden
from golden import loadstore
from golden.kvcache import KVCacheError, KVResponse, PagedKVCache
from golden.kvunit import execute, rows_from_words
from hdl.config import get_config
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus, OutFormat

from .chip_api import Program
from .packing import unpack_fields

__all__ = ["KVTraceChip", "TRACES", "kv_trace", "kv_memory_words", "kv_word_address", "KVPrograms",
           "collapse_repeats", "activations"]

U = isa.Unit
BF16 = ml_dtypes.bfloat16
#: :class:`KVPrograms` puts its programs below this external address, one after the other, and
#: its data from it on.
PROGRAMS_END = 0x20000

#: The trace outputs of :class:`KVTraceChip`, in the testbench's order.
TRACES = ("kv_resp", "kv_write")


def _trace_signature(width):
    return wiring.Signature({"valid": Out(1), "data": Out(width)})


class KVTraceChip(wiring.Component):
    """``chip`` (an :class:`hdl.chip.Chip`) with the trace outputs ``kv_resp`` and ``kv_write``
    (each ``valid``, ``data``; see the module docstring). Every port of the chip is kept under
    its name."""

    def __init__(self, chip):
        self._chip = chip
        cache = chip.kv_exec.cache
        self._resp_bits = cache.resp_layout.size
        self._addr_bits = cache.mem_addr_bits
        self._data_bits = cache.mem_signature.data_width
        members = dict(chip.signature.members)
        members["kv_resp"] = Out(_trace_signature(self._resp_bits))
        members["kv_write"] = Out(_trace_signature(self._addr_bits + self._data_bits))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.chip = chip = self._chip
        outer = {path: value for path, _, value in self.signature.flatten(self)}
        for path, member, value in chip.signature.flatten(chip):
            if member.flow == wiring.In:
                m.d.comb += value.eq(outer[path])
            else:
                m.d.comb += outer[path].eq(value)
        cache = chip.kv_exec.cache
        m.d.comb += [self.kv_resp.valid.eq(cache.resp.valid & cache.resp.ready),
                     self.kv_resp.data.eq(cache.resp.payload),
                     self.kv_write.valid.eq(cache.mem.wen),
                     self.kv_write.data.eq(Cat(cache.mem.waddr, cache.mem.wdata))]
        return m


def _ints(rows):
    """[n, nbytes] uint8 (little-endian) → list of Python ints."""
    return [int.from_bytes(bytes(r), "little") for r in np.asarray(rows, np.uint8)]


def kv_trace(result, config, run=None):
    """The traces of a ``ChipSim(config, kv_trace=True).run`` result: ``(responses, writes)``.

    ``responses``: list of ``golden.KVResponse`` (ints) in the order the controller gave them;
    ``writes``: list of ``(word address, data int)``. ``run``: only that program's (index in
    the ``programs`` list; ``None``: all, in order)."""
    from hdl.kvcache import KVCacheParams
    p = KVCacheParams.from_config(get_config(config))
    out = result.outputs
    keep = {}
    for name in TRACES:
        runs = out.get(f"trace_{name}_run", np.zeros(0, np.int64))
        keep[name] = np.ones(len(runs), bool) if run is None else runs == run
    resp_words = [w for w, k in zip(_ints(out.get("trace_kv_resp_data", np.zeros((0, 1)))), keep["kv_resp"],
                                    strict=True) if k]
    fields = unpack_fields(p.resp_layout, resp_words) if resp_words else {n: [] for n in KVResponse._fields}
    responses = [KVResponse(*(int(fields[n][i]) for n in KVResponse._fields)) for i in range(len(resp_words))]
    aw = p.mem_addr_bits
    writes = [(w & ((1 << aw) - 1), w >> aw)
              for w, k in zip(_ints(out.get("trace_kv_write_data", np.zeros((0, 1)))), keep["kv_write"], strict=True)
              if k]
    return responses, writes


def kv_word_address(params, kv, page, row, head, beat):
    """The K/V data memory word of (``kv`` 0 for K / 1 for V, physical ``page``, ``row`` in the
    page, ``head``, ``beat`` of the row) in the controller's layout."""
    hb = params.kv_heads * params.beats_per_row
    return ((kv * params.num_pages + page) * params.page_size + row) * hb + head * params.beats_per_row + beat


def kv_memory_words(cache, params, rows):
    """{word address: data int} of the K/V memory words that hold ``rows`` (an iterable of
    (physical page, row) pairs) of the :class:`golden.PagedKVCache` ``cache``, both K and V,
    packed as the controller writes them (element i of a beat in bits ``[i·w, (i+1)·w)``)."""
    words = {}
    w = params.elem_bits
    raw = np.uint8 if w == 8 else np.uint16
    for page, row in rows:
        for kv, kind in enumerate("kv"):
            data = cache.physical_rows(kind, page)[row].view(raw)          # [heads, head_dim]
            for head in range(params.kv_heads):
                for beat in range(params.beats_per_row):
                    elems = data[head, beat * params.beat_elems:(beat + 1) * params.beat_elems]
                    words[kv_word_address(params, kv, page, row, head, beat)] = sum(
                        int(e) << (w * i) for i, e in enumerate(elems))
    return words


class KVPrograms:
    """Programs of LOADs, KV instructions and KV-sourced MATMULs with their golden effect, built
    in program order, for a :class:`~sim.chip_api.ChipSim` with ``kv_trace=True``.

    ``rows(n)`` puts ``n`` random tokens' K and V rows in external memory and LOADs them into
    the scratchpad (K rows dense, V rows with a gap of 3 words); ``kv(...)`` adds a KV
    instruction that waits for those LOADs and applies it to the golden cache
    (golden.kvunit.execute, on the scratchpad as golden.loadstore leaves it), and to a second
    cache command by command (``PagedKVCache.execute``: the controller responses to expect);
    ``matmul(...)`` adds a Q·Kᵀ or P·V from the cache with its STORE and golden result. The first
    instruction that fails is where a program stops (``expect``); nothing after it is applied.
    ``end()`` closes a program; ``run(sim)`` runs them all; ``check(sim, result)`` compares.

    Parameters
    ----------
    config : ChipConfig
    seed : int
        Of the random rows.
    """

    def __init__(self, config, seed):
        config = get_config(config)
        self.cfg, self.rng = config, np.random.default_rng(seed)
        mem, kv = config.memory, config.kvcache
        self.lanes = mem.spad_lanes
        self.cache = PagedKVCache.from_config(kv)
        self.replay = PagedKVCache.from_config(kv)
        from hdl.kvcache import KVCacheParams
        self.params = KVCacheParams.from_config(config)
        self.spad = np.zeros((mem.spad_banks * mem.spad_words, self.lanes), np.uint32)
        self.row_words = kv.heads * kv.head_dim // self.lanes
        self.elem_bytes = 1 if kv.dtype == "int8" else 2
        self.bus = mem.axi_data_bits // 8
        self.ext = np.zeros(1 << 20, np.uint8)
        self.segments, self.data_at, self.spad_at, self.prog_at = {}, PROGRAMS_END, 0, 0
        self.programs, self.expect, self.responses, self.rows_written = [], [], [], []
        self.appended, self.read_back, self.results = [], [], {}
        self._new()

    def _new(self):
        self.words, self.loads, self.kvs, self.mms, self.stop = [], 0, 0, 0, None

    def _ext(self, nbytes):
        addr = self.data_at
        self.data_at += -(-nbytes // 256) * 256
        if self.data_at > len(self.ext):
            raise ValueError("the external-memory image is full")
        return addr

    def _spad(self, words):
        addr = self.spad_at
        self.spad_at += words
        if self.spad_at > len(self.spad):
            raise ValueError("the scratchpad is full")
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
        if self.stop is not None:
            raise ValueError("no LOAD after a failing instruction: the chip may or may not run it")
        loadstore.load(self.ext, self.spad, d)

    def rows(self, n):
        """LOAD n tokens' K rows (stride row_words) and V rows (stride row_words + 3): their
        scratchpad addresses and strides, a dict of the APPEND fields (:meth:`at` shifts it)."""
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

    @staticmethod
    def at(addrs, t):
        """The APPEND fields of :meth:`rows` from token ``t`` on."""
        return {k: v + t * addrs[k.replace("addr", "stride")] if k.endswith("addr") else v for k, v in addrs.items()}

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
        if K != k:
            raise ValueError(f"a has {K} columns, the product needs {k}")
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
            if not np.array_equal(np.ascontiguousarray(got).view(want.dtype), want):
                raise AssertionError(f"MATMUL result {name} differs from golden")

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
        self.programs.append(Program(self.words, addr=self.prog_at))
        self.prog_at += len(self.words) * isa.INSTR_BYTES
        if self.prog_at > PROGRAMS_END:
            raise ValueError(f"the programs take more than {PROGRAMS_END} bytes")
        self.expect.append(self.stop or (ChipError.OK, 0, 0))
        self._new()

    def run(self, sim, **kwargs):
        """Every program, in order, on ``sim`` (``ChipSim.run`` keyword arguments)."""
        return sim.run(self.segments, self.programs, read_back=self.read_back, **kwargs)

    def check(self, sim, res):
        """Every program's error registers and MATMUL results and, when the run was traced
        (``ChipSim(kv_trace=True)``), every controller response to the KV unit (the matmul
        unit's READs interleave with them in time) and every K/V memory word the programs wrote.
        Returns (responses, final memory words), or None for an untraced run."""
        for r, want in enumerate(self.expect):
            got = sim.error_of(res, r)
            if got != want:
                raise AssertionError(f"program {r}: error registers {got}, expected {want}")
        self.check_results(res)
        if "trace_kv_resp_cycle" not in res.outputs:
            return None
        responses, writes = kv_trace(res, self.cfg)
        own = [r for r in responses if r.op in (KVOp.ALLOC, KVOp.APPEND, KVOp.FREE)]
        if collapse_repeats(own) != collapse_repeats(self.responses):
            raise AssertionError(f"KV responses differ:\n{collapse_repeats(own)}\n{collapse_repeats(self.responses)}")
        memory = {}
        for addr, data in writes:
            memory[addr] = data
        want = kv_memory_words(self.cache, self.params, set(self.rows_written))
        if memory != want:
            bad = sorted(a for a in set(memory) | set(want) if memory.get(a) != want.get(a))
            raise AssertionError(f"K/V memory differs at {len(bad)} words, first {bad[:8]}")
        return responses, memory


def collapse_repeats(responses):
    """Responses with a refused APPEND's repeats removed: the KV unit may have issued the next
    token of an APPEND before the refusal came back; the controller refuses it the same way."""
    out = []
    for r in responses:
        if not (out and r.status != KVStatus.OK and r == out[-1]):
            out.append(r)
    return out





def activations(rng, config, shape, unsigned=False):
    """Q (int8) or P (uint8) rows, or bf16 ones, for the cache's dtype."""
    if config.kvcache.dtype == "bf16":
        return rng.standard_normal(shape).astype(BF16)
    return rng.integers(0, 256, shape).astype(np.uint8) if unsigned else rng.integers(-128, 128, shape).astype(np.int8)
