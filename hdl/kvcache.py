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

The controller is the command decoder wired to its parts, each a component with its own tests
(tests/test_kvcache_parts_sim.py):

* :class:`~hdl.kvcache_slots.SlotTable`: the sequence slots and their lookup;
* :class:`~hdl.kvcache_slots.FreeList`: the free-page stack and its initialization walk;
* :class:`~hdl.kvcache_data.ReadEngine`: a READ's beats, block-table lookups and K/V reads → ``rdata``;
* :class:`~hdl.kvcache_data.AppendWriter`: an APPEND's beats → the K/V memory.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spec.codes import KVOp, KVStatus

from .counters import events_layout
from .kvcache_data import AppendWriter, ReadEngine, check_geometry
from .kvcache_slots import SEQ_ID_BITS, FreeList, SlotTable
from .memport import MemoryPortSignature
from .params import check_int as _check_int

__all__ = ["KVCacheController", "KVCacheParams"]

HEAD_BITS = 8


class KVCacheParams:
    """The parameters of a :class:`KVCacheController` and every constant derived from them
    (port layouts, widths, timing), without the hardware: what testbenches and drivers need.
    Same keyword-only parameters and checks as the controller.
    """

    def __init__(self, *, page_size, num_pages, kv_heads, head_dim, max_seqs, beat_elems, dtype):
        check_geometry(page_size, num_pages, kv_heads)
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
        engine, ready response and data streams): EXEC, READ_DISPATCH, then the
        :class:`~hdl.kvcache_data.ReadEngine`'s latency (5)."""
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
        N, ps, S = self._num_pages, self._page_size, self._max_seqs
        lg_N = ceil_log2(N)
        pidx = max(1, lg_N)                # bits of a physical page number

        # -- parts (the K/V words are in the external memory behind ``mem``) --
        m.submodules.slots = slots = SlotTable(max_seqs=S, max_len=self.max_length, page_bits=pidx)
        m.submodules.free = free = FreeList(num_pages=N)
        m.submodules.block_tables = btab = Memory(shape=pidx, depth=S << lg_N, init=[])
        bt_w = btab.write_port()
        bt_r = btab.read_port()
        m.submodules.reader = rd = ReadEngine(
            page_size=ps, num_pages=N, kv_heads=self._kv_heads, max_seqs=S,
            beats_per_row=self.beats_per_row, beat_elems=self._beat_elems, elem_bits=self.elem_bits)
        m.submodules.appender = wr = AppendWriter(
            page_size=ps, num_pages=N, kv_heads=self._kv_heads, beats_per_row=self.beats_per_row,
            data_bits=self._beat_elems * self.elem_bits)
        m.submodules.resp_fifo = resp_fifo = SyncFIFOBuffered(width=self.resp_layout.size, depth=3)
        m.d.comb += [
            self.resp.valid.eq(resp_fifo.r_rdy),
            self.resp.payload.eq(resp_fifo.r_data),
            resp_fifo.r_en.eq(self.resp.ready),
            self.mem.raddr.eq(rd.raddr), self.mem.ren.eq(rd.ren), rd.rdata.eq(self.mem.rdata),
            self.mem.waddr.eq(wr.waddr), self.mem.wdata.eq(wr.wdata), self.mem.wen.eq(wr.wen),
            wr.data.eq(self.wdata.payload),
            # the block-table read port serves the read engine, except in FREE_WALK (below)
            bt_r.addr.eq(rd.bt_addr), rd.bt_data.eq(bt_r.data),
        ]
        wiring.connect(m, rd.rdata_out, wiring.flipped(self.rdata))

        k = self._decoder_registers(m, slots, free, resp_fifo)
        k.rd, k.wr, k.bt_r, k.bt_w = rd, wr, bt_r, bt_w
        rl = rd.load.payload
        m.d.comb += [rl.slot.eq(k.r_slot), rl.head.eq(k.c.head), rl.kv.eq(k.c.op == KVOp.READ_V),
                     rl.start.eq(k.c.start), rl.gm1.eq(k.d_gm1), rl.first_m1.eq(k.d_first_m1),
                     rl.left.eq(k.d_left), rl.block_m1.eq(k.d_block_m1)]

        # one command at a time; the free list's initialization walk holds the first
        with m.FSM(init="IDLE") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(free.ready)
                with m.If(self.cmd.valid & free.ready):
                    k.accept()
                    m.next = "EXEC"

            with m.State("EXEC"):
                self._exec(m, k)

            with m.State("READ_DISPATCH"):
                m.d.comb += rd.load.valid.eq(resp_fifo.w_rdy)
                with m.If(rd.load.ready & resp_fifo.w_rdy):
                    m.d.comb += resp_fifo.w_en.eq(1)
                    m.next = "IDLE"

            with m.State("APPEND_DATA"):
                self._append_data(m, k)

            with m.State("FREE_WAIT"):
                with m.If(rd.idle):
                    m.next = "FREE_WALK"

            with m.State("FREE_WALK"):
                self._free_walk(m, k)

            with m.State("RESP"):
                with m.If(resp_fifo.w_rdy):
                    m.d.comb += resp_fifo.w_en.eq(1)
                    m.next = "IDLE"
                    with m.If(k.nxt):
                        m.next = "EXEC"

        # after the FSM: takes priority over the last beat's updates
        self._exec_append(m, k)
        self._events(m, k, fsm)
        return m

    # -- parts of elaborate -------------------------------------------------------------------
    def _decoder_registers(self, m, slots, free, resp_fifo):
        """The command decoder's registers: the command, its slot lookup and READ shape (taken as
        the command is accepted, off the EXEC status path), the response, the FREE walk.
        Returns them as a namespace, with ``accept()`` and ``respond(...)``."""
        ps, bpr, max_len = self._page_size, self.beats_per_row, self.max_length
        N, S = self._num_pages, self._max_seqs
        bw = max(bpr, 2)                   # range of beat counters (no zero-width signal)
        pidx = max(1, ceil_log2(N))
        k = SimpleNamespace(slots=slots, free=free, resp_fifo=resp_fifo)
        k.c = c = Signal(self.cmd_layout)
        # the slot lookup compares the incoming command's id (registered as it is accepted)
        m.d.comb += slots.seq.eq(self.cmd.payload.seq)
        k.r_hit = Signal()
        k.r_slot = Signal(range(S))
        k.r_free_slot = Signal(range(S))
        k.r_any_free = Signal()
        k.cur_len = cur_len = Signal(range(max_len + 1))   # the addressed slot's length and tail
        k.cur_tail = Signal(pidx)                          # page, registered as it is accepted

        k.resp = resp = Signal(self.resp_layout)
        m.d.comb += resp_fifo.w_data.eq(resp)

        def respond(status, length=0, pages=0, free=0):
            m.d.sync += [resp.status.eq(status), resp.op.eq(c.op), resp.length.eq(length),
                         resp.pages.eq(pages), resp.free_pages.eq(free)]
        k.respond = respond

        # APPEND and FREE state
        k.f_i = Signal(range(N + 1))
        k.f_pages = Signal(range(N + 1))
        k.f_push = Signal()
        k.boundary = Signal()
        m.d.comb += k.boundary.eq((cur_len & (ps - 1)) == 0)

        # READ shape (block, group) decoded in EXEC, loaded into the read engine on dispatch;
        # the group check and the READ's end position are registered as the command is
        # accepted (off the EXEC status path)
        in_group = self.cmd.payload.group
        k.group_ok = Signal()
        k.read_end = Signal(range(2 * max_len + 1))
        in_c = self.cmd.payload
        k.r_blk = Signal(range(max_len + 1))     # block (0 → count), block − 1, count − 1
        k.r_blk_m1 = Signal(range(max_len))
        k.r_cnt_m1 = Signal(range(max_len))
        k.one_block = Signal()
        m.d.comb += k.one_block.eq(c.count <= k.r_blk)
        k.d_first_m1 = Signal(range(max_len))
        k.d_left = Signal(range(max_len + 1))
        k.d_block_m1 = Signal(range(max_len))
        k.d_gm1 = Signal(range(bw))
        k.new_page = Signal(pidx)
        m.d.comb += k.new_page.eq(Mux(k.boundary, free.top, k.cur_tail))

        # an APPEND accepted while the previous APPEND's beats stream waits (``nxt``) and is
        # executed with that APPEND's last beat; the previous APPEND's check, page and length
        # update happened in its own EXEC, so the slot lookup registered at acceptance sees them
        k.nxt = Signal()
        k.exec_a = Signal()

        def accept():
            m.d.sync += [c.eq(self.cmd.payload),
                         k.group_ok.eq((in_group == 0) | Cat(
                             in_group == d for d in range(1, bpr + 1) if bpr % d == 0).any()),
                         k.read_end.eq(in_c.start + in_c.count),
                         k.r_blk.eq(Mux(in_c.block == 0, in_c.count, in_c.block)),
                         k.r_blk_m1.eq(Mux(in_c.block == 0, in_c.count, in_c.block) - 1),
                         k.r_cnt_m1.eq(in_c.count - 1),
                         k.r_hit.eq(slots.hit), k.r_slot.eq(slots.slot),
                         cur_len.eq(slots.length), k.cur_tail.eq(slots.tail),
                         k.r_free_slot.eq(slots.free_slot), k.r_any_free.eq(slots.any_free)]
        k.accept = accept
        return k

    def _pages_of(self, length):
        return (length + (self._page_size - 1)) >> exact_log2(self._page_size)

    def _exec(self, m, k):
        """EXEC: the command's checks, its effect and its response (an APPEND: see
        :meth:`_exec_append`); a READ goes on to READ_DISPATCH, a FREE to FREE_WAIT."""
        H, bpr, c, sp, respond = self._kv_heads, self.beats_per_row, k.c, k.free.count, k.respond
        pages_of = self._pages_of
        m.next = "RESP"
        m.d.sync += k.nxt.eq(0)
        m.d.sync += [k.d_first_m1.eq(Mux(k.one_block, k.r_cnt_m1, k.r_blk_m1)),
                     k.d_left.eq(Mux(k.one_block, 0, c.count - k.r_blk)),
                     k.d_block_m1.eq(k.r_blk_m1),
                     k.d_gm1.eq(Mux(c.group == 0, bpr - 1, c.group - 1))]
        with m.Switch(c.op):
            with m.Case(KVOp.ALLOC):
                with m.If(k.r_hit):
                    respond(KVStatus.DUPLICATE_SEQ)
                with m.Elif(~k.r_any_free):
                    respond(KVStatus.TOO_MANY_SEQS)
                with m.Else():
                    m.d.comb += [k.slots.alloc.eq(1), k.slots.alloc_slot.eq(k.r_free_slot),
                                 k.slots.alloc_id.eq(c.seq)]
                    respond(KVStatus.OK, 0, 0, sp)
            with m.Case(KVOp.STATUS):
                with m.If(~k.r_hit):
                    respond(KVStatus.UNKNOWN_SEQ)
                with m.Else():
                    respond(KVStatus.OK, k.cur_len, pages_of(k.cur_len), sp)
            with m.Case(KVOp.READ_K, KVOp.READ_V):
                with m.If(~k.r_hit):
                    respond(KVStatus.UNKNOWN_SEQ)
                with m.Elif(c.head >= H):
                    respond(KVStatus.HEAD_OUT_OF_RANGE)
                with m.Elif(~k.group_ok):
                    respond(KVStatus.BAD_SHAPE)
                with m.Elif(k.read_end > k.cur_len):
                    respond(KVStatus.READ_PAST_LENGTH)
                with m.Else():
                    respond(KVStatus.OK, k.cur_len, pages_of(k.cur_len), sp)
                    with m.If(c.count != 0):
                        m.next = "READ_DISPATCH"
            with m.Case(KVOp.APPEND):
                self._start_append(m, k)
            with m.Case(KVOp.FREE):
                with m.If(~k.r_hit):
                    respond(KVStatus.UNKNOWN_SEQ)
                with m.Else():
                    m.d.sync += [k.f_i.eq(0), k.f_pages.eq(pages_of(k.cur_len)), k.f_push.eq(0)]
                    m.next = "FREE_WAIT"
            with m.Default():
                respond(KVStatus.BAD_OPCODE)

    @staticmethod
    def _start_append(m, k):
        m.d.comb += k.exec_a.eq(1)
        m.next = "APPEND_DATA"

    def _append_data(self, m, k):
        """APPEND_DATA: the APPEND's beats into the append writer; its response with the last
        one, and a next APPEND accepted meanwhile executed with it."""
        m.d.comb += self.wdata.ready.eq(1)
        # a next APPEND is accepted while the beats stream (not with the last one);
        # other commands wait for IDLE, so their timing is that of an idle decoder
        early = ~k.nxt & ~k.wr.last & (self.cmd.payload.op == KVOp.APPEND)
        m.d.comb += self.cmd.ready.eq(early)
        with m.If(self.cmd.valid & early):
            k.accept()
            m.d.sync += k.nxt.eq(1)
        with m.If(self.wdata.valid):
            m.d.comb += k.wr.beat.eq(1)
            with m.If(k.wr.last):
                # the response (set in EXEC) goes out with the last beat if it can; a
                # waiting APPEND is executed in the same cycle, its first beat is
                # accepted in the next one
                with m.If(k.resp_fifo.w_rdy):
                    m.d.comb += k.resp_fifo.w_en.eq(1)
                    with m.If(k.nxt):
                        self._start_append(m, k)
                    with m.Else():
                        m.next = "IDLE"
                with m.Else():
                    m.next = "RESP"

    def _free_walk(self, m, k):
        """FREE_WALK: the sequence's pages from its block table onto the free stack, one per
        cycle; then the slot is released."""
        lg_N = ceil_log2(self._num_pages)
        m.d.comb += k.bt_r.addr.eq((k.r_slot << lg_N) | k.f_i)
        m.d.sync += k.f_push.eq(k.f_i < k.f_pages)
        with m.If(k.f_i < k.f_pages):
            m.d.sync += k.f_i.eq(k.f_i + 1)
        with m.If(k.f_push):
            m.d.comb += [k.free.push.eq(1), k.free.page.eq(k.bt_r.data)]
        with m.Elif(k.f_i == k.f_pages):
            m.d.comb += [k.slots.release.eq(1), k.slots.release_slot.eq(k.r_slot)]
            k.respond(KVStatus.OK, 0, 0, k.free.count)
            m.next = "RESP"

    def _exec_append(self, m, k):
        """An APPEND's check and its effect on the slot (length, tail page, block table, free
        stack), then its beats: in EXEC, or with the previous APPEND's last beat (one copy of
        the logic, whichever state asks for it). The length is updated here, not at the last
        beat: no command is executed before this APPEND's last beat, and an APPEND accepted
        meanwhile must see the new length (back-to-back APPENDs of one sequence)."""
        ps, lg_ps, lg_N = self._page_size, exact_log2(self._page_size), ceil_log2(self._num_pages)
        sp, cur_len, r_slot, boundary, respond = k.free.count, k.cur_len, k.r_slot, k.boundary, k.respond
        pages_of = self._pages_of
        with m.If(k.exec_a):
            m.d.comb += k.wr.start.eq(1)
            m.d.sync += k.nxt.eq(0)
            with m.If(~k.r_hit):
                respond(KVStatus.UNKNOWN_SEQ)
            with m.Elif(boundary & (sp == 0)):
                respond(KVStatus.OUT_OF_PAGES)
            with m.Else():
                m.d.comb += [
                    k.wr.write.eq(1),
                    k.wr.row.eq((k.new_page << lg_ps) | (cur_len & (ps - 1))),
                    k.slots.grow.eq(1), k.slots.grow_slot.eq(r_slot), k.slots.grow_length.eq(cur_len + 1),
                ]
                respond(KVStatus.OK, cur_len + 1, pages_of(cur_len + 1), sp - boundary)
                with m.If(boundary):
                    m.d.comb += [k.free.pop.eq(1), k.slots.new_tail.eq(1), k.slots.tail_page.eq(k.free.top)]
                    m.d.comb += [
                        k.bt_w.addr.eq((r_slot << lg_N) | (cur_len >> lg_ps)),
                        k.bt_w.data.eq(k.free.top),
                        k.bt_w.en.eq(1),
                    ]

    def _events(self, m, k, fsm):
        """The ``events`` port (docs/conventions.md, "Counters")."""
        ev = self.events
        stall_output = (self.resp.valid & ~self.resp.ready) | (self.rdata.valid & ~self.rdata.ready)
        m.d.comb += [
            ev.busy.eq(~fsm.ongoing("IDLE") | ~k.free.ready | ~k.rd.idle | k.resp_fifo.r_rdy | self.rdata.valid),
            ev.cmds.eq(self.cmd.valid & self.cmd.ready),
            ev.cmds_rejected.eq(k.resp_fifo.w_en & (k.resp.status != KVStatus.OK)),
            ev.beats_in.eq(self.wdata.valid & self.wdata.ready),
            ev.beats_out.eq(self.rdata.valid & self.rdata.ready),
            ev.stall_output.eq(stall_output),
            ev.stall_input.eq(~stall_output & fsm.ongoing("APPEND_DATA") & ~self.wdata.valid),
            ev.stall_dependency.eq(~stall_output & (fsm.ongoing("FREE_WAIT")
                                                    | (fsm.ongoing("READ_DISPATCH") & ~k.rd.load.ready))),
            ev.kv_reads.eq(self.mem.ren), ev.kv_writes.eq(self.mem.wen),
            ev.table_reads.eq(k.rd.table_read | fsm.ongoing("FREE_WALK")), ev.table_writes.eq(k.bt_w.en),
            ev.free_list_writes.eq(k.free.write),
        ]
