"""The MATMUL unit's operand feeders: weights and parameters from external memory (or the KV
cache) into the matmul engine's ``w`` and ``p`` ports (docs/chip.md, "The MATMUL unit").

Each feeder has two sides that follow the unit's instruction ring in program order:

* a *requester* turns each instruction's ``(addr, words)`` into DMA read requests (chunks of at
  most ``2**(beats_width − 1)`` bus words) as soon as the instruction is in the ring: the reads
  run ahead of the engine, bounded by the read engine's per-client FIFO (a burst is issued only
  when the FIFO has room for it), so the next instruction's operands stream in while the current
  one runs;
* a *forwarder* turns the bus words into engine beats, exactly the instruction's beat count, and
  reports the instruction's errors when its last beat is taken.

Both sides take their jobs on streams whose handshake *ends* the job: the payload is the ring
entry (stable while ``valid``), ``ready`` is 1 in the cycle the job is finished. The unit
points each at the entry it works on.

Flushing (the program aborts, ``flush`` / ``req_flush``: the job is of an instruction that will
never start): the requester issues nothing more (a request it is presenting is still given,
as a stream must); the forwarder drops its output beat and its state and discards every bus
word until every request issued has been read (``quiet``).
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from spec.codes import KVStatus

from .counters import events_layout
from .dma import ReadClientSignature
from .matmul_common import param_layout
from .params import check_int as _check

__all__ = ["request_job_layout", "weight_job_layout", "param_job_layout", "feed_error_layout", "WeightFeeder",
           "ParamFeeder", "OUTSTANDING_BITS"]

#: Bits of a feeder's count of requests whose data has not all been read. The read engine takes
#: a request only once it has split the previous one into bursts, and issues a burst only when
#: its client's FIFO has room for it, so a few more requests than the FIFO has beats at most.
OUTSTANDING_BITS = 16


def request_job_layout(addr_width, words_width):
    """A requester's job: ``addr`` (bytes, bus-aligned), ``words`` (bus words; 0: nothing)."""
    return data.StructLayout({"addr": addr_width, "words": words_width})


def weight_job_layout(beats_width):
    """A weight forwarder's job: ``beats`` (engine beats), ``w16`` (16-bit weights in memory:
    bf16 or the wide int8 format, 2·C bytes per beat; else int8, C bytes), ``kv`` (the beats
    come from the KV cache's READ, not from the DMA)."""
    return data.StructLayout({"beats": beats_width, "w16": 1, "kv": 1})


def param_job_layout(beats_width):
    """A parameter forwarder's job: ``beats`` (one per N tile; 0: the command has none)."""
    return data.StructLayout({"beats": beats_width})


def feed_error_layout():
    """What a forwarder reports with a finished job: ``axi`` (a bus word of it answered SLVERR
    or DECERR), ``kv`` (the KV cache refused its READ: the engine got zero beats instead),
    ``kv_status``."""
    return data.StructLayout({"axi": 1, "kv": 1, "kv_status": KVStatus})


class _Feeder(wiring.Component):
    """The requester and the bookkeeping both feeders share."""

    def __init__(self, members, *, cols, bus_bits, addr_width, beats_width, words_width, job_beats_width):
        _check("cols", cols, 2, 64, pow2=True)
        if bus_bits not in (32, 64, 128, 256, 512):
            raise ValueError(f"bus_bits must be one of 32, 64, 128, 256, 512, not {bus_bits!r}")
        _check("addr_width", addr_width, 12, 64)
        _check("beats_width", beats_width, 2, 32)
        _check("words_width", words_width, 1, 64)
        _check("job_beats_width", job_beats_width, 1, 40)
        self._cols, self._bus_bytes = cols, bus_bits // 8
        self._addr_width, self._beats_width, self._words_width = addr_width, beats_width, words_width
        self._job_beats_width = job_beats_width
        super().__init__({
            "req_job": In(stream.Signature(request_job_layout(addr_width, words_width))),
            "req_flush": In(1),
            "flush": In(1),
            "dma": Out(ReadClientSignature(addr_width=addr_width, data_width=bus_bits, beats_width=beats_width)),
            "err": Out(feed_error_layout()),
            "quiet": Out(1),
            **members,
        })

    @property
    def chunk_words(self):
        """Bus words of one DMA request at most."""
        return 1 << (self._beats_width - 1)

    def _requester(self, m):
        """Chunked requests of the job at ``req_job``; returns (issued this cycle, outstanding)."""
        job, req = self.req_job, self.dma.req
        issued = Signal(self._words_width)
        remaining = Signal(self._words_width)
        m.d.comb += remaining.eq(job.payload.words - issued)
        chunk = Mux(remaining > self.chunk_words, self.chunk_words, remaining)
        go = job.valid & ~self.req_flush & (remaining != 0)
        with m.If(~req.valid | req.ready):
            m.d.sync += req.valid.eq(go)
            with m.If(go):
                m.d.sync += [req.payload.addr.eq(job.payload.addr + (issued << exact_log2(self._bus_bytes))),
                             req.payload.beats.eq(chunk), issued.eq(issued + chunk)]
        finished = job.valid & ~self.req_flush & (remaining == 0)
        m.d.comb += job.ready.eq(finished)
        with m.If(finished | self.req_flush):
            m.d.sync += issued.eq(0)
        outstanding = Signal(OUTSTANDING_BITS)
        took = Signal()
        m.d.comb += took.eq(req.valid & req.ready)
        m.d.comb += self.quiet.eq(~req.valid & (outstanding == 0))
        return took, outstanding

    def _count_outstanding(self, m, took, outstanding):
        """Requests whose data has not all been read: +1 per request, −1 per final word."""
        d = self.dma.data
        read_last = d.valid & d.ready & d.payload.last
        m.d.sync += outstanding.eq(outstanding + took - read_last)


class WeightFeeder(_Feeder):
    """Weight bus words (or KV-cache READ beats) → the matmul engine's ``w`` beats.

    Parameters
    ----------
    cols : int
        C, lanes of a weight beat (16 bits each), a power of two 2..64.
    bus_bits : int
        AXI data width D·8: 32..512.
    addr_width, beats_width : int
        External address bits and the bits of a DMA request's ``beats``.
    words_width, job_beats_width : int
        Bits of a job's bus words and engine beats.
    kv_data_bits : int
        Bits of a KV READ beat's ``data`` (16 · kv beat elements); the low 16·C bits are taken.
    kv_depth : int
        KV responses held (one per started KV-sourced instruction at most: the unit's ring depth).

    Members
    -------
    req_job : In(stream(request_job_layout))
        The requests of one instruction (``words`` 0 for KV-sourced ones); handshake at its end.
    job : In(stream(weight_job_layout))
        The beats of one instruction; handshake when its last beat is taken by ``w``.
    req_flush, flush : In(1)
        The requester's / the forwarder's job belongs to an instruction that never starts (abort).
    dma : Out(ReadClientSignature)
        A read client of the chip's AXI read engine.
    kv_resp : In(stream(StructLayout({"status": KVStatus})))
        The KV cache's answer to each READ the unit sent, in order; taken at once into a FIFO
        of ``kv_depth``.
    kv_rdata : In(stream)
        The READ beats (``data``; ``last`` is not needed: the job has the count).
    w : Out(stream(ArrayLayout(16, C)))
        To the engine. Registered.
    err : Out(feed_error_layout())
        Valid with ``job.ready``: the finished job's errors. A refused READ feeds zero beats.
    quiet : Out(1)
        No request presented and every requested word read.
    events : Out(events_layout)
        ``words`` (a bus word taken or discarded), ``kv_beats`` (a KV beat taken).

    Formats (spec/matmul_layout.py): a job with ``w16 = 0`` reads C bytes per beat and
    sign-extends each to a 16-bit lane; ``w16 = 1`` reads 2·C bytes, one 16-bit lane per byte
    pair. A beat narrower than the bus takes consecutive slices of a word, and the job's last
    beat leaves the rest of its word (padding) behind; a beat wider than the bus joins
    consecutive words. Throughput one beat per cycle while words arrive (a word per cycle when
    beats are wider); a job starts 1 cycle after the previous one's last beat was taken, and
    its first beat is on ``w`` 1 cycle later.
    """

    def __init__(self, *, cols, bus_bits, addr_width, beats_width, words_width, job_beats_width,
                 kv_data_bits, kv_depth=4):
        _check("kv_data_bits", kv_data_bits, 16, 16 * 1024)
        _check("kv_depth", kv_depth, 1, 64)
        self._kv_data_bits, self._kv_depth = kv_data_bits, kv_depth
        super().__init__({
            "job": In(stream.Signature(weight_job_layout(job_beats_width))),
            "kv_resp": In(stream.Signature(data.StructLayout({"status": KVStatus}))),
            "kv_rdata": In(stream.Signature(data.StructLayout({"data": kv_data_bits, "last": 1}))),
            "w": Out(stream.Signature(data.ArrayLayout(16, cols))),
            "events": Out(events_layout(["words", "kv_beats"])),
        }, cols=cols, bus_bits=bus_bits, addr_width=addr_width, beats_width=beats_width,
            words_width=words_width, job_beats_width=job_beats_width)

    def _lanes(self, raw, w16):
        """Engine lanes of a beat's bytes: 16-bit pairs, or sign-extended bytes."""
        C = self._cols
        if w16:
            return raw
        return Cat(*[Cat(raw[8 * c:8 * c + 8], raw[8 * c + 7].replicate(8)) for c in range(C)])

    def _ext_source(self, m, w16, left, load, on):
        """(valid, data, pop) of the next beat from the bus words, for both beat widths; ``load``:
        the beat is taken this cycle; ``on``: the current job reads bus words."""
        C, D = self._cols, self._bus_bytes
        word = self.dma.data.payload.data
        valid, beat, pop = Signal(), Signal(16 * C), Signal()
        split = {b: D // (C << b) for b in (0, 1) if (C << b) <= D}
        join = {b: (C << b) // D for b in (0, 1) if (C << b) > D}
        idx = Signal(range(max([*split.values(), 2])))
        jcnt = Signal(range(max([*join.values(), 2])))
        jbuf = [Signal(8 * D, name=f"jbuf{i}") for i in range(max(join.values(), default=1) - 1)]
        last_beat = left == 1
        with m.Switch(w16):
            for b in (0, 1):
                with m.Case(b):
                    if b in split:
                        s, bits = split[b], 8 * (C << b)
                        chunk = Array([word[i * bits:(i + 1) * bits] for i in range(s)])[idx]
                        m.d.comb += [valid.eq(self.dma.data.valid), beat.eq(self._lanes(chunk, b)),
                                     pop.eq(on & load & ((idx == s - 1) | last_beat))]
                        with m.If(on & load):
                            m.d.sync += idx.eq(Mux(pop, 0, idx + 1))
                    else:
                        j = join[b]
                        with m.If(jcnt < j - 1):
                            # a word of the beat that is not its last: into the join buffer
                            m.d.comb += pop.eq(on & self.dma.data.valid & (left != 0))
                            with m.If(pop):
                                m.d.sync += jcnt.eq(jcnt + 1)
                                for i in range(j - 1):
                                    with m.If(jcnt == i):
                                        m.d.sync += jbuf[i].eq(word)
                        with m.Else():
                            m.d.comb += [valid.eq(self.dma.data.valid),
                                         beat.eq(self._lanes(Cat(*jbuf[:j - 1], word), b)), pop.eq(on & load)]
                            with m.If(on & load):
                                m.d.sync += jcnt.eq(0)
        with m.If(self.flush):
            m.d.sync += [idx.eq(0), jcnt.eq(0)]
        return valid, beat, pop

    def elaborate(self, platform):
        m = Module()
        took, outstanding = self._requester(m)
        m.submodules.kvq = kvq = SyncFIFOBuffered(width=len(self.kv_resp.payload.as_value()), depth=self._kv_depth)
        m.d.comb += [kvq.w_en.eq(self.kv_resp.valid), kvq.w_data.eq(self.kv_resp.payload),
                     self.kv_resp.ready.eq(kvq.w_rdy)]
        job, w, dma = self.job, self.w, self.dma.data
        EXT, KV, DUMMY = 0, 1, 2
        active, mode, w16 = Signal(), Signal(2), Signal()
        left = Signal(self._job_beats_width)       # beats not yet loaded into the output register
        out_last = Signal()                        # the output register holds the job's last beat
        err_axi, err_kv, kv_status = Signal(), Signal(), Signal(KVStatus)
        free = ~w.valid | w.ready
        load = Signal()
        src_valid, src_beat, pop = Signal(), Signal(16 * self._cols), Signal()
        ext_on = Signal()
        m.d.comb += ext_on.eq(active & (mode == EXT) & ~self.flush)
        ext_valid, ext_beat, ext_pop = self._ext_source(m, w16, left, load, ext_on)
        C16 = 16 * self._cols
        kv_beat = self.kv_rdata.payload.data[:C16] if self._kv_data_bits >= C16 else self.kv_rdata.payload.data
        with m.Switch(mode):
            with m.Case(EXT):
                m.d.comb += [src_valid.eq(ext_valid), src_beat.eq(ext_beat), pop.eq(ext_pop)]
            with m.Case(KV):
                m.d.comb += [src_valid.eq(self.kv_rdata.valid), src_beat.eq(kv_beat),
                             self.kv_rdata.ready.eq(load)]
            with m.Case(DUMMY):
                m.d.comb += [src_valid.eq(1), src_beat.eq(0)]
        m.d.comb += [load.eq(active & (left != 0) & src_valid & free & ~self.flush),
                     dma.ready.eq(self.flush | pop)]
        with m.If(load):
            m.d.sync += [w.valid.eq(1), w.payload.eq(src_beat), left.eq(left - 1), out_last.eq(left == 1)]
        with m.Elif(w.ready | self.flush):
            m.d.sync += w.valid.eq(0)
        word_taken = dma.valid & dma.ready
        with m.If(word_taken & ~self.flush):
            m.d.sync += err_axi.eq(err_axi | dma.payload.error)
        self._count_outstanding(m, took, outstanding)

        # a job starts once the previous one's last beat is taken; it ends when its own is
        begin = Signal()
        m.d.comb += begin.eq(~active & job.valid & ~self.flush & (~job.payload.kv | kvq.r_rdy))
        status = data.View(self.kv_resp.payload.shape(), kvq.r_data).status
        empty = job.payload.beats == 0
        with m.If(begin):
            m.d.sync += [active.eq(~empty), left.eq(job.payload.beats), w16.eq(job.payload.w16), err_axi.eq(0),
                         err_kv.eq(0), kv_status.eq(KVStatus.OK), mode.eq(EXT)]
            with m.If(job.payload.kv):
                m.d.comb += kvq.r_en.eq(1)
                m.d.sync += [mode.eq(Mux(status == KVStatus.OK, KV, DUMMY)), err_kv.eq(status != KVStatus.OK),
                             kv_status.eq(status)]
        finished = (w.valid & w.ready & out_last) | (begin & empty)
        m.d.comb += [job.ready.eq(finished), self.err.axi.eq(err_axi), self.err.kv.eq(err_kv),
                     self.err.kv_status.eq(kv_status)]
        with m.If(w.valid & w.ready & out_last):
            m.d.sync += [active.eq(0), out_last.eq(0)]
        with m.If(self.flush):
            m.d.sync += [active.eq(0), out_last.eq(0)]
        m.d.comb += [self.events.words.eq(word_taken),
                     self.events.kv_beats.eq(self.kv_rdata.valid & self.kv_rdata.ready)]
        return m


class ParamFeeder(_Feeder):
    """Parameter bus words → the matmul engine's ``p`` beats (one per N tile).

    Parameters
    ----------
    cols, bus_bits, addr_width, beats_width, words_width, job_beats_width : int
        As :class:`WeightFeeder`.
    record_bytes : int
        External bytes of one beat's record (``spec.matmul_layout.param_beat_bytes``): a
        multiple of the bus width, ≥ 9·C.

    Members
    -------
    req_job, req_flush, flush, dma, err, quiet
        As :class:`WeightFeeder` (``err.kv`` is always 0).
    job : In(stream(param_job_layout))
        One instruction's beats (0: it has no parameters); handshake when its last beat is
        taken by ``p``.
    p : Out(stream(param_layout(C)))
        To the engine: the first 9·C bytes of each record. Registered.
    events : Out(events_layout)
        ``words``.

    A record of W = record_bytes / bus bytes words gives a beat once its last word arrives:
    one beat per W cycles while words arrive.
    """

    def __init__(self, *, cols, bus_bits, addr_width, beats_width, words_width, job_beats_width, record_bytes):
        _check("record_bytes", record_bytes, 9 * cols, 1 << 16)
        if record_bytes % (bus_bits // 8):
            raise ValueError(f"record_bytes ({record_bytes}) must be a multiple of the bus width in bytes")
        self._record_bytes = record_bytes
        super().__init__({
            "job": In(stream.Signature(param_job_layout(job_beats_width))),
            "p": Out(stream.Signature(param_layout(cols))),
            "events": Out(events_layout(["words"])),
        }, cols=cols, bus_bits=bus_bits, addr_width=addr_width, beats_width=beats_width,
            words_width=words_width, job_beats_width=job_beats_width)

    @property
    def words_per_beat(self):
        return self._record_bytes // self._bus_bytes

    def elaborate(self, platform):
        m = Module()
        took, outstanding = self._requester(m)
        job, p, dma = self.job, self.p, self.dma.data
        W, D = self.words_per_beat, self._bus_bytes
        active, out_last, err_axi = Signal(), Signal(), Signal()
        left = Signal(self._job_beats_width)
        jcnt = Signal(range(max(W, 2)))
        jbuf = [Signal(8 * D, name=f"jbuf{i}") for i in range(W - 1)]
        free = ~p.valid | p.ready
        load, absorb = Signal(), Signal()
        m.d.comb += [absorb.eq(active & (left != 0) & (jcnt != W - 1) & dma.valid & ~self.flush),
                     load.eq(active & (left != 0) & (jcnt == W - 1) & dma.valid & free & ~self.flush),
                     dma.ready.eq(self.flush | absorb | load)]
        with m.If(absorb):
            m.d.sync += jcnt.eq(jcnt + 1)
            for i in range(W - 1):
                with m.If(jcnt == i):
                    m.d.sync += jbuf[i].eq(dma.payload.data)
        record = Cat(*jbuf, dma.payload.data)
        with m.If(load):
            m.d.sync += [p.valid.eq(1), p.payload.eq(record[:len(p.payload.as_value())]), jcnt.eq(0),
                         left.eq(left - 1), out_last.eq(left == 1)]
        with m.Elif(p.ready | self.flush):
            m.d.sync += p.valid.eq(0)
        word_taken = dma.valid & dma.ready
        with m.If(word_taken & ~self.flush):
            m.d.sync += err_axi.eq(err_axi | dma.payload.error)
        self._count_outstanding(m, took, outstanding)

        begin = Signal()
        m.d.comb += begin.eq(~active & job.valid & ~self.flush)
        empty = job.payload.beats == 0
        with m.If(begin):
            m.d.sync += [active.eq(~empty), left.eq(job.payload.beats), err_axi.eq(0)]
        m.d.comb += [job.ready.eq((p.valid & p.ready & out_last) | (begin & empty)),
                     self.err.axi.eq(err_axi), self.err.kv.eq(0), self.err.kv_status.eq(KVStatus.OK)]
        with m.If((p.valid & p.ready & out_last) | self.flush):
            m.d.sync += [active.eq(0), out_last.eq(0)]
        with m.If(self.flush):
            m.d.sync += jcnt.eq(0)
        m.d.comb += self.events.words.eq(word_taken)
        return m
