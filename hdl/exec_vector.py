"""The VECTOR unit of the chip: VECTOR instructions → the vector unit with its scratchpad readers
and writers (docs/chip.md, "VECTOR").

:class:`VectorExec` takes one VECTOR instruction at a time (when its waits are satisfied), sends
the :class:`hdl.vector.VectorUnit` one command for it and walks the scratchpad streams the op
uses (:func:`spec.vector.stream_words`): the ``a``, ``b``, ``p`` and ``s_in`` readers and the
``o`` and ``s_out`` writers. The instruction retires once the unit has answered and every word
it wrote is visible to reads.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from spec import isa
from spec.codes import ChipError
from spec.vector import CHIP_OPS, MAX_HEAD_DIM, VectorOp, VectorStatus

from .agu import SpadReader, SpadWriter
from .cmdproc import UnitPortSignature
from .config import ChipConfig
from .counters import events_layout
from .scratchpad import address_width, check_int, read_port_signature, write_port_signature
from .units import InstrSlot
from .vector import VectorUnit

__all__ = ["VectorExec", "VECTOR_READERS", "VECTOR_WRITERS", "exec_events_layout", "saturate", "stream_uses"]

#: The unit's scratchpad read ports (``spad_r``), in order.
VECTOR_READERS = ("a", "b", "p", "s_in")
#: The unit's scratchpad write ports (``spad_w``), in order.
VECTOR_WRITERS = ("o", "s_out")


def exec_events_layout():
    """``events`` of an execution unit that runs one instruction at a time on a block: ``busy``
    (an instruction is held), ``wait_deps`` (the queue's head waits for other units), ``instrs``
    (instructions taken) and one stall reason at most: ``stall_input`` (the block waits for a
    scratchpad word), ``stall_output`` (a result word waits for its write), ``stall_writes`` (the
    block has finished; its last writes are not yet visible)."""
    return events_layout(["busy", "wait_deps", "instrs", "stall_input", "stall_output", "stall_writes"])


def saturate(value, width):
    """``value`` narrowed to ``width`` bits, all ones when it does not fit: an instruction field
    wider than the block's command field stays out of the block's range instead of wrapping into
    it (the dispatcher's checks keep such values away; this keeps the block's own check
    meaningful)."""
    return Mux(value >> width != 0, (1 << width) - 1, value[:width])


def stream_uses(op, flags):
    """Which streams a VECTOR instruction of ``op`` (a Value) uses: a dict of 1-bit Values
    (spec.vector.stream_words in hardware)."""
    def any_of(*ops):
        out = Const(0)
        for o in ops:
            out = out | (op == o)
        return out
    return {"a": Const(1), "b": any_of(VectorOp.ADD, VectorOp.SWIGLU, VectorOp.DEQUANT, VectorOp.REQUANT),
            "p": any_of(VectorOp.RMSNORM, VectorOp.ROPE, VectorOp.DEQUANT, VectorOp.REQUANT),
            "s_in": (op == VectorOp.REQUANT) | ((op == VectorOp.DEQUANT) & flags[0]),
            "o": Const(1), "s_out": op == VectorOp.QUANT_TOKEN}


class VectorExec(wiring.Component):
    """VECTOR instructions on a :class:`~hdl.vector.VectorUnit` (built inside, with the ops of
    :data:`spec.vector.CHIP_OPS` only).

    Per instruction: one unit command (``op``, ``dtype``, ``flags``, ``length``, ``rows``,
    ``head_dim``, ``shift``, ``imm0``, ``imm1`` from the instruction's fields) and one descriptor
    per stream the op uses (docs/chip.md, "VECTOR"): ``a``/``b`` rows (``i1`` = row at
    ``*_stride``, ``i0`` = the row's B = ceil(length/V) words), ``p`` (``i2`` = row at
    ``p_stride``, ``i1`` = repeat at stride 0, ``i0`` = word: B words once, or for ROPE
    head_dim/(2V) words once per head), ``s_in`` (one word per row, lane 0, at ``s_in_addr + row``),
    ``o`` rows at ``o_addr``/``o_stride`` and ``s_out`` (lane 0 of one word per row at
    ``s_out_addr + row``, the other lanes 0). The readers start with the command (they read
    ahead into their FIFOs); a writer gets its descriptor when the unit offers its first word, so
    a command the unit rejects leaves no walk behind.

    The instruction retires when the unit has answered OK and each writer has signalled that its
    words are visible. A status other than OK (only BAD_SCALE can reach the unit: the dispatcher
    checks the rest) answers ``ChipError.VECTOR`` with the status as detail, once the readers'
    words read ahead for it have been dropped.

    Parameters
    ----------
    lanes : int
        V: the vector unit's lanes, which are the scratchpad's lanes (a power of two, 1..64).
    max_len : int
        The vector unit's longest row.
    addr_width : int
        The scratchpad's address width.

    Members
    -------
    port : In(UnitPortSignature())
        The command processor's VECTOR queue.
    spad_r : Out(read_port_signature) × 4
        Scratchpad read ports of the ``a``, ``b``, ``p``, ``s_in`` readers (:data:`VECTOR_READERS`).
    spad_w : Out(write_port_signature) × 2
        Scratchpad write ports of the ``o`` and ``s_out`` writers (:data:`VECTOR_WRITERS`).
    events : Out(exec_events_layout())
    unit_events : Out(VectorUnit events layout)
        The vector unit's own events (docs/vector.md, "Counters").

    Latency: the unit's (docs/vector.md) plus the reader's 4 cycles before the first word, the
    writers' 2 after the last, and 3 cycles to take, start and answer an instruction. Throughput:
    the unit's (V elements per cycle) when the streams' banks do not conflict.
    """

    def __init__(self, *, lanes, max_len, addr_width, rsqrt_steps=0):
        check_int("lanes", lanes, 1, 64, pow2=True)
        check_int("addr_width", addr_width, 2, 32)
        self._lanes, self._max_len, self._aw = lanes, max_len, addr_width
        # the ops a VECTOR instruction may carry: the unit's others are left out of the chip
        self._unit = VectorUnit(lanes=lanes, max_len=max_len, ops=CHIP_OPS, rsqrt_steps=rsqrt_steps)
        super().__init__({
            "port": In(UnitPortSignature()),
            "spad_r": Out(read_port_signature(addr_width=addr_width, lanes=lanes)).array(len(VECTOR_READERS)),
            "spad_w": Out(write_port_signature(addr_width=addr_width, lanes=lanes)).array(len(VECTOR_WRITERS)),
            "events": Out(exec_events_layout()),
            "unit_events": Out(self._unit.events_layout),
        })

    @classmethod
    def from_config(cls, config):
        """The unit of a :class:`~hdl.config.ChipConfig`; ``vector.lanes`` must equal
        ``memory.spad_lanes`` (ValueError naming both)."""
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        mem = config.memory
        if config.vector.lanes != mem.spad_lanes:
            raise ValueError(f"vector.lanes ({config.vector.lanes}) must equal memory.spad_lanes ({mem.spad_lanes})")
        return cls(lanes=mem.spad_lanes, max_len=config.vector.max_len,
                   addr_width=address_width(words=mem.spad_words, banks=mem.spad_banks),
                   rsqrt_steps=config.vector.rsqrt_steps)

    @property
    def unit(self):
        """The :class:`~hdl.vector.VectorUnit`."""
        return self._unit

    @property
    def lanes(self):
        return self._lanes

    def _descriptors(self, m, f):
        """{stream: descriptor fields} of the instruction viewed as ``f``."""
        lgV = exact_log2(self._lanes)
        words = (f.length + (self._lanes - 1)) >> lgV
        rope = f.op == VectorOp.ROPE
        # ROPE: head_dim/(2V) parameter words per head, once per head (head_dim a power of two)
        heads = Signal(16, name="rope_heads")
        hd = 2 * self._lanes
        while hd <= MAX_HEAD_DIM:
            with m.If(f.head_dim == hd):
                m.d.comb += heads.eq(f.length >> exact_log2(hd))
            hd *= 2
        rows = dict(count2=1, count1=f.rows, count0=words, stride0=1, stride2=0)
        return {
            "a": dict(rows, base=f.a_addr, stride1=f.a_stride),
            "b": dict(rows, base=f.b_addr, stride1=f.b_stride),
            "p": dict(base=f.p_addr, count2=f.rows, stride2=f.p_stride, count1=Mux(rope, heads, 1), stride1=0,
                      count0=Mux(rope, f.head_dim >> (lgV + 1), words), stride0=1),
            "s_in": dict(base=f.s_in_addr, count2=1, count1=f.rows, stride1=1, count0=1, stride0=0, stride2=0),
            "o": dict(rows, base=f.o_addr, stride1=f.o_stride),
            "s_out": dict(base=f.s_out_addr, count2=1, count1=f.rows, stride1=1, count0=1, stride0=0, stride2=0),
        }

    def elaborate(self, platform):
        m = Module()
        V, aw = self._lanes, self._aw
        m.submodules.unit = unit = self._unit
        slot = InstrSlot(isa.Opcode.VECTOR)
        slot.elaborate_into(m, self.port, self.events)
        f = slot.fields
        uses = stream_uses(f.op, f.flags)
        descs = self._descriptors(m, f)
        readers, writers = {}, {}
        for i, name in enumerate(VECTOR_READERS):
            readers[name] = m.submodules[f"rd_{name}"] = SpadReader(addr_width=aw, lanes=V)
            wiring.connect(m, readers[name].port, wiring.flipped(self.spad_r[i]))
        for j, name in enumerate(VECTOR_WRITERS):
            writers[name] = m.submodules[f"wr_{name}"] = SpadWriter(addr_width=aw, lanes=V, with_mask=False)
            wiring.connect(m, writers[name].port, wiring.flipped(self.spad_w[j]))
        running = Signal()          # the instruction has started (slot.busy, after its first cycle)
        m.d.comb += running.eq(slot.busy & ~slot.start)

        # the unit's command
        cmd_pend = Signal()
        c = unit.cmd.payload
        m.d.comb += [unit.cmd.valid.eq(cmd_pend), c.op.eq(saturate(f.op, len(c.op))),
                     c.dtype.eq(f.dtype), c.flags.eq(f.flags), c.length.eq(saturate(f.length, len(c.length))),
                     c.rows.eq(f.rows), c.head_dim.eq(saturate(f.head_dim, len(c.head_dim))),
                     c.shift.eq(f.shift), c.imm0.eq(f.imm0), c.imm1.eq(f.imm1)]
        with m.If(unit.cmd.valid & unit.cmd.ready):
            m.d.sync += cmd_pend.eq(0)

        # its answer
        answered = Signal()
        status = Signal(VectorStatus)
        m.d.comb += unit.resp.ready.eq(1)
        with m.If(unit.resp.valid):
            m.d.sync += [answered.eq(1), status.eq(unit.resp.payload.status)]
        flush = Signal()            # rejected: drop the words read ahead for it
        m.d.comb += flush.eq(answered & (status != VectorStatus.OK))

        moved = []                  # 1-bit Values: a word moved this cycle (the watchdog's progress)
        left = self._readers(m, readers, descs, uses, unit, flush, slot, moved)
        writing = self._writers(m, writers, descs, uses, unit, slot, moved)

        with m.If(slot.start):
            m.d.sync += [cmd_pend.eq(1), answered.eq(0)]
        ok_end = answered & (status == VectorStatus.OK) & ~writing
        err_end = flush & ~left
        m.d.comb += [slot.finish.eq(running & (ok_end | err_end)),
                     slot.status.eq(Mux(ok_end, ChipError.OK, ChipError.VECTOR)),
                     slot.detail.eq(Mux(ok_end, 0, status))]

        # events and progress
        ue = unit.events
        m.d.comb += [self.unit_events.eq(ue),
                     self.events.stall_input.eq(slot.busy & ue.stall_input),
                     self.events.stall_output.eq(slot.busy & ue.stall_output),
                     self.events.stall_writes.eq(running & answered & writing)]
        inner = [getattr(ue, n) != 0 for n in ("mul_bf16", "mul_fp32", "add_fp32", "mul_int", "rsqrt",
                                               "buf_reads", "buf_writes")]
        progress = moved + inner + [unit.cmd.valid & unit.cmd.ready, unit.resp.valid]
        m.d.comb += self.port.progress.eq(Cat(*progress).any())
        return m

    def _readers(self, m, readers, descs, uses, unit, flush, slot, moved):
        """Reader descriptors and the read streams into the unit; returns a signal that is 1 while
        a reader of the instruction has words to deliver (its ``last`` not yet passed)."""
        pend = {}
        left = {}
        for name, rd in readers.items():
            pend[name], left[name] = Signal(name=f"{name}_desc_pend"), Signal(name=f"{name}_left")
            d = rd.desc.payload
            m.d.comb += [rd.desc.valid.eq(pend[name])] + [getattr(d, k).eq(v) for k, v in descs[name].items()]
            with m.If(rd.desc.valid & rd.desc.ready):
                m.d.sync += pend[name].eq(0)
            empty = (descs[name]["count0"] == 0) | (descs[name]["count1"] == 0) | (descs[name]["count2"] == 0)
            with m.If(slot.start):       # an empty walk (fields the unit rejects) delivers no word
                m.d.sync += [pend[name].eq(uses[name]), left[name].eq(uses[name] & ~empty)]
            dst = getattr(unit, name)
            payload = rd.data.payload.data[0] if name == "s_in" else rd.data.payload.data
            m.d.comb += [dst.valid.eq(rd.data.valid & ~flush), dst.payload.eq(payload),
                         rd.data.ready.eq(dst.ready | flush)]
            fire = rd.data.valid & rd.data.ready
            with m.If(fire & rd.data.payload.last):
                m.d.sync += left[name].eq(0)
            moved.append(fire)
        any_left = Signal()
        m.d.comb += any_left.eq(Cat(*left.values()).any())
        return any_left

    def _writers(self, m, writers, descs, uses, unit, slot, moved):
        """Writer descriptors (each when the unit offers the stream's first word) and the unit's
        output streams into the writers; returns a signal that is 1 while a writer of the
        instruction has not signalled ``done``."""
        waiting = {}
        for name, wr in writers.items():
            src = getattr(unit, name)
            need, waiting[name] = Signal(name=f"{name}_desc_pend"), Signal(name=f"{name}_waiting")
            d = wr.desc.payload
            m.d.comb += [wr.desc.valid.eq(need & src.valid)] + [getattr(d, k).eq(v) for k, v in descs[name].items()]
            with m.If(wr.desc.valid & wr.desc.ready):
                m.d.sync += need.eq(0)
            with m.If(wr.done):
                m.d.sync += waiting[name].eq(0)
            with m.If(slot.start):
                m.d.sync += [need.eq(uses[name]), waiting[name].eq(uses[name])]
            if name == "s_out":
                m.d.comb += wr.data.payload.data[0].eq(src.payload)
            else:
                m.d.comb += wr.data.payload.data.eq(src.payload)
            m.d.comb += [wr.data.valid.eq(src.valid), src.ready.eq(wr.data.ready)]
            moved += [wr.data.valid & wr.data.ready, wr.done]
        writing = Signal()
        m.d.comb += writing.eq(Cat(*waiting.values()).any())
        return writing
