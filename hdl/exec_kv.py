"""The KV unit: KV instructions (ALLOC, APPEND, FREE) on the chip's paged KV cache, and the
matmul unit's READ_K / READ_V commands merged with them (docs/chip.md, "The KV unit").

Two components:

* :class:`KVCmdArbiter` merges the commands of the KV unit and of the matmul unit onto the
  controller's one ``cmd`` stream and routes every response back to the one that issued the
  command; READ data goes to the matmul unit.
* :class:`KVExec` is the unit: it owns the :class:`hdl.kvcache.KVCacheController`, its K/V
  data memory (a :class:`hdl.memport.SyncMemory` on the controller's ``mem`` port), a
  :class:`hdl.agu.SpadReader` on one scratchpad read port, and the arbiter; it takes KV
  instructions from the command processor one at a time and turns each into controller
  commands (one per token for APPEND) and the APPEND rows into ``wdata`` beats.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from spec import isa
from spec.codes import ChipError, KVOp, KVStatus

from .agu import SpadReader
from .cmdproc import UnitPortSignature
from .counters import events_layout
from .kvcache import KVCacheController, KVCacheParams
from .memport import SyncMemory
from .scratchpad import READ_LATENCY, address_width, read_port_signature
from .units import InstrSlot, KVReadPortSignature

__all__ = ["KVCmdArbiter", "KVExec", "kv_exec_events_layout"]

#: The opcode the arbiter gives a matmul-unit command that is not READ_K, READ_V or STATUS: the
#: controller answers it BAD_OPCODE and changes nothing.
BAD_OP = 7


def _check_params(params):
    if not isinstance(params, KVCacheParams):
        raise TypeError(f"params must be a KVCacheParams, not {type(params).__name__}")


class KVCmdArbiter(wiring.Component):
    """Merges two command streams onto the KV-cache controller and routes its responses back.

    Round robin between the KV unit (``unit_cmd``) and the matmul unit (``read.cmd``) when
    both have a command; a command presented to the controller stays granted until it is taken.
    The issuer of every command taken goes into a FIFO of :attr:`depth` entries (a command is
    taken only when there is room), so the controller's responses, which come in command order,
    go each to its issuer. READ data (``rdata``) goes to the matmul unit, the only one that
    reads. A matmul-unit command other than READ_K, READ_V or STATUS is passed on with op 7
    (the controller answers BAD_OPCODE to the matmul unit and changes nothing), so the matmul
    port can never allocate, append or free.

    Parameters
    ----------
    params : hdl.kvcache.KVCacheParams
    depth : int
        Commands taken and not yet answered, at most (2..64).

    Members
    -------
    unit_cmd : In(stream.Signature(params.cmd_layout))
    unit_resp : Out(stream.Signature(params.resp_layout))
        The KV unit's commands and their responses, in order.
    read : In(hdl.units.KVReadPortSignature(params))
        The matmul unit's port: ``cmd`` in, ``resp`` and ``rdata`` out.
    cmd : Out(stream.Signature(params.cmd_layout))
    resp : In(stream.Signature(params.resp_layout))
    rdata : In(stream.Signature(params.rdata_layout))
        To and from the controller.

    No latency (the grant is combinational); one command per cycle.
    """

    def __init__(self, *, params, depth=8):
        _check_params(params)
        if not isinstance(depth, int) or isinstance(depth, bool) or not 2 <= depth <= 64:
            raise ValueError(f"depth must be an int in 2..64, not {depth!r}")
        self._params, self._depth = params, depth
        super().__init__({
            "unit_cmd": In(stream.Signature(params.cmd_layout)),
            "unit_resp": Out(stream.Signature(params.resp_layout)),
            "read": In(KVReadPortSignature(params)),
            "cmd": Out(stream.Signature(params.cmd_layout)),
            "resp": In(stream.Signature(params.resp_layout)),
            "rdata": In(stream.Signature(params.rdata_layout)),
        })

    @property
    def depth(self):
        return self._depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.order = order = SyncFIFO(width=1, depth=self._depth)   # 1: the matmul unit
        a, b, out = self.unit_cmd, self.read.cmd, self.cmd
        last = Signal()        # the last grant went to the matmul unit
        locked = Signal()      # a command is presented and not taken: keep its grant
        held = Signal()
        sel = Signal()
        m.d.comb += sel.eq(Mux(locked, held, Mux(a.valid & b.valid, ~last, b.valid)))
        b_op = b.payload.op
        legal = (b_op == KVOp.READ_K) | (b_op == KVOp.READ_V) | (b_op == KVOp.STATUS)
        with m.If(sel):
            m.d.comb += [out.payload.eq(b.payload), out.valid.eq(b.valid & order.w_rdy)]
            with m.If(~legal):
                m.d.comb += out.payload.op.eq(BAD_OP)
        with m.Else():
            m.d.comb += [out.payload.eq(a.payload), out.valid.eq(a.valid & order.w_rdy)]
        take = Signal()
        m.d.comb += [take.eq(out.valid & out.ready),
                     a.ready.eq(~sel & out.ready & order.w_rdy),
                     b.ready.eq(sel & out.ready & order.w_rdy),
                     order.w_en.eq(take), order.w_data.eq(sel)]
        m.d.sync += [locked.eq(out.valid & ~out.ready), held.eq(sel)]
        with m.If(take):
            m.d.sync += last.eq(sel)

        # responses, in command order, to the issuer at the head of the FIFO
        who = order.r_data
        resp = self.resp
        m.d.comb += [
            self.unit_resp.payload.eq(resp.payload), self.read.resp.payload.eq(resp.payload),
            self.unit_resp.valid.eq(resp.valid & order.r_rdy & ~who),
            self.read.resp.valid.eq(resp.valid & order.r_rdy & who),
            resp.ready.eq(order.r_rdy & Mux(who, self.read.resp.ready, self.unit_resp.ready)),
            order.r_en.eq(resp.valid & resp.ready),
        ]
        wiring.connect(m, wiring.flipped(self.rdata), wiring.flipped(self.read.rdata))
        return m


def kv_exec_events_layout():
    """``events`` of :class:`KVExec`: ``busy`` (an instruction is held), ``wait_deps`` (the
    queue's head waits for other units), ``instrs`` (instructions taken), ``stall_input`` (the
    controller waits for an APPEND row from the scratchpad), ``stall_output`` (a command or row
    beat of the unit is not taken: the controller is busy, or the matmul unit holds it),
    ``tokens`` (APPEND commands taken by the controller), ``read_cmds`` (matmul-unit commands
    taken)."""
    return events_layout(["busy", "wait_deps", "instrs", "stall_input", "stall_output", "tokens", "read_cmds"])


class KVExec(wiring.Component):
    """The KV unit: KV instructions on the paged KV cache, and the matmul unit's reads of it.

    One instruction at a time, in program order (:class:`hdl.units.InstrSlot`):

    * ``ALLOC seq`` / ``FREE seq``: one controller command.
    * ``APPEND seq, rows``: one controller APPEND per token t = 0 … rows−1, each followed by
      the token's K row (``kv_heads · head_dim`` elements, head 0 first: :attr:`row_words`
      scratchpad words from ``k_addr + t·k_stride``) and its V row (from ``v_addr +
      t·v_stride``); each scratchpad word is one ``wdata`` beat of the low 8 (int8) or 16
      (bf16) bits of its lanes. Commands are issued ahead of the data (the controller takes the
      next APPEND while the previous one's beats stream), rows are read as soon as their
      command is taken: one beat per cycle over a whole instruction.
    * A controller status other than OK ends the instruction with ``ChipError.KV``, ``detail``
      the :class:`spec.codes.KVStatus`. An APPEND stops issuing tokens at the first refused
      one: the tokens before it are appended, it and the ones after it are not. (The
      controller checks every APPEND before its data and never writes on error. It answers an
      APPEND with its last beat and takes the next APPEND while the beats stream, so up to two
      tokens after a refused one have been taken when the refusal comes back; between the
      APPENDs of one instruction only READs can reach the controller, which change nothing, so
      they are refused with the same status, and their rows, read anyway to keep the data
      stream aligned, are dropped.)
    * An instruction that has started always runs to its end, also when the program aborts
      (the unit takes no instruction while ``abort`` is 1): every KV instruction of a program
      either ran whole or not at all, but for a refused APPEND's tokens as above.
    * An op other than ALLOC, APPEND or FREE (the dispatcher refuses it) is answered
      ``ChipError.BAD_FIELD``, detail 0, without a command.

    Parameters (keyword-only)
    -------------------------
    params : hdl.kvcache.KVCacheParams
        The cache (``KVCacheParams.from_config(config)``); ``beat_elems`` must equal ``lanes``.
    lanes : int
        32-bit lanes of a scratchpad word.
    spad_addr_width : int
        Width of a scratchpad global word address (:attr:`hdl.scratchpad.Scratchpad.addr_width`).
    mem_verilog : bool or None
        Passed to the data memory's :class:`~hdl.memport.SyncMemory` (``None``: a Verilog RAM
        instance above 1 Mbit).

    Members
    -------
    port : In(hdl.cmdproc.UnitPortSignature())
        The command processor's side of the unit; ``progress`` is driven here (a command,
        beat or response moved, a scratchpad read was issued, or the controller advanced).
    read : In(hdl.units.KVReadPortSignature(params))
        The matmul unit's READ_K / READ_V commands, their responses and the READ beats
        (:class:`KVCmdArbiter`).
    spad : Out(hdl.scratchpad.read_port_signature)
        A scratchpad read port (the APPEND rows).
    events : Out(kv_exec_events_layout())
    cache_events : Out(params.events_layout)
        The controller's ``events`` (``kv_reads`` / ``kv_writes``: words of the K/V data memory).

    Latency: an APPEND's first beat reaches the controller about
    ``READ_LATENCY + append_latency + 2`` cycles after the instruction starts; then one beat per
    cycle (``2 · row_words`` per token) while the scratchpad bank and the controller keep up.
    """

    def __init__(self, *, params, lanes, spad_addr_width, mem_verilog=None):
        _check_params(params)
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes != params.beat_elems:
            raise ValueError(f"lanes ({lanes!r}) must equal the cache's beat_elems ({params.beat_elems}): "
                             f"one scratchpad word is one append beat")
        if not isinstance(spad_addr_width, int) or isinstance(spad_addr_width, bool) or \
                not 1 <= spad_addr_width <= isa.SPAD_ADDR_BITS + 1:
            raise ValueError(f"spad_addr_width must be an int in 1..{isa.SPAD_ADDR_BITS + 1}, not {spad_addr_width!r}")
        self._params, self._lanes, self._aw = params, lanes, spad_addr_width
        p = params
        self._cache = KVCacheController(
            page_size=p.page_size, num_pages=p.num_pages, kv_heads=p.kv_heads, head_dim=p.head_dim,
            max_seqs=p.max_seqs, beat_elems=p.beat_elems, dtype=p.dtype)
        self._mem = SyncMemory(depth=p.mem_words, data_width=p.beat_elems * p.elem_bits, verilog=mem_verilog)
        super().__init__({
            "port": In(UnitPortSignature()),
            "read": In(KVReadPortSignature(params)),
            "spad": Out(read_port_signature(addr_width=spad_addr_width, lanes=lanes)),
            "events": Out(kv_exec_events_layout()),
            "cache_events": Out(params.events_layout),
        })

    @classmethod
    def from_config(cls, config, *, mem_verilog=None):
        """The unit of a :class:`hdl.config.ChipConfig` (its ``kvcache`` and ``memory``)."""
        mem = config.memory
        return cls(params=KVCacheParams.from_config(config), lanes=mem.spad_lanes,
                   spad_addr_width=address_width(words=mem.spad_words, banks=mem.spad_banks),
                   mem_verilog=mem_verilog)

    @property
    def params(self):
        return self._params

    @property
    def cache(self):
        """The :class:`hdl.kvcache.KVCacheController` (its ports are the unit's view of the
        cache: a testbench may watch ``cache.resp`` and ``cache.mem``)."""
        return self._cache

    @property
    def memory(self):
        """The K/V data memory (:class:`hdl.memport.SyncMemory`)."""
        return self._mem

    @property
    def row_words(self):
        """Scratchpad words of one token's K (or V) row of every KV head."""
        return self._params.kv_heads * self._params.head_dim // self._lanes

    @property
    def mem_words(self):
        """Words of the K/V data memory (``params.mem_words``)."""
        return self._params.mem_words

    # -- hardware ----------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        p = self._params
        m.submodules.cache = cache = self._cache
        m.submodules.kv_mem = mem = self._mem      # not "mem": the SyncMemory's array is "mem"
        wiring.connect(m, cache.mem, mem.port)
        m.submodules.arbiter = arb = KVCmdArbiter(params=p)
        wiring.connect(m, arb.cmd, cache.cmd)
        wiring.connect(m, cache.resp, arb.resp)
        wiring.connect(m, cache.rdata, arb.rdata)
        wiring.connect(m, wiring.flipped(self.read), arb.read)
        m.d.comb += self.cache_events.eq(cache.events)

        rw = self.row_words
        m.submodules.reader = rd = SpadReader(addr_width=self._aw, lanes=self._lanes,
                                              count_width=max(2, rw.bit_length()), depth=READ_LATENCY + 1)
        wiring.connect(m, rd.port, wiring.flipped(self.spad))
        # a scratchpad word → a wdata beat: the low 8 or 16 bits of every lane
        eb = p.elem_bits
        m.d.comb += [cache.wdata.valid.eq(rd.data.valid), rd.data.ready.eq(cache.wdata.ready),
                     cache.wdata.payload.eq(Cat(rd.data.payload.data[i][:eb] for i in range(self._lanes)))]

        slot = InstrSlot(isa.Opcode.KV)
        slot.elaborate_into(m, self.port, self.events)
        self._sequence(m, slot, arb, rd)

        ev, cev = self.events, cache.events
        cmd = arb.unit_cmd
        beat_wait = cache.wdata.ready & ~cache.wdata.valid
        m.d.comb += [
            ev.stall_input.eq(slot.busy & beat_wait),
            ev.stall_output.eq(slot.busy & ~beat_wait & ((cmd.valid & ~cmd.ready)
                                                         | (cache.wdata.valid & ~cache.wdata.ready))),
            ev.tokens.eq(cmd.valid & cmd.ready & (cmd.payload.op == KVOp.APPEND)),
            ev.read_cmds.eq(arb.read.cmd.valid & arb.read.cmd.ready),
            self.port.progress.eq((cmd.valid & cmd.ready) | (cache.wdata.valid & cache.wdata.ready)
                                  | (arb.unit_resp.valid & arb.unit_resp.ready)
                                  | (rd.port.req.valid & rd.port.req.ready)
                                  | (cev.busy & ~cev.stall_output & ~cev.stall_input & ~cev.stall_dependency)),
        ]
        return m

    def _sequence(self, m, slot, arb, rd):
        """The instruction → controller commands, scratchpad descriptors, and the answer."""
        f = slot.fields
        cmd, resp = arb.unit_cmd, arb.unit_resp
        running = Signal()
        c_left = Signal(16)                     # commands still to issue
        pend = Signal(17)                       # commands issued and not answered
        d_pend = Signal(17)                     # APPEND commands taken whose rows are not yet described
        d_v = Signal()                          # the next descriptor is the token's V row
        k_cur = Signal(isa.SPAD_ADDR_BITS)      # K and V rows of the next token to describe
        v_cur = Signal(isa.SPAD_ADDR_BITS)
        stop = Signal()                         # a command was refused: issue no more
        bad_op = Signal()
        first_err = Signal(KVStatus)
        held = Signal()                         # a command is presented and not yet taken
        is_append = f.op == KVOp.APPEND
        legal = (f.op == KVOp.ALLOC) | is_append | (f.op == KVOp.FREE)

        with m.If(slot.start):
            m.d.sync += [running.eq(1), c_left.eq(Mux(is_append, f.rows, Mux(legal, 1, 0))),
                         pend.eq(0), d_pend.eq(0), d_v.eq(0), k_cur.eq(f.k_addr), v_cur.eq(f.v_addr),
                         stop.eq(0), bad_op.eq(~legal), first_err.eq(KVStatus.OK)]

        # commands: the instruction's op and seq, one per token for APPEND; none is presented
        # from the cycle a refusal comes back (one presented before stays until taken)
        refused = Signal()
        m.d.comb += refused.eq(resp.valid & (resp.payload.status != KVStatus.OK))
        m.d.comb += [cmd.valid.eq(running & (c_left != 0) & (~(stop | refused) | held)),
                     cmd.payload.op.eq(f.op), cmd.payload.seq.eq(f.seq)]
        m.d.sync += held.eq(cmd.valid & ~cmd.ready)
        took = Signal()
        m.d.comb += took.eq(cmd.valid & cmd.ready)
        with m.If(took):
            m.d.sync += c_left.eq(c_left - 1)

        # descriptors: the K row, then the V row, of every APPEND the controller took
        desc = rd.desc.payload
        m.d.comb += [rd.desc.valid.eq(running & (d_pend != 0)),
                     desc.base.eq(Mux(d_v, v_cur, k_cur)), desc.count0.eq(self.row_words),
                     desc.count1.eq(1), desc.count2.eq(1), desc.stride0.eq(1)]
        described = Signal()
        m.d.comb += described.eq(rd.desc.valid & rd.desc.ready & d_v)
        with m.If(rd.desc.valid & rd.desc.ready):
            m.d.sync += d_v.eq(~d_v)
            with m.If(d_v):
                m.d.sync += [k_cur.eq(k_cur + f.k_stride), v_cur.eq(v_cur + f.v_stride)]
        m.d.sync += d_pend.eq(d_pend + (took & is_append) - described)

        # responses: count them, keep the first refusal
        m.d.comb += resp.ready.eq(1)
        answered = Signal()
        m.d.comb += answered.eq(resp.valid)
        m.d.sync += pend.eq(pend + took - answered)
        with m.If(refused & ~stop):
            m.d.sync += [stop.eq(1), first_err.eq(resp.payload.status)]

        # the answer, once every command issued is answered (so its rows were all consumed)
        with m.If(running & ((c_left == 0) | stop) & ~held & (pend == 0) & (d_pend == 0)):
            m.d.sync += running.eq(0)
            m.d.comb += slot.finish.eq(1)
            with m.If(bad_op):
                m.d.comb += [slot.status.eq(ChipError.BAD_FIELD), slot.detail.eq(0)]
            with m.Elif(stop):
                m.d.comb += [slot.status.eq(ChipError.KV), slot.detail.eq(first_err)]
            with m.Else():
                m.d.comb += [slot.status.eq(ChipError.OK), slot.detail.eq(0)]
