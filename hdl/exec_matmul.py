"""The MATMUL execution unit: MATMUL instructions → the matmul engine, with its activation reader,
result writer and operand feeders (docs/chip.md, "The MATMUL unit").

:class:`MatmulExec` takes MATMUL instructions from its :class:`~hdl.cmdproc.UnitPortSignature`
into a ring of ``depth`` entries as soon as there is room, whether their waits are satisfied or
not, and works on them in program order in five places, each with its own pointer into the
ring:

* the weight and parameter *requesters* (:mod:`hdl.exec_matmul_feed`) read the external
  weights (EXT, EXT_T) and the parameters of every instruction in the ring, ahead of the
  engine: weights and parameters are read-only in a program, so reading them early is always
  right, and the next instruction's weights stream in while the current one computes;
* the *starter* starts the oldest instruction not started once its waits are satisfied: it sends
  the engine command, the KV cache's READ (KV_K, KV_V: the K/V rows are written by earlier KV
  APPENDs, so they are read only now) and, once every earlier MATMUL has answered (so that a
  MATMUL always reads the results of the ones before it), the activation walk;
* the weight and parameter *forwarders* feed the engine's ``w`` and ``p`` ports, one
  instruction after the other (the engine takes a command's beats only while it runs);
* the *finisher* writes the engine's results to the scratchpad, takes the engine's response
  and answers ``done``.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spec import isa
from spec import matmul_layout as layout
from spec.codes import ChipError, KVOp, KVStatus, OutFormat

from .agu import SpadReader, SpadWriter
from .cmdproc import INDEX_BITS, UnitPortSignature, deps_satisfied
from .counters import events_layout
from .dma import ReadClientSignature
from .exec_matmul_feed import ParamFeeder, WeightFeeder
from .kvcache import KVCacheParams
from .matmul import MatmulEngine, command_layout, engine_events_layout
from .scratchpad import address_width, read_port_signature, write_port_signature
from .units import KVReadPortSignature

__all__ = ["MatmulExec", "exec_events_layout", "kv_feed_possible", "AXI_DETAIL_WEIGHTS", "AXI_DETAIL_PARAMS"]

#: ERROR_DETAIL of an AXI_READ error of a MATMUL: its weights, or its parameters.
AXI_DETAIL_WEIGHTS = 1
AXI_DETAIL_PARAMS = 2
#: Bits of an instruction's engine beats (⌈N/C⌉·K or ⌈K/R⌉·N < 2**32).
_BEATS_BITS = 32
_HDR_BITS = 128


def exec_events_layout(depth):
    """The unit's ``events`` (docs/chip.md lists them)."""
    return events_layout({"busy": 1, "wait_deps": 1, "stall_weight": 1, "stall_activation": 1, "stall_output": 1,
                          "instrs": 1, "started": 1, "w_ready_at_start": 1, "w_words": 1, "p_words": 1,
                          "kv_beats": 1, "dropped": exact_log2(depth) + 1})


def kv_feed_possible(config):
    """Whether the KV cache's READ beats are the engine's weight beats on this chip: one beat is
    C elements, and R divides head_dim (docs/kvcache.md)."""
    kv, arr = config.kvcache, config.array
    return kv.beat_elems == arr.cols and kv.head_dim % arr.rows == 0 and arr.rows == arr.cols


class MatmulExec(wiring.Component):
    """The MATMUL unit: instruction ring, operand feeders, activation reader, the
    :class:`~hdl.matmul.MatmulEngine`, result writer.

    Parameters
    ----------
    engine : MatmulEngine
        R = C = L (the scratchpad lanes).
    spad_addr_width : int
        Bits of a scratchpad word address.
    bus_bits, addr_width, beats_width : int
        The AXI read engine's data width, address width and request ``beats`` width.
    kv_params : hdl.kvcache.KVCacheParams
        The KV cache's layouts (the ``kv`` port).
    depth : int
        Ring entries: instructions taken and not yet answered, a power of two 2..16.

    Members
    -------
    port : In(UnitPortSignature())
    wdma, pdma : Out(ReadClientSignature)
        The weight and parameter read clients of the chip's AXI read engine.
    spad_r : Out(read_port_signature)
        Activations: per instruction one walk, i1 = K tile (stride 1), i0 = row (``a_stride``);
        a word's lanes' low 16 bits are the engine's ``a`` beat.
    spad_w : Out(write_port_signature)
        Results: i1 = N tile (stride 1), i0 = row (``o_stride``); a word is an ``o`` beat's
        lanes (int32, int8 sign-extended, fp32 bits, bf16 in the low half), lanes past N 0.
    kv : Out(KVReadPortSignature(kv_params))
        READ_K (KV_K: ``block`` = C, ``group`` = 1, ``count`` = n, ``start`` = kv_start) and
        READ_V (KV_V: ``block`` = 0, ``group`` = 1, ``count`` = k), one per started instruction.
    events : Out(exec_events_layout(depth))
        ``busy``; ``wait_deps`` (the next instruction waits for other units); the engine waits
        for ``stall_output`` (a result for the writer), else ``stall_weight`` (a weight beat),
        else ``stall_activation`` (an activation word); ``instrs`` (taken), ``started``;
        ``w_ready_at_start`` (a command accepted by the engine whose first weight beat was
        already waiting); ``w_words``, ``p_words`` (bus words read), ``kv_beats``;
        ``dropped`` (instructions dropped by an abort).
    engine_events : Out(engine_events_layout(R, C))
        The engine's own ``events`` (docs/matmul.md).

    Errors: the engine's code → ChipError.MATMUL (detail: MatmulStatus; only BAD_REQUANT is
    reachable past the dispatcher); a refused READ → ChipError.KV (detail: KVStatus; the engine
    is fed zero weights and the results are not written); an AXI error on the weights or the
    parameters → ChipError.AXI_READ (detail :data:`AXI_DETAIL_WEIGHTS` or
    :data:`AXI_DETAIL_PARAMS`; no result is written once the failed operand's last beat has been
    taken).
    Every started instruction ends. On ``port.abort`` the instructions not started are dropped,
    their requested words read and discarded, and the unit is idle once the started ones have
    answered.

    Latency: an instruction is in the ring 3 cycles after it is taken and its requests start the
    cycle after; a start takes 1 cycle once its waits are satisfied; the engine command is
    accepted the cycle after the previous command's response (docs/matmul.md); ``done`` 3
    cycles after the engine's response (the writer's last ``done``). Throughput: the engine's.
    """

    def __init__(self, *, engine, spad_addr_width, bus_bits, addr_width, beats_width, kv_params, depth=4):
        if not isinstance(engine, MatmulEngine):
            raise TypeError(f"engine must be a MatmulEngine, not {type(engine).__name__}")
        if engine.rows != engine.cols:
            raise ValueError(f"the unit needs a square array (R = C = scratchpad lanes), not "
                             f"{engine.rows}×{engine.cols}")
        if not isinstance(depth, int) or isinstance(depth, bool) or not 2 <= depth <= 16 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two in 2..16, not {depth!r}")
        if not isinstance(kv_params, KVCacheParams):
            raise TypeError(f"kv_params must be a KVCacheParams, not {type(kv_params).__name__}")
        self._engine, self._depth, self._kv = engine, depth, kv_params
        self._L = L = engine.cols
        self._sa, self._aw, self._bus_bytes = spad_addr_width, addr_width, bus_bits // 8
        self._record = layout.param_beat_bytes(L, self._bus_bytes)
        # bus words of the weights: beats · (C or 2·C) / bus bytes, rounded up
        self._ww = _BEATS_BITS + max(0, exact_log2(2 * L) - exact_log2(self._bus_bytes)) + 1
        self._pw = 16 + ceil_log2(self._record // self._bus_bytes + 1)
        feed = dict(cols=L, bus_bits=bus_bits, addr_width=addr_width, beats_width=beats_width)
        self._wfeed = WeightFeeder(**feed, words_width=self._ww, job_beats_width=_BEATS_BITS,
                                   kv_data_bits=kv_params.rdata_layout["data"].width, kv_depth=depth)
        self._pfeed = ParamFeeder(**feed, words_width=self._pw, job_beats_width=16, record_bytes=self._record)
        self._reader = SpadReader(addr_width=spad_addr_width, lanes=L)
        self._writer = SpadWriter(addr_width=spad_addr_width, lanes=L)
        client = ReadClientSignature(addr_width=addr_width, data_width=bus_bits, beats_width=beats_width)
        super().__init__({
            "port": In(UnitPortSignature()),
            "wdma": Out(client), "pdma": Out(client),
            "spad_r": Out(read_port_signature(addr_width=spad_addr_width, lanes=L)),
            "spad_w": Out(write_port_signature(addr_width=spad_addr_width, lanes=L)),
            "kv": Out(KVReadPortSignature(kv_params)),
            "events": Out(exec_events_layout(depth)),
            "engine_events": Out(engine_events_layout(engine.rows, engine.cols)),
        })

    @classmethod
    def from_config(cls, config, *, beats_width, depth=4):
        """The unit of a :class:`~hdl.config.ChipConfig` (its engine from ``MatmulEngine.from_config``)."""
        mem = config.memory
        return cls(engine=MatmulEngine.from_config(config),
                   spad_addr_width=address_width(words=mem.spad_words, banks=mem.spad_banks),
                   bus_bits=mem.axi_data_bits, addr_width=mem.axi_addr_bits, beats_width=beats_width,
                   kv_params=KVCacheParams.from_config(config), depth=depth)

    engine = property(lambda self: self._engine)
    depth = property(lambda self: self._depth)

    @property
    def param_record_bytes(self):
        """External bytes of one N tile's parameters (``spec.matmul_layout.param_beat_bytes``)."""
        return self._record

    def _entry_layout(self):
        """What the ring keeps of an instruction (decoded and sized once, at intake)."""
        sa, aw = self._sa, self._aw
        return data.StructLayout({
            "index": INDEX_BITS, "hdr": _HDR_BITS, "cmd": command_layout(),
            "a_addr": sa, "a_stride": 16, "o_addr": sa, "o_stride": 16, "kt": 16, "nt": 16,
            "kv": 1, "kv_cmd": self._kv.cmd_layout,
            "w_addr": aw, "w_words": self._ww, "w_beats": _BEATS_BITS, "w16": 1,
            "p_addr": aw, "p_words": self._pw, "p_beats": 16,
        })

    # -- elaboration --------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self._engine
        m.submodules.wfeed = wf = self._wfeed
        m.submodules.pfeed = pf = self._pfeed
        m.submodules.reader = rd = self._reader
        m.submodules.writer = wr = self._writer
        wiring.connect(m, wf.dma, wiring.flipped(self.wdma))
        wiring.connect(m, pf.dma, wiring.flipped(self.pdma))
        wiring.connect(m, rd.port, wiring.flipped(self.spad_r))
        wiring.connect(m, wr.port, wiring.flipped(self.spad_w))
        m.d.comb += [wf.kv_resp.valid.eq(self.kv.resp.valid), wf.kv_resp.payload.status.eq(self.kv.resp.payload.status),
                     self.kv.resp.ready.eq(wf.kv_resp.ready)]
        wiring.connect(m, wiring.flipped(self.kv.rdata), wf.kv_rdata)
        m.d.comb += self.engine_events.eq(eng.events)

        D = self._depth
        lg = exact_log2(D)
        s = _State(m, self._entry_layout(), D)
        s.abort = self.port.abort
        # the operands go to the engine, except those of a command it refused (sunk, so that
        # the operands of the commands after it stay in step)
        sink_w, sink_p, sink_a = (s.refused & (ptr == s.done) for ptr in (s.fw_w, s.fw_p, s.a_ptr))
        m.d.comb += [eng.w.payload.eq(wf.w.payload), eng.w.valid.eq(wf.w.valid & ~sink_w),
                     wf.w.ready.eq(eng.w.ready | sink_w),
                     eng.p.payload.eq(pf.p.payload), eng.p.valid.eq(pf.p.valid & ~sink_p),
                     pf.p.ready.eq(eng.p.ready | sink_p),
                     eng.a.valid.eq(rd.data.valid & ~sink_a), rd.data.ready.eq(eng.a.ready | sink_a)]
        for r in range(self._L):
            m.d.comb += eng.a.payload[r].eq(rd.data.payload.data[r][:16])
        with m.If(rd.data.valid & rd.data.ready & rd.data.payload.last):
            m.d.sync += s.a_ptr.eq(s.a_ptr + 1)
        self._intake(m, s)
        self._starter(m, s, eng, rd)
        self._finisher(m, s, eng, wr, wf)
        self._feeders(m, s, wf, pf)

        # the end of an abort: every started instruction answered, every requested word read
        started_all_done = (s.done == s.st) & ~s.issuing
        quiet = wf.quiet & pf.quiet & s.intake_idle
        abort_end = Signal()
        m.d.comb += abort_end.eq(self.port.abort & started_all_done & quiet)
        with m.If(abort_end):
            m.d.sync += [p.eq(s.st) for p in (s.tail, s.req_w, s.req_p, s.fw_w, s.fw_p, s.a_ptr)]
        m.d.comb += self.port.idle.eq((s.done == s.tail) & ~s.issuing & quiet)
        self._events(m, s, eng, wf, pf, rd, wr, abort_end, lg)
        return m

    def _intake(self, m, s):
        """Take → size (one multiply) → the ring: 3 cycles per instruction."""
        L, port = self._L, self.port
        lgL = exact_log2(L)
        f = data.View(isa.layout(isa.Opcode.MATMUL), port.instr.payload.bits)
        e = Signal(self._entry_layout())
        x, y = Signal(16), Signal(16)
        prod = Signal(_BEATS_BITS)
        ext = Signal()
        full = (s.tail - s.done)[:len(s.tail)] == s.depth
        with m.FSM(name="intake"):
            with m.State("TAKE"):
                m.d.comb += [s.intake_idle.eq(1), port.instr.ready.eq(~full & ~s.abort)]
                with m.If(port.instr.valid & port.instr.ready):
                    self._decode(m, f, e, x, y, ext, lgL)
                    m.d.sync += [e.index.eq(port.instr.payload.index), e.hdr.eq(port.instr.payload.bits[:_HDR_BITS])]
                    m.next = "SIZE"
            with m.State("SIZE"):
                m.d.sync += prod.eq(x * y)
                m.next = "PUSH"
            with m.State("PUSH"):
                new = Signal(self._entry_layout())
                w_bytes = Mux(e.w16, prod << (lgL + 1), prod << lgL)
                lgD = exact_log2(self._bus_bytes)
                m.d.comb += [new.eq(e), new.w_beats.eq(prod),
                             new.w_words.eq(Mux(ext, (w_bytes + (self._bus_bytes - 1)) >> lgD, 0))]
                s.write(m, s.tail, new)
                m.d.sync += s.tail.eq(s.tail + 1)
                m.next = "TAKE"

    def _decode(self, m, f, e, x, y, ext, lgL):
        """The ring entry of MATMUL ``f`` but its sizes, and the factors of its weight beats."""
        L = self._L
        kt = (f.k + (L - 1)) >> lgL
        nt = (f.n + (L - 1)) >> lgL
        transposed = (f.w_src == isa.WSource.EXT_T) | (f.w_src == isa.WSource.KV_K)
        kv = (f.w_src == isa.WSource.KV_K) | (f.w_src == isa.WSource.KV_V)
        need_p = f.has_bias | (f.out_fmt == OutFormat.INT8)
        cmd = e.cmd
        m.d.sync += [
            cmd.m.eq(f.m), cmd.k.eq(f.k), cmd.n.eq(f.n), cmd.dtype.eq(f.dtype), cmd.out_fmt.eq(f.out_fmt),
            cmd.w_transposed.eq(transposed), cmd.a_unsigned.eq(f.a_unsigned), cmd.has_bias.eq(f.has_bias),
            cmd.w_wide.eq(f.w_wide), cmd.interleave.eq(f.interleave),
            e.a_addr.eq(f.a_addr), e.a_stride.eq(f.a_stride), e.o_addr.eq(f.o_addr), e.o_stride.eq(f.o_stride),
            e.kt.eq(kt), e.nt.eq(nt), e.kv.eq(kv),
            e.kv_cmd.op.eq(Mux(f.w_src == isa.WSource.KV_K, KVOp.READ_K, KVOp.READ_V)),
            e.kv_cmd.seq.eq(f.kv_seq), e.kv_cmd.head.eq(f.kv_head), e.kv_cmd.start.eq(f.kv_start),
            e.kv_cmd.count.eq(Mux(f.w_src == isa.WSource.KV_K, f.n, f.k)),
            e.kv_cmd.block.eq(Mux(f.w_src == isa.WSource.KV_K, L, 0)), e.kv_cmd.group.eq(1),
            e.w_addr.eq(f.w_addr), e.w16.eq(f.dtype | f.w_wide),
            e.p_addr.eq(f.p_addr), e.p_beats.eq(Mux(need_p, nt, 0)),
            e.p_words.eq(Mux(need_p, nt * (self._record // self._bus_bytes), 0)),
            ext.eq(~kv),
            # weight beats: ⌈K/R⌉·N transposed, ⌈N/C⌉·K rows, ⌈N/C⌉·⌈K/2⌉ wide
            x.eq(Mux(transposed, kt, nt)),
            y.eq(Mux(transposed, f.n, Mux(f.w_wide, (f.k + 1) >> 1, f.k))),
        ]

    def _starter(self, m, s, eng, rd):
        """Start the oldest instruction not started once its waits are satisfied."""
        cur = s.pick(m, s.st, "start_entry")
        hdr = Cat(cur.hdr, Const(0, isa.INSTR_BITS - _HDR_BITS))
        deps_ok = deps_satisfied(m, hdr, self.port.retired, name="mm_deps_ok")
        iss_ptr = Signal.like(s.st)
        iss = s.pick(m, iss_ptr, "issue_entry")      # stays in the ring until it has answered
        cmd_sent, kv_sent, a_sent = Signal(), Signal(), Signal()
        m.d.comb += s.can_start.eq((s.st != s.tail) & ~s.abort & deps_ok & ~s.issuing)
        m.d.comb += s.waiting.eq((s.st != s.tail) & ~s.issuing & ~deps_ok & ~s.abort)
        with m.If(s.can_start):
            m.d.sync += [s.issuing.eq(1), iss_ptr.eq(s.st), s.st.eq(s.st + 1),
                         cmd_sent.eq(0), kv_sent.eq(~cur.kv), a_sent.eq(0)]
        hold = self._dtype_switch_hold(m, eng, iss)
        desc = rd.desc.payload
        m.d.comb += [eng.cmd.payload.eq(iss.cmd), self.kv.cmd.payload.eq(iss.kv_cmd),
                     desc.base.eq(iss.a_addr), desc.stride0.eq(iss.a_stride), desc.count0.eq(iss.cmd.m),
                     desc.stride1.eq(1), desc.count1.eq(iss.kt), desc.count2.eq(1), desc.stride2.eq(0),
                     eng.cmd.valid.eq(s.issuing & ~cmd_sent & ~hold), self.kv.cmd.valid.eq(s.issuing & ~kv_sent),
                     # a MATMUL reads its activations once every earlier MATMUL has answered
                     rd.desc.valid.eq(s.issuing & ~a_sent & (s.done == iss_ptr) & (iss.cmd.m != 0) & (iss.kt != 0))]
        # an empty walk (m or k is 0: a command the engine refuses) reads nothing: it is done at once
        empty = (iss.cmd.m == 0) | (iss.kt == 0)
        a_now = s.issuing & ~a_sent & (s.done == iss_ptr) & empty
        with m.If(a_now):
            m.d.sync += s.a_ptr.eq(s.a_ptr + 1)
        c = cmd_sent | (eng.cmd.valid & eng.cmd.ready)
        k = kv_sent | (self.kv.cmd.valid & self.kv.cmd.ready)
        a = a_sent | (rd.desc.valid & rd.desc.ready) | a_now
        with m.If(s.issuing):
            m.d.sync += [cmd_sent.eq(c), kv_sent.eq(k), a_sent.eq(a)]
            with m.If(c & k & a):
                m.d.sync += s.issuing.eq(0)

    def _dtype_switch_hold(self, m, eng, iss):
        """1 while a bf16 command must not go to the engine yet: an int8 command is in it, or its
        response was taken less than the array's bf16 latency ago.

        The engine's array delays each row's valid flag on one line as long as the bf16 latency,
        tapped at the int8 depth in int8 mode; an int8 row's flag goes on down the line, and
        comes out at the bf16 tap as a result that is not there once a bf16 command switches the
        tap: the bf16 command then writes wrong sums or waits for ever (stall_dependency), e.g.
        int8 3×16×8 then bf16 1×16×8 on the default 8×8 engine (sim.matmul_api.run_jobs). Until
        the engine clears that line, a bf16 command after an int8 one waits for it to empty."""
        settle = self._engine.array.latency
        int8_in = Signal()
        left = Signal(range(settle + 1))
        with m.If(eng.cmd.valid & eng.cmd.ready & ~eng.cmd.payload.dtype):
            m.d.sync += int8_in.eq(1)
        with m.If(eng.resp.valid & eng.resp.ready & int8_in):
            m.d.sync += [int8_in.eq(0), left.eq(settle)]
        with m.Elif(left != 0):
            m.d.sync += left.eq(left - 1)
        hold = Signal()
        m.d.comb += hold.eq(iss.cmd.dtype & (int8_in | (left != 0)))
        return hold

    def _finisher(self, m, s, eng, wr, wf):
        """Results → the scratchpad, the engine's response, ``done``; one instruction at a time."""
        L = self._L
        cur = s.pick(m, s.done, "done_entry")
        code = Signal(4)
        wdone = Signal()
        rows_left, tiles_left = Signal(16), Signal(16)
        # a refused KV READ is known when the weight forwarder begins the instruction, before the
        # engine's first result (the ring's flag only once the forwarder has finished it)
        failed = (s.err_axi_w[s.done[:s.lg]] | s.err_axi_p[s.done[:s.lg]] | s.err_kv[s.done[:s.lg]]
                  | ((s.fw_w == s.done) & wf.err.kv))
        with m.If(wr.done):
            m.d.sync += wdone.eq(1)
        desc = wr.desc.payload
        m.d.comb += [desc.base.eq(cur.o_addr), desc.stride0.eq(cur.o_stride), desc.count0.eq(cur.cmd.m),
                     desc.stride1.eq(1), desc.count1.eq(cur.nt), desc.count2.eq(1), desc.stride2.eq(0)]
        # lanes past N in the last N tile are written 0; nothing is written once the instruction failed
        n_last = ((cur.cmd.n - 1) & (L - 1)) + 1
        beat = wr.data.payload
        for c in range(L):
            keep = (tiles_left != 1) | (n_last > c)
            m.d.comb += beat.data[c].eq(Mux(keep, eng.o.payload.data[c], 0))
        m.d.comb += beat.mask.eq(Mux(failed, 0, (1 << L) - 1))
        idx = s.done[:s.lg]
        with m.FSM(name="finish"):
            with m.State("WAIT"):
                with m.If(s.done != s.st):
                    with m.If(eng.o.valid):
                        m.next = "DESC"
                    with m.Elif(eng.resp.valid):      # the engine refused the command: no results
                        m.d.comb += eng.resp.ready.eq(1)
                        m.d.sync += [code.eq(eng.resp.payload.code), s.refused.eq(1)]
                        m.next = "ANSWER"
            with m.State("DESC"):
                m.d.comb += wr.desc.valid.eq(1)
                with m.If(wr.desc.ready):
                    m.d.sync += [rows_left.eq(cur.cmd.m), tiles_left.eq(cur.nt)]
                    m.next = "STREAM"
            with m.State("STREAM"):
                m.d.comb += [wr.data.valid.eq(eng.o.valid), eng.o.ready.eq(wr.data.ready)]
                with m.If(eng.o.valid & eng.o.ready):
                    m.d.sync += rows_left.eq(Mux(rows_left == 1, cur.cmd.m, rows_left - 1))
                    with m.If(rows_left == 1):
                        m.d.sync += tiles_left.eq(tiles_left - 1)
                    with m.If(eng.o.payload.last):
                        m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += eng.resp.ready.eq(1)
                with m.If(eng.resp.valid):
                    m.d.sync += code.eq(eng.resp.payload.code)
                    m.next = "WRITTEN"
            with m.State("WRITTEN"):
                with m.If(wdone | wr.done):
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                done = self.port.done
                # the forwarders and the activation walk have passed the instruction (its error
                # flags are final; a refused command's operands are sunk)
                m.d.comb += done.valid.eq((s.fw_w != s.done) & (s.fw_p != s.done) & (s.a_ptr != s.done))
                m.d.comb += [done.payload.index.eq(cur.index), done.payload.status.eq(ChipError.OK),
                             done.payload.detail.eq(0)]
                with m.If(s.err_kv[idx]):
                    m.d.comb += [done.payload.status.eq(ChipError.KV), done.payload.detail.eq(s.kv_status[idx])]
                with m.Elif(s.err_axi_w[idx] | s.err_axi_p[idx]):
                    m.d.comb += [done.payload.status.eq(ChipError.AXI_READ),
                                 done.payload.detail.eq(Mux(s.err_axi_w[idx], AXI_DETAIL_WEIGHTS, AXI_DETAIL_PARAMS))]
                with m.Elif(code != 0):
                    m.d.comb += [done.payload.status.eq(ChipError.MATMUL), done.payload.detail.eq(code)]
                with m.If(done.valid & done.ready):
                    m.d.sync += [s.done.eq(s.done + 1), wdone.eq(0), s.refused.eq(0)]
                    m.next = "WAIT"

    def _feeders(self, m, s, wf, pf):
        """The feeders' jobs: the ring entries at their pointers; their errors into the ring."""
        for feeder, req_ptr, fw_ptr, name in ((wf, s.req_w, s.fw_w, "w"), (pf, s.req_p, s.fw_p, "p")):
            req = s.pick(m, req_ptr, f"req_{name}_entry")
            fw = s.pick(m, fw_ptr, f"fw_{name}_entry")
            m.d.comb += [feeder.req_job.valid.eq(req_ptr != s.tail), feeder.job.valid.eq(fw_ptr != s.tail),
                         feeder.req_flush.eq(s.abort & s.not_started(m, req_ptr)),
                         feeder.flush.eq(s.abort & s.not_started(m, fw_ptr))]
            if name == "w":
                m.d.comb += [feeder.req_job.payload.addr.eq(req.w_addr), feeder.req_job.payload.words.eq(req.w_words),
                             feeder.job.payload.beats.eq(fw.w_beats), feeder.job.payload.w16.eq(fw.w16),
                             feeder.job.payload.kv.eq(fw.kv)]
            else:
                m.d.comb += [feeder.req_job.payload.addr.eq(req.p_addr), feeder.req_job.payload.words.eq(req.p_words),
                             feeder.job.payload.beats.eq(fw.p_beats)]
            with m.If(feeder.req_job.valid & feeder.req_job.ready):
                m.d.sync += req_ptr.eq(req_ptr + 1)
            with m.If(feeder.job.valid & feeder.job.ready):
                m.d.sync += fw_ptr.eq(fw_ptr + 1)
                for i in range(s.depth):
                    with m.If(fw_ptr[:s.lg] == i):
                        if name == "w":
                            m.d.sync += [s.err_axi_w[i].eq(feeder.err.axi), s.err_kv[i].eq(feeder.err.kv),
                                         s.kv_status[i].eq(feeder.err.kv_status)]
                        else:
                            m.d.sync += s.err_axi_p[i].eq(feeder.err.axi)

    def _events(self, m, s, eng, wf, pf, rd, wr, abort_end, lg):
        ev = self.events
        stall_out = eng.o.valid & ~eng.o.ready
        stall_w = ~stall_out & eng.w.ready & ~eng.w.valid
        stall_a = ~stall_out & ~stall_w & eng.a.ready & ~eng.a.valid
        m.d.comb += [
            ev.busy.eq((s.done != s.tail) | ~s.intake_idle | s.issuing),
            ev.wait_deps.eq(s.waiting), ev.stall_output.eq(stall_out), ev.stall_weight.eq(stall_w),
            ev.stall_activation.eq(stall_a),
            ev.instrs.eq(self.port.instr.valid & self.port.instr.ready), ev.started.eq(s.can_start),
            ev.w_ready_at_start.eq(eng.cmd.valid & eng.cmd.ready & eng.w.valid),
            ev.w_words.eq(wf.events.words), ev.p_words.eq(pf.events.words), ev.kv_beats.eq(wf.events.kv_beats),
            ev.dropped.eq(Mux(abort_end, (s.tail - s.st)[:lg + 1], 0)),
        ]
        moved = [eng.a.valid & eng.a.ready, eng.w.valid & eng.w.ready, eng.p.valid & eng.p.ready,
                 eng.o.valid & eng.o.ready, eng.events.rows, wf.events.words, pf.events.words,
                 wf.events.kv_beats, self.port.done.valid, self.port.instr.valid & self.port.instr.ready]
        m.d.comb += self.port.progress.eq(Cat(*moved).any())


class _State:
    """The ring and its pointers (``lg + 1`` bits each: an entry index and a wrap bit)."""

    def __init__(self, m, entry_layout, depth):
        self.depth, self.lg = depth, exact_log2(depth)
        self.entries = [Signal(entry_layout, name=f"entry{i}") for i in range(depth)]
        self.layout = entry_layout
        ptr = self.lg + 1
        self.tail, self.st, self.done = Signal(ptr, name="tail"), Signal(ptr, name="st"), Signal(ptr, name="done")
        self.req_w, self.req_p = Signal(ptr, name="req_w"), Signal(ptr, name="req_p")
        self.fw_w, self.fw_p = Signal(ptr, name="fw_w"), Signal(ptr, name="fw_p")
        self.a_ptr = Signal(ptr, name="a_ptr")      # activation walks finished
        self.refused = Signal()                     # the engine refused the command at ``done``
        self.err_axi_w = [Signal(name=f"err_axi_w{i}") for i in range(depth)]
        self.err_axi_p = [Signal(name=f"err_axi_p{i}") for i in range(depth)]
        self.err_kv = [Signal(name=f"err_kv{i}") for i in range(depth)]
        self.kv_status = [Signal(KVStatus, name=f"kv_status{i}") for i in range(depth)]
        self.issuing, self.can_start, self.waiting = Signal(), Signal(), Signal()
        self.intake_idle = Signal()
        self.abort = None
        self.err_axi_w, self.err_axi_p = Array(self.err_axi_w), Array(self.err_axi_p)
        self.err_kv, self.kv_status = Array(self.err_kv), Array(self.kv_status)

    def pick(self, m, ptr, name):
        """The entry ``ptr`` points at."""
        sel = Signal(self.layout, name=name)
        with m.Switch(ptr[:self.lg]):
            for i, e in enumerate(self.entries):
                with m.Case(i):
                    m.d.comb += sel.eq(e)
        return sel

    def write(self, m, ptr, value):
        """The entry at ``ptr`` becomes ``value``, its error flags 0."""
        with m.Switch(ptr[:self.lg]):
            for i, e in enumerate(self.entries):
                with m.Case(i):
                    m.d.sync += [e.eq(value), self.err_axi_w[i].eq(0), self.err_axi_p[i].eq(0),
                                 self.err_kv[i].eq(0), self.kv_status[i].eq(KVStatus.OK)]

    def not_started(self, m, ptr):
        """``ptr`` is at or past the first instruction not started (in ring order from ``done``)."""
        out = Signal()
        w = self.lg + 1
        m.d.comb += out.eq((ptr - self.done)[:w] >= (self.st - self.done)[:w])
        return out
