"""The KV-cache controller's data paths (hdl/kvcache.py, docs/kvcache.md): :class:`ReadEngine`
streams a READ's rows from the K/V memory in its block/group order; :class:`AppendWriter` writes
an APPEND's beats."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .params import check_int as _check_int

__all__ = ["ReadEngine", "AppendWriter", "read_load_layout"]


def _mul_const(x, k):
    """``x · k`` for a constant ``k`` as a sum of shifted copies of ``x`` (one adder per set bit
    after the first): no multiplier block on the address paths."""
    terms = [x << i for i in range(k.bit_length()) if (k >> i) & 1]
    if not terms:
        return x & 0
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def check_geometry(page_size, num_pages, kv_heads):
    """The page and head checks the controller and its parts share."""
    _check_int("page_size", page_size, 1, 256)
    if page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two, not {page_size}")
    _check_int("num_pages", num_pages, 2, 65536)
    _check_int("kv_heads", kv_heads, 1, 64)


def _check(page_size, num_pages, kv_heads, beats_per_row):
    check_geometry(page_size, num_pages, kv_heads)
    _check_int("beats_per_row", beats_per_row, 1, 1024)


def read_load_layout(*, max_seqs, kv_heads, beats_per_row, max_len):
    """One READ for the :class:`ReadEngine`: ``slot``, ``head``, ``kv`` (0 K, 1 V), ``start``
    (first position), ``gm1`` (beats per group − 1), ``first_m1`` (positions of the first block
    − 1), ``left`` (positions after the first block), ``block_m1`` (positions per block − 1)."""
    bw = max(beats_per_row, 2)
    return data.StructLayout({
        "slot": range(max_seqs), "head": range(kv_heads), "kv": 1, "start": range(max_len + 1),
        "gm1": range(bw), "first_m1": range(max_len), "left": range(max_len + 1), "block_m1": range(max_len)})


class ReadEngine(wiring.Component):
    """Streams the rows of one READ after another from the K/V memory, in the READ's block/group
    order (:func:`golden.kvcache.read_order`), one beat per cycle.

    A three-stage pipeline: stage 1 walks the positions and beats and reads the position's page
    from the block tables, stage 2 reads the K/V word, stage 3 writes it (int8 lanes
    sign-extended to 16 bits) into an output FIFO of 6 beats; a beat is issued only when the
    FIFO has room for it and the beats in flight (credits), so the pipeline never stalls.

    Parameters
    ----------
    page_size, num_pages, kv_heads, max_seqs : int
        As :class:`~hdl.kvcache.KVCacheController`.
    beats_per_row, beat_elems, elem_bits : int
        Beats of one head's row, elements per beat, bits per stored element (8 or 16).

    Members
    -------
    load : In(stream.Signature(read_load_layout(...)))
        The next READ (``count`` ≥ 1). Taken when the engine is idle or issues the current
        READ's last beat in this cycle (``ready`` does not depend on ``valid``).
    idle : Out(1)
        No READ is walked and no beat is in the pipeline (the FIFO may still hold beats).
    bt_addr : Out(block-table address bits)
        The block-table entry (``slot · 2**ceil_log2(num_pages) + position / page_size``) of
        the position being issued; ``bt_data`` is that entry one cycle later (a synchronous read
        port the controller owns, shared with its FREE walk).
    bt_data : In(page bits)
    table_read : Out(1)
        A beat is issued this cycle (a block-table read).
    raddr, ren : Out; rdata : In
        The K/V memory's read port (``hdl.memport.MemoryPortSignature``: ``rdata`` is the word at
        the ``raddr`` of the previous cycle in which ``ren`` was 1).
    rdata_out : Out(stream.Signature(StructLayout({"data": 16·beat_elems, "last": 1})))
        The beats; ``last`` on a READ's final beat.

    Latency: :attr:`latency` (5) cycles from the ``load`` handshake to the first beat on
    ``rdata_out`` (walk, table read, word read, the FIFO's two). Throughput: one beat per cycle,
    also from one READ to the next.
    """

    def __init__(self, *, page_size, num_pages, kv_heads, max_seqs, beats_per_row, beat_elems, elem_bits):
        _check(page_size, num_pages, kv_heads, beats_per_row)
        _check_int("max_seqs", max_seqs, 1, 1024)
        _check_int("beat_elems", beat_elems, 1, 1024)
        if elem_bits not in (8, 16):
            raise ValueError(f"elem_bits must be 8 or 16, not {elem_bits!r}")
        self._ps, self._N, self._H, self._S = page_size, num_pages, kv_heads, max_seqs
        self._bpr, self._be, self._eb = beats_per_row, beat_elems, elem_bits
        self._max_len = num_pages * page_size
        lg_N = ceil_log2(num_pages)
        mem_words = 2 * num_pages * page_size * kv_heads * beats_per_row
        super().__init__({
            "load": In(stream.Signature(read_load_layout(max_seqs=max_seqs, kv_heads=kv_heads,
                                                         beats_per_row=beats_per_row, max_len=self._max_len))),
            "idle": Out(1),
            "bt_addr": Out(ceil_log2(max_seqs << lg_N)), "bt_data": In(max(1, lg_N)),
            "table_read": Out(1),
            "raddr": Out(max(1, ceil_log2(mem_words))), "ren": Out(1), "rdata": In(beat_elems * elem_bits),
            "rdata_out": Out(stream.Signature(data.StructLayout({"data": 16 * beat_elems, "last": 1}))),
        })

    @property
    def latency(self):
        """Cycles from a READ's ``load`` to its first beat on ``rdata_out`` (idle engine, ready output)."""
        return 5

    def elaborate(self, platform):
        m = Module()
        N, ps, H, S, bpr, max_len = self._N, self._ps, self._H, self._S, self._bpr, self._max_len
        bw = max(bpr, 2)                   # range of beat counters (no zero-width signal)
        HB = H * bpr                       # words per token per K or V
        lg_ps = exact_log2(ps)
        lg_N = ceil_log2(N)

        rd_depth = 6  # 2 reads in flight + the FIFO's own 2-cycle latency, with slack
        m.submodules.rdata_fifo = rd_fifo = SyncFIFOBuffered(width=len(self.rdata_out.payload.as_value()),
                                                             depth=rd_depth)
        m.d.comb += [
            self.rdata_out.valid.eq(rd_fifo.r_rdy),
            self.rdata_out.payload.eq(rd_fifo.r_data),
            rd_fifo.r_en.eq(self.rdata_out.ready),
        ]

        rg_active = Signal()
        rg_slot = Signal(range(S))
        rg_head = Signal(range(H))
        rg_kv = Signal()
        rg_pos = Signal(range(max_len + 1))
        rg_beat = Signal(range(bw))           # beat of the row
        # tiled order (golden.kvcache.read_order): blocks of positions, groups of beats
        rg_gbase = Signal(range(bw))          # first beat of the current group
        rg_j = Signal(range(bw))              # beats of the group after this one
        rg_gm1 = Signal(range(bw))            # group − 1
        rg_bcnt = Signal(range(max_len))       # positions of the block after this one
        rg_blen_m1 = Signal(range(max_len))    # current block length − 1
        rg_bstart = Signal(range(max_len + 1))  # first position of the current block
        rg_left = Signal(range(max_len + 1))   # positions after the current block
        rg_block_m1 = Signal(range(max_len))   # block − 1 (block 0 = the whole count)
        s2_valid, s2_last, s2_kv = Signal(), Signal(), Signal()
        s2_off = Signal(range(max(ps, 2)))
        s2_word = Signal(range(HB))
        s3_valid, s3_last = Signal(), Signal()

        credit = Signal()
        m.d.comb += credit.eq(rd_fifo.level + s2_valid + s3_valid < rd_depth)
        issue = Signal()
        m.d.comb += issue.eq(rg_active & credit)
        last_beat_of_row = rg_beat == bpr - 1
        j_last = rg_j == 0                     # last beat of the group
        block_end = j_last & (rg_bcnt == 0)    # … of the block's last position
        issue_last = Signal()
        m.d.comb += issue_last.eq(issue & block_end & last_beat_of_row & (rg_left == 0))
        m.d.comb += [self.load.ready.eq(~rg_active | issue_last),
                     self.idle.eq(~rg_active & ~s2_valid & ~s3_valid),
                     self.table_read.eq(issue)]

        # stage 1: the walk, and the block-table read of the position
        m.d.comb += self.bt_addr.eq((rg_slot << lg_N) | (rg_pos >> lg_ps))
        m.d.sync += [s2_valid.eq(issue), s3_valid.eq(s2_valid), s3_last.eq(s2_last)]
        next_short = rg_left <= rg_block_m1    # the next block is the last, and partial
        with m.If(issue):
            m.d.sync += [
                s2_last.eq(issue_last), s2_kv.eq(rg_kv),
                s2_off.eq(rg_pos & (ps - 1)), s2_word.eq(_mul_const(rg_head, bpr) + rg_beat),
            ]
            with m.If(~j_last):                # next beat of the group
                m.d.sync += [rg_beat.eq(rg_beat + 1), rg_j.eq(rg_j - 1)]
            with m.Elif(~block_end):           # same group, next position of the block
                m.d.sync += [rg_beat.eq(rg_gbase), rg_j.eq(rg_gm1), rg_pos.eq(rg_pos + 1),
                             rg_bcnt.eq(rg_bcnt - 1)]
            with m.Elif(~last_beat_of_row):    # next group: back to the block's first position
                m.d.sync += [rg_beat.eq(rg_beat + 1), rg_gbase.eq(rg_beat + 1), rg_j.eq(rg_gm1),
                             rg_pos.eq(rg_bstart), rg_bcnt.eq(rg_blen_m1)]
            with m.Else():                     # next block
                nb_m1 = Mux(next_short, rg_left - 1, rg_block_m1)
                m.d.sync += [rg_beat.eq(0), rg_gbase.eq(0), rg_j.eq(rg_gm1),
                             rg_pos.eq(rg_pos + 1), rg_bstart.eq(rg_pos + 1),
                             rg_blen_m1.eq(nb_m1), rg_bcnt.eq(nb_m1),
                             rg_left.eq(Mux(next_short, 0, rg_left - rg_block_m1 - 1))]
                with m.If(rg_left == 0):
                    m.d.sync += rg_active.eq(0)
        ld = self.load.payload
        with m.If(self.load.valid & self.load.ready):
            m.d.sync += [rg_active.eq(1), rg_slot.eq(ld.slot), rg_head.eq(ld.head),
                         rg_kv.eq(ld.kv), rg_pos.eq(ld.start),
                         rg_bstart.eq(ld.start), rg_beat.eq(0), rg_gbase.eq(0),
                         rg_j.eq(ld.gm1), rg_gm1.eq(ld.gm1), rg_bcnt.eq(ld.first_m1),
                         rg_blen_m1.eq(ld.first_m1), rg_left.eq(ld.left),
                         rg_block_m1.eq(ld.block_m1)]

        # stage 2: the K/V word of (kv, page, offset, head, beat)
        row_index = ((_mul_const(s2_kv, N) + self.bt_data) << lg_ps) | s2_off
        m.d.comb += [self.raddr.eq(_mul_const(row_index, HB) + s2_word),
                     self.ren.eq(s2_valid)]
        # stage 3: into the FIFO, int8 lanes sign-extended
        word = self.rdata
        if self._eb == 8:
            lanes = Cat(Cat(word[8 * i:8 * i + 8], word[8 * i + 7].replicate(8))
                        for i in range(self._be))
        else:
            lanes = word
        m.d.comb += [rd_fifo.w_en.eq(s3_valid), rd_fifo.w_data.eq(Cat(lanes, s3_last))]
        return m


class AppendWriter(wiring.Component):
    """Writes one APPEND's beats into the K/V memory: K of head 0 … kv_heads − 1, then V likewise,
    each row ``beats_per_row`` beats, at the token's physical row.

    Parameters
    ----------
    page_size, num_pages, kv_heads, beats_per_row : int
        As :class:`~hdl.kvcache.KVCacheController`.
    data_bits : int
        Bits of one beat.

    Members
    -------
    start : In(1)
        A new APPEND: the beat count restarts; ``write`` and ``row`` are registered.
    write : In(1)
        The APPEND's beats are written (it succeeded); 0: they are consumed and dropped.
    row : In(range(num_pages · page_size))
        The token's physical row (page · page_size + offset); registered only when ``write``.
    beat, data : In
        A beat is taken this cycle, and its data.
    last : Out(1)
        The next beat is the APPEND's last.
    waddr, wdata, wen : Out
        The K/V memory's write port (``hdl.memport.MemoryPortSignature``); 0 when no beat.

    Latency: a beat is written in the cycle it is taken. ``start`` in the cycle of a beat (the
    previous APPEND's last) takes effect after it.
    """

    def __init__(self, *, page_size, num_pages, kv_heads, beats_per_row, data_bits):
        _check(page_size, num_pages, kv_heads, beats_per_row)
        _check_int("data_bits", data_bits, 1, 1 << 14)
        self._ps, self._N, self._H, self._bpr = page_size, num_pages, kv_heads, beats_per_row
        mem_words = 2 * num_pages * page_size * kv_heads * beats_per_row
        super().__init__({
            "start": In(1), "write": In(1), "row": In(range(num_pages * page_size)),
            "beat": In(1), "data": In(data_bits), "last": Out(1),
            "waddr": Out(max(1, ceil_log2(mem_words))), "wdata": Out(data_bits), "wen": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        HB = self._H * self._bpr           # words per token per K or V
        kv_words = self._N * self._ps * HB  # V words start here
        a_write = Signal()
        a_row = Signal(range(self._N * self._ps))
        a_word = Signal(range(HB))
        a_kv = Signal()
        a_cnt = Signal(range(2 * HB))
        a_last = self.last             # a_cnt = 2·HB − 1: the next beat is the APPEND's last
        with m.If(self.beat):
            m.d.comb += [
                self.waddr.eq(_mul_const(a_row, HB) + a_word + Mux(a_kv, kv_words, 0)),
                self.wdata.eq(self.data),
                self.wen.eq(a_write),
            ]
            m.d.sync += [a_cnt.eq(a_cnt + 1), a_word.eq(Mux(a_word == HB - 1, 0, a_word + 1)),
                         a_last.eq(a_cnt == 2 * HB - 2)]
            with m.If(a_word == HB - 1):
                m.d.sync += a_kv.eq(1)
        # after the beat: takes priority over the last beat's counter updates
        with m.If(self.start):
            m.d.sync += [a_word.eq(0), a_kv.eq(0), a_cnt.eq(0), a_last.eq(0), a_write.eq(self.write)]
            with m.If(self.write):
                m.d.sync += a_row.eq(self.row)
        return m
