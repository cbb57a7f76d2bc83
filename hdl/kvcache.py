"""Paged KV-cache controller: block tables, a hardware free list, many sequences.

Implements :class:`golden.PagedKVCache` exactly (docs/numerics.md "Paged KV cache"; the
protocol and timing are in docs/kvcache.md). One command at a time is decoded; READ_K/READ_V
hand their rows to a read engine that streams them while the next commands are decoded, so
back-to-back READs (for example one head after the other) stream without bubbles. An APPEND
that follows an APPEND is accepted while the previous one's beats stream and checked with its
last beat, against the length and pages that APPEND left, so back-to-back APPENDs stream
their data one beat per cycle with no cycle between commands. A READ's
``block``/``group`` fields order its beats the way the matmul engine loads weight tiles
(:func:`golden.kvcache.read_order`).

Storage:

* K/V data: an external synchronous memory behind the ``mem`` port (an SRAM macro or BRAM
  array next to the controller, or a DRAM/HBM front end in a larger system; the default
  configuration's 1.5 MB is more than an ECP5 holds, and an Amaranth ``Memory`` that size makes
  the Verilog tens of MB of initializers). ``mem_words`` = ``2 · num_pages · page_size ·
  kv_heads · beats_per_row`` words of ``beat_elems`` elements (K first, then V); the word of
  (kv, page, row, head, beat) is at
  ``((kv·num_pages + page)·page_size + row)·kv_heads·beats_per_row + head·beats_per_row + beat``;
* in ``amaranth.lib.memory.Memory`` (synchronous, non-transparent read ports): block tables,
  ``max_seqs × 2**ceil_log2(num_pages)`` physical page numbers;
* free list: a ``num_pages``-entry LIFO stack, written 0 on top … num_pages−1 at the bottom by
  an initialization walk of ``num_pages`` cycles after every reset (``cmd.ready`` stays low).

Sequence slots are registers: a valid bit, the 16-bit id (matched by a parallel compare), the
length and the page that receives the next token.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spec.codes import KVOp, KVStatus

from .counters import events_layout
from .memport import MemoryPortSignature
from .params import check_int as _check_int

__all__ = ["KVCacheController", "KVCacheParams"]

SEQ_ID_BITS = 16
HEAD_BITS = 8


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


class KVCacheParams:
    """The parameters of a :class:`KVCacheController` and every constant derived from them
    (port layouts, widths, timing), without the hardware: what testbenches and drivers need.
    Same keyword-only parameters and checks as the controller.
    """

    def __init__(self, *, page_size, num_pages, kv_heads, head_dim, max_seqs, beat_elems, dtype):
        _check_int("page_size", page_size, 1, 256)
        if page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two, not {page_size}")
        _check_int("num_pages", num_pages, 2, 65536)
        _check_int("kv_heads", kv_heads, 1, 64)
        _check_int("head_dim", head_dim, 1, 1024)
        _check_int("max_seqs", max_seqs, 1, 1024)
        _check_int("beat_elems", beat_elems, 1, head_dim)
        if head_dim % beat_elems:
            raise ValueError(f"beat_elems ({beat_elems}) must divide head_dim ({head_dim})")
        if dtype not in ("int8", "bf16"):
            raise ValueError(f"dtype must be 'int8' or 'bf16', not {dtype!r}")
        self._page_size = page_size
        self._num_pages = num_pages
        self._kv_heads = kv_heads
        self._head_dim = head_dim
        self._max_seqs = max_seqs
        self._beat_elems = beat_elems
        self._dtype = dtype
        self._length_bits = (num_pages * page_size).bit_length()
        self._page_count_bits = num_pages.bit_length()

    @classmethod
    def from_config(cls, config):
        """The instance for an :class:`hdl.config.ChipConfig` (its ``kv_*`` parameters)."""
        return cls(page_size=config.kvcache.page_size, num_pages=config.kvcache.pages,
                   kv_heads=config.kvcache.heads, head_dim=config.kvcache.head_dim,
                   max_seqs=config.kvcache.max_seqs, beat_elems=config.kvcache.beat_elems,
                   dtype=config.kvcache.dtype)

    # -- parameters and derived constants ----------------------------------------------------
    page_size = property(lambda self: self._page_size)
    num_pages = property(lambda self: self._num_pages)
    kv_heads = property(lambda self: self._kv_heads)
    head_dim = property(lambda self: self._head_dim)
    max_seqs = property(lambda self: self._max_seqs)
    beat_elems = property(lambda self: self._beat_elems)
    dtype = property(lambda self: self._dtype)

    @property
    def elem_bits(self):
        """Bits of one stored element: 8 (int8) or 16 (bf16)."""
        return 8 if self._dtype == "int8" else 16

    @property
    def beats_per_row(self):
        return self._head_dim // self._beat_elems

    @property
    def append_beats(self):
        """wdata beats that follow every APPEND: 2 · kv_heads · beats_per_row."""
        return 2 * self._kv_heads * self.beats_per_row

    @property
    def max_length(self):
        return self._num_pages * self._page_size

    @property
    def length_bits(self):
        return self._length_bits

    @property
    def group_bits(self):
        """Width of the READ ``group`` field (beats per group; 0 = the whole row)."""
        return self.beats_per_row.bit_length()

    @property
    def cmd_layout(self):
        return data.StructLayout({"op": KVOp, "seq": SEQ_ID_BITS, "head": HEAD_BITS,
                                  "start": self._length_bits, "count": self._length_bits,
                                  "block": self._length_bits, "group": self.group_bits})

    @property
    def resp_layout(self):
        return data.StructLayout({"status": KVStatus, "op": KVOp, "length": self._length_bits,
                                  "pages": self._page_count_bits,
                                  "free_pages": self._page_count_bits})

    @property
    def rdata_layout(self):
        return data.StructLayout({"data": 16 * self._beat_elems, "last": 1})

    @property
    def mem_words(self):
        """Words of the external K/V memory: 2 · num_pages · page_size · kv_heads ·
        beats_per_row."""
        return 2 * self._num_pages * self._page_size * self._kv_heads * self.beats_per_row

    @property
    def mem_addr_bits(self):
        return max(1, ceil_log2(self.mem_words))

    @property
    def mem_signature(self):
        """The K/V data memory port (controller side), :class:`hdl.memport.MemoryPortSignature`
        of :attr:`mem_addr_bits` × ``beat_elems`` elements: a synchronous read port (``rdata``
        is the word at the ``raddr`` of the previous cycle in which ``ren`` was 1) and a write
        port with one enable."""
        return MemoryPortSignature(self.mem_addr_bits, self._beat_elems * self.elem_bits)

    @property
    def events_layout(self):
        """The layout of the ``events`` port (every field a flag)."""
        return events_layout(["busy", "cmds", "cmds_rejected", "beats_in", "beats_out", "stall_output",
                              "stall_input", "stall_dependency", "kv_reads", "kv_writes", "table_reads",
                              "table_writes", "free_list_writes"])

    @property
    def command_cycles(self):
        """Cycles the decoder spends on a command besides its data beats: accept, execute,
        respond. An APPEND's response leaves with its last data beat, and an APPEND that
        follows an APPEND is accepted and executed while that one's beats stream, so a run
        of APPENDs costs ``append_beats`` cycles each after the first one's
        :attr:`append_latency`."""
        return 3

    @property
    def append_latency(self):
        """Cycles from an APPEND's acceptance on ``cmd`` to its first ``wdata`` beat when the
        decoder is idle (accept, execute). An APPEND that follows an APPEND is accepted and
        checked while the previous one's beats stream: its first beat follows the previous
        APPEND's last beat in the next cycle."""
        return 2

    @property
    def read_latency(self):
        """Cycles from a READ's acceptance on ``cmd`` to its first ``rdata`` beat (idle read
        engine, ready response and data streams)."""
        return 7

    @property
    def throughput(self):
        """READ and APPEND data beats per cycle while streaming."""
        return 1

    @property
    def init_cycles(self):
        """Cycles after reset before ``cmd.ready`` rises (free-list initialization)."""
        return self._num_pages


class KVCacheController(KVCacheParams, wiring.Component):
    """Paged KV cache for up to ``max_seqs`` sequences sharing ``num_pages`` pages.

    Parameters (keyword-only)
    -------------------------
    page_size : int
        Tokens per page, a power of two 1..256.
    num_pages : int
        Physical pages, 2..65536.
    kv_heads : int
        KV heads per token, 1..64.
    head_dim : int
        Elements per head row, 1..1024.
    max_seqs : int
        Sequences live at once, 1..1024.
    beat_elems : int
        Elements per append/read beat, 1..head_dim, dividing head_dim.
    dtype : str
        ``"int8"`` or ``"bf16"``.

    Members
    -------
    cmd : In(stream.Signature(cmd_layout))
        ``op`` (3 bits, :class:`golden.KVOp`), ``seq`` (16-bit id), ``head`` (8 bits),
        ``start`` and ``count`` (rows, ``length_bits`` each), and for READ_K/READ_V the beat
        order: ``block`` (positions per block, ``length_bits``; 0 = all ``count``) and
        ``group`` (beats per group, :attr:`group_bits`; 0 = the whole row; must divide
        ``beats_per_row``, else BAD_SHAPE), see :func:`golden.kvcache.read_order`.
    wdata : In(stream.Signature(beat_elems · element bits))
        APPEND data: every APPEND is followed by exactly :attr:`append_beats` beats (K of head
        0 … kv_heads−1, then V likewise; each row ``beats_per_row`` beats, element ``i`` of a
        beat in bits ``[i·w, (i+1)·w)``, w = 8 or 16). They are consumed whether or not the
        APPEND succeeds and written only if it does; the APPEND is checked before its first
        beat is accepted, and the length grows after its last beat, so an error never writes.
    resp : Out(stream.Signature(resp_layout))
        One response per command, in command order: ``status`` (4 bits,
        :class:`golden.KVStatus`), ``op``, ``length``, ``pages``, ``free_pages``.
    rdata : Out(stream.Signature(rdata_layout))
        READ beats: for each block of positions, for each group of beats of a row, for each
        position of the block, the group's beats (``block = group = 0``: rows in position
        order, ``beats_per_row`` beats per row; Q·Kᵀ on an R×C array with ``beat_elems = C``:
        ``block = C, group = R / C``; P·V: ``block = 0, group = 1``); ``data`` holds
        ``beat_elems`` 16-bit lanes (int8 sign-extended, bf16 bit patterns), ``last`` marks the
        final beat of a READ. A READ's response comes before its data.
    mem : Out(hdl.memport.MemoryPortSignature(mem_addr_bits, beat_elems · element bits))
        The K/V data memory (:attr:`mem_signature`): ``raddr``/``ren`` → ``rdata`` one cycle
        later (synchronous read), ``waddr``/``wdata``/``wen`` (write). Never read and written
        at one address in one cycle.
    events : Out(events_layout)
        What the controller does in each cycle (docs/conventions.md, "Counters"): ``busy``
        (anything but waiting for a command in IDLE), ``cmds`` (commands taken),
        ``cmds_rejected`` (responses with a status other than OK), ``beats_in`` (``wdata``),
        ``beats_out`` (``rdata``), at most one stall reason: ``stall_output`` (a response or
        read beat not taken), ``stall_input`` (an APPEND waits for its data),
        ``stall_dependency`` (a FREE waits for the read engine, or a READ for the previous
        one's last beats); memory words read and written: ``kv_reads``, ``kv_writes`` (the
        K/V data memory), ``table_reads``, ``table_writes`` (block tables),
        ``free_list_writes`` (the free-page stack; its top is read continuously).

    Throughput: READ data one beat per cycle sustained in any block/group order (the
    block-table entry of every beat is looked up in the read pipeline), across page
    boundaries and from one READ to the next when each READ streams at least :attr:`command_cycles` beats. APPEND data
    one beat per cycle sustained over back-to-back APPENDs (the next APPEND is accepted
    while the beats stream and checked with the last one); an APPEND after another command
    starts :attr:`append_latency` cycles after its acceptance. FREE waits until the
    read engine is idle, then walks the sequence's block table (one page per cycle).
    A READ and the commands after it overlap; an APPEND may overlap a READ of any sequence
    (it writes a row no READ can reach).
    Latency: :attr:`read_latency` cycles from a READ command's acceptance to its first beat.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range; the message names it.
    """

    def __init__(self, *, page_size, num_pages, kv_heads, head_dim, max_seqs, beat_elems, dtype):
        KVCacheParams.__init__(self, page_size=page_size, num_pages=num_pages, kv_heads=kv_heads,
                               head_dim=head_dim, max_seqs=max_seqs, beat_elems=beat_elems, dtype=dtype)
        wiring.Component.__init__(self, {
            "cmd": In(stream.Signature(self.cmd_layout)),
            "wdata": In(stream.Signature(beat_elems * self.elem_bits)),
            "resp": Out(stream.Signature(self.resp_layout)),
            "rdata": Out(stream.Signature(self.rdata_layout)),
            "mem": Out(self.mem_signature),
            "events": Out(self.events_layout),
        })

    # -- hardware ----------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        N, ps, H, S = self._num_pages, self._page_size, self._kv_heads, self._max_seqs
        bpr = self.beats_per_row
        bw = max(bpr, 2)                   # range of beat counters (no zero-width signal)
        HB = H * bpr                       # words per token per K or V
        lg_ps = exact_log2(ps)
        lg_N = ceil_log2(N)
        pidx = max(1, lg_N)                # bits of a physical page number
        kv_words = N * ps * HB             # V words start here
        max_len = self.max_length
        eb = self.elem_bits

        def pages_of(length):
            return (length + (ps - 1)) >> lg_ps

        # -- storage (the K/V words are in the external memory behind ``mem``) --
        mem = self.mem
        m.submodules.block_tables = btab = Memory(shape=pidx, depth=S << lg_N, init=[])
        bt_w = btab.write_port()
        bt_r = btab.read_port()
        m.submodules.free_stack = stack = Memory(shape=pidx, depth=N, init=[])
        st_w = stack.write_port()
        st_r = stack.read_port()

        sp = Signal(range(N + 1), init=N)  # free pages; top of stack at sp - 1
        m.d.comb += st_r.addr.eq(sp - 1)

        slot_valid = Array(Signal(name=f"slot_valid{i}") for i in range(S))
        slot_id = Array(Signal(SEQ_ID_BITS, name=f"slot_id{i}") for i in range(S))
        slot_len = Array(Signal(range(max_len + 1), name=f"slot_len{i}") for i in range(S))
        slot_tail = Array(Signal(pidx, name=f"slot_tail{i}") for i in range(S))

        # -- output FIFOs --
        m.submodules.resp_fifo = resp_fifo = SyncFIFOBuffered(width=self.resp_layout.size, depth=3)
        m.d.comb += [
            self.resp.valid.eq(resp_fifo.r_rdy),
            self.resp.payload.eq(resp_fifo.r_data),
            resp_fifo.r_en.eq(self.resp.ready),
        ]
        rd_depth = 6  # 2 reads in flight + the FIFO's own 2-cycle latency, with slack
        m.submodules.rdata_fifo = rd_fifo = SyncFIFOBuffered(width=self.rdata_layout.size,
                                                             depth=rd_depth)
        m.d.comb += [
            self.rdata.valid.eq(rd_fifo.r_rdy),
            self.rdata.payload.eq(rd_fifo.r_data),
            rd_fifo.r_en.eq(self.rdata.ready),
        ]

        # -- command registers and slot lookup --
        c = Signal(self.cmd_layout)
        hits = Signal(S)
        # the slot lookup compares the incoming command's id (registered as it is accepted)
        in_seq = self.cmd.payload.seq
        m.d.comb += hits.eq(Cat(slot_valid[i] & (slot_id[i] == in_seq) for i in range(S)))
        # ids are unique among valid slots (ALLOC refuses a duplicate), so at most one hit:
        # the slot number, length and tail page are AND-OR selected, no priority encoder or mux
        def select(values):
            out = 0
            for i, v in enumerate(values):
                out = out | Mux(hits[i], v, 0)
            return out

        hit_slot = Signal(range(S))
        m.d.comb += hit_slot.eq(select(range(S)) if S > 1 else 0)
        hit_len = Signal(range(max_len + 1))
        m.d.comb += hit_len.eq(select(slot_len[i] for i in range(S)))
        hit_tail = Signal(pidx)
        m.d.comb += hit_tail.eq(select(slot_tail[i] for i in range(S)))
        free_slot = Signal(range(S))
        for i in reversed(range(S)):
            with m.If(~slot_valid[i]):
                m.d.comb += free_slot.eq(i)
        any_free = Signal()
        m.d.comb += any_free.eq(~Cat(slot_valid[i] for i in range(S)).all())
        r_hit = Signal()
        r_slot = Signal(range(S))
        r_free_slot = Signal(range(S))
        r_any_free = Signal()
        cur_len = Signal(range(max_len + 1))   # the addressed slot's length and tail page,
        cur_tail = Signal(pidx)                # registered as the command is accepted

        resp = Signal(self.resp_layout)
        m.d.comb += resp_fifo.w_data.eq(resp)

        def respond(status, length=0, pages=0, free=0):
            m.d.sync += [resp.status.eq(status), resp.op.eq(c.op), resp.length.eq(length),
                         resp.pages.eq(pages), resp.free_pages.eq(free)]

        # -- read engine: stage 1 issues a block-table read, stage 2 the data read, stage 3
        # writes the FIFO --
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
        rg_can_load = Signal()
        m.d.comb += rg_can_load.eq(~rg_active | issue_last)
        rg_idle = Signal()
        m.d.comb += rg_idle.eq(~rg_active & ~s2_valid & ~s3_valid)

        # the block-table read port serves the read engine, except in FREE_WALK (FSM below)
        m.d.comb += bt_r.addr.eq((rg_slot << lg_N) | (rg_pos >> lg_ps))
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
        phys = bt_r.data
        row_index = ((_mul_const(s2_kv, N) + phys) << lg_ps) | s2_off
        m.d.comb += [mem.raddr.eq(_mul_const(row_index, HB) + s2_word),
                     mem.ren.eq(s2_valid)]
        word = mem.rdata
        if eb == 8:
            lanes = Cat(Cat(word[8 * i:8 * i + 8], word[8 * i + 7].replicate(8))
                        for i in range(self._beat_elems))
        else:
            lanes = word
        m.d.comb += [rd_fifo.w_en.eq(s3_valid), rd_fifo.w_data.eq(Cat(lanes, s3_last))]

        # -- APPEND and FREE state --
        a_write = Signal()
        a_row = Signal(range(N * ps))  # physical row (page · page_size + offset) of the token
        a_word = Signal(range(HB))
        a_kv = Signal()
        a_cnt = Signal(range(2 * HB))
        a_last = Signal()              # a_cnt = 2·HB − 1: the next beat is the APPEND's last
        f_i = Signal(range(N + 1))
        f_pages = Signal(range(N + 1))
        f_push = Signal()
        init_i = Signal(range(N))

        boundary = Signal()
        m.d.comb += boundary.eq((cur_len & (ps - 1)) == 0)

        # READ shape (block, group) decoded in EXEC, loaded into the read engine on dispatch;
        # the group check and the READ's end position are registered as the command is
        # accepted (off the EXEC status path)
        in_group = self.cmd.payload.group
        group_ok = Signal()
        read_end = Signal(range(2 * max_len + 1))
        in_c = self.cmd.payload
        r_blk = Signal(range(max_len + 1))     # block (0 → count), block − 1, count − 1
        r_blk_m1 = Signal(range(max_len))
        r_cnt_m1 = Signal(range(max_len))
        one_block = Signal()
        m.d.comb += one_block.eq(c.count <= r_blk)
        d_first_m1 = Signal(range(max_len))
        d_left = Signal(range(max_len + 1))
        d_block_m1 = Signal(range(max_len))
        d_gm1 = Signal(range(bw))
        new_page = Signal(pidx)
        m.d.comb += new_page.eq(Mux(boundary, st_r.data, cur_tail))

        # an APPEND accepted while the previous APPEND's beats stream waits (``nxt``) and is
        # executed with that APPEND's last beat; the previous APPEND's check, page and length
        # update happened in its own EXEC, so the slot lookup registered at acceptance sees them
        nxt = Signal()

        def accept():
            m.d.sync += [c.eq(self.cmd.payload),
                         group_ok.eq((in_group == 0) | Cat(
                             in_group == d for d in range(1, bpr + 1) if bpr % d == 0).any()),
                         read_end.eq(in_c.start + in_c.count),
                         r_blk.eq(Mux(in_c.block == 0, in_c.count, in_c.block)),
                         r_blk_m1.eq(Mux(in_c.block == 0, in_c.count, in_c.block) - 1),
                         r_cnt_m1.eq(in_c.count - 1),
                         r_hit.eq(hits.any()), r_slot.eq(hit_slot),
                         cur_len.eq(hit_len), cur_tail.eq(hit_tail),
                         r_free_slot.eq(free_slot), r_any_free.eq(any_free)]

        # an APPEND's check and its effect on the slot (length, tail page, block table, free
        # stack), then its beats: in EXEC, or with the previous APPEND's last beat (one copy of
        # the logic, below the FSM, whichever state asks for it). The length is updated here,
        # not at the last beat: no command is executed before this APPEND's last beat, and an
        # APPEND accepted meanwhile must see the new length (back-to-back APPENDs of one
        # sequence).
        exec_a = Signal()

        def exec_append():
            m.d.comb += exec_a.eq(1)
            m.next = "APPEND_DATA"

        with m.FSM(init="INIT") as fsm:
            with m.State("INIT"):
                m.d.comb += [st_w.addr.eq(init_i), st_w.data.eq(N - 1 - init_i), st_w.en.eq(1)]
                m.d.sync += init_i.eq(init_i + 1)
                with m.If(init_i == N - 1):
                    m.d.sync += sp.eq(N)
                    m.next = "IDLE"

            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    accept()
                    m.next = "EXEC"

            with m.State("EXEC"):
                m.next = "RESP"
                m.d.sync += nxt.eq(0)
                m.d.sync += [d_first_m1.eq(Mux(one_block, r_cnt_m1, r_blk_m1)),
                             d_left.eq(Mux(one_block, 0, c.count - r_blk)),
                             d_block_m1.eq(r_blk_m1),
                             d_gm1.eq(Mux(c.group == 0, bpr - 1, c.group - 1))]
                with m.Switch(c.op):
                    with m.Case(KVOp.ALLOC):
                        with m.If(r_hit):
                            respond(KVStatus.DUPLICATE_SEQ)
                        with m.Elif(~r_any_free):
                            respond(KVStatus.TOO_MANY_SEQS)
                        with m.Else():
                            m.d.sync += [slot_valid[r_free_slot].eq(1),
                                         slot_id[r_free_slot].eq(c.seq),
                                         slot_len[r_free_slot].eq(0)]
                            respond(KVStatus.OK, 0, 0, sp)
                    with m.Case(KVOp.STATUS):
                        with m.If(~r_hit):
                            respond(KVStatus.UNKNOWN_SEQ)
                        with m.Else():
                            respond(KVStatus.OK, cur_len, pages_of(cur_len), sp)
                    with m.Case(KVOp.READ_K, KVOp.READ_V):
                        with m.If(~r_hit):
                            respond(KVStatus.UNKNOWN_SEQ)
                        with m.Elif(c.head >= H):
                            respond(KVStatus.HEAD_OUT_OF_RANGE)
                        with m.Elif(~group_ok):
                            respond(KVStatus.BAD_SHAPE)
                        with m.Elif(read_end > cur_len):
                            respond(KVStatus.READ_PAST_LENGTH)
                        with m.Else():
                            respond(KVStatus.OK, cur_len, pages_of(cur_len), sp)
                            with m.If(c.count != 0):
                                m.next = "READ_DISPATCH"
                    with m.Case(KVOp.APPEND):
                        exec_append()
                    with m.Case(KVOp.FREE):
                        with m.If(~r_hit):
                            respond(KVStatus.UNKNOWN_SEQ)
                        with m.Else():
                            m.d.sync += [f_i.eq(0), f_pages.eq(pages_of(cur_len)), f_push.eq(0)]
                            m.next = "FREE_WAIT"
                    with m.Default():
                        respond(KVStatus.BAD_OPCODE)

            with m.State("READ_DISPATCH"):
                with m.If(rg_can_load & resp_fifo.w_rdy):
                    m.d.comb += resp_fifo.w_en.eq(1)
                    m.d.sync += [rg_active.eq(1), rg_slot.eq(r_slot), rg_head.eq(c.head),
                                 rg_kv.eq(c.op == KVOp.READ_V), rg_pos.eq(c.start),
                                 rg_bstart.eq(c.start), rg_beat.eq(0), rg_gbase.eq(0),
                                 rg_j.eq(d_gm1), rg_gm1.eq(d_gm1), rg_bcnt.eq(d_first_m1),
                                 rg_blen_m1.eq(d_first_m1), rg_left.eq(d_left),
                                 rg_block_m1.eq(d_block_m1)]
                    m.next = "IDLE"

            with m.State("APPEND_DATA"):
                m.d.comb += self.wdata.ready.eq(1)
                # a next APPEND is accepted while the beats stream (not with the last one);
                # other commands wait for IDLE, so their timing is that of an idle decoder
                early = ~nxt & ~a_last & (self.cmd.payload.op == KVOp.APPEND)
                m.d.comb += self.cmd.ready.eq(early)
                with m.If(self.cmd.valid & early):
                    accept()
                    m.d.sync += nxt.eq(1)
                with m.If(self.wdata.valid):
                    m.d.comb += [
                        mem.waddr.eq(_mul_const(a_row, HB) + a_word + Mux(a_kv, kv_words, 0)),
                        mem.wdata.eq(self.wdata.payload),
                        mem.wen.eq(a_write),
                    ]
                    m.d.sync += [a_cnt.eq(a_cnt + 1), a_word.eq(Mux(a_word == HB - 1, 0, a_word + 1)),
                                 a_last.eq(a_cnt == 2 * HB - 2)]
                    with m.If(a_word == HB - 1):
                        m.d.sync += a_kv.eq(1)
                    with m.If(a_last):
                        # the response (set in EXEC) goes out with the last beat if it can; a
                        # waiting APPEND is executed in the same cycle, its first beat is
                        # accepted in the next one
                        with m.If(resp_fifo.w_rdy):
                            m.d.comb += resp_fifo.w_en.eq(1)
                            with m.If(nxt):
                                exec_append()
                            with m.Else():
                                m.next = "IDLE"
                        with m.Else():
                            m.next = "RESP"

            with m.State("FREE_WAIT"):
                with m.If(rg_idle):
                    m.next = "FREE_WALK"

            with m.State("FREE_WALK"):
                m.d.comb += bt_r.addr.eq((r_slot << lg_N) | f_i)
                m.d.sync += f_push.eq(f_i < f_pages)
                with m.If(f_i < f_pages):
                    m.d.sync += f_i.eq(f_i + 1)
                with m.If(f_push):
                    m.d.comb += [st_w.addr.eq(sp), st_w.data.eq(bt_r.data), st_w.en.eq(1)]
                    m.d.sync += sp.eq(sp + 1)
                with m.Elif(f_i == f_pages):
                    m.d.sync += slot_valid[r_slot].eq(0)
                    respond(KVStatus.OK, 0, 0, sp)
                    m.next = "RESP"

            with m.State("RESP"):
                with m.If(resp_fifo.w_rdy):
                    m.d.comb += resp_fifo.w_en.eq(1)
                    m.next = "IDLE"
                    with m.If(nxt):
                        m.next = "EXEC"

        # after the FSM: takes priority over the last beat's counter updates
        with m.If(exec_a):
            m.d.sync += [a_word.eq(0), a_kv.eq(0), a_cnt.eq(0), a_last.eq(0), a_write.eq(0),
                         nxt.eq(0)]
            with m.If(~r_hit):
                respond(KVStatus.UNKNOWN_SEQ)
            with m.Elif(boundary & (sp == 0)):
                respond(KVStatus.OUT_OF_PAGES)
            with m.Else():
                m.d.sync += [
                    a_write.eq(1),
                    a_row.eq((new_page << lg_ps) | (cur_len & (ps - 1))),
                    slot_len[r_slot].eq(cur_len + 1),
                ]
                respond(KVStatus.OK, cur_len + 1, pages_of(cur_len + 1), sp - boundary)
                with m.If(boundary):
                    m.d.sync += [sp.eq(sp - 1), slot_tail[r_slot].eq(st_r.data)]
                    m.d.comb += [
                        bt_w.addr.eq((r_slot << lg_N) | (cur_len >> lg_ps)),
                        bt_w.data.eq(st_r.data),
                        bt_w.en.eq(1),
                    ]

        # -- events --
        ev = self.events
        stall_output = (self.resp.valid & ~self.resp.ready) | (self.rdata.valid & ~self.rdata.ready)
        m.d.comb += [
            ev.busy.eq(~fsm.ongoing("IDLE") | ~rg_idle | resp_fifo.r_rdy | rd_fifo.r_rdy),
            ev.cmds.eq(self.cmd.valid & self.cmd.ready),
            ev.cmds_rejected.eq(resp_fifo.w_en & (resp.status != KVStatus.OK)),
            ev.beats_in.eq(self.wdata.valid & self.wdata.ready),
            ev.beats_out.eq(self.rdata.valid & self.rdata.ready),
            ev.stall_output.eq(stall_output),
            ev.stall_input.eq(~stall_output & fsm.ongoing("APPEND_DATA") & ~self.wdata.valid),
            ev.stall_dependency.eq(~stall_output & (fsm.ongoing("FREE_WAIT")
                                                    | (fsm.ongoing("READ_DISPATCH") & ~rg_can_load))),
            ev.kv_reads.eq(mem.ren), ev.kv_writes.eq(mem.wen),
            ev.table_reads.eq(issue | fsm.ongoing("FREE_WALK")), ev.table_writes.eq(bt_w.en),
            ev.free_list_writes.eq(st_w.en),
        ]
        return m
