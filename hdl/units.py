"""Execution units of the chip that run one instruction at a time: the glue between a
:class:`hdl.cmdproc.UnitPortSignature` and a block (docs/chip.md, "Units").

:class:`InstrSlot` is the shared part: it takes the instruction at the head of the unit's queue
when its waits are satisfied, holds it while the block runs and answers it on ``done``.
(LOAD and STORE take several instructions at once: :class:`hdl.loadstore.InstrAdapter`.)
"""

from amaranth.hdl import Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec import isa
from spec.codes import ChipError

from .cmdproc import INDEX_BITS
from .counters import events_layout

__all__ = ["InstrSlot", "slot_events_layout", "KVReadPortSignature"]


class KVReadPortSignature(wiring.Signature):
    """The matmul unit's access to the KV-cache controller, seen from the matmul unit: it sends
    READ_K / READ_V commands (``cmd``, the controller's ``cmd_layout``), gets their responses
    (``resp``, in command order) and the beats of the READs (``rdata``). The KV unit owns the
    controller and merges these commands with its own (ALLOC, APPEND, FREE).

    Parameters
    ----------
    params : hdl.kvcache.KVCacheParams
    """

    def __init__(self, params):
        super().__init__({
            "cmd": Out(stream.Signature(params.cmd_layout)),
            "resp": In(stream.Signature(params.resp_layout)),
            "rdata": In(stream.Signature(params.rdata_layout)),
        })


def slot_events_layout():
    """``events`` of a one-instruction-at-a-time unit: ``busy`` (an instruction is held),
    ``wait_deps`` (the queue's head waits for other units), ``instrs`` (instructions taken)."""
    return events_layout(["busy", "wait_deps", "instrs"])


class InstrSlot:
    """One instruction held from its start to its answer (not a component: call
    :meth:`elaborate_into` from the unit's ``elaborate``).

    After ``elaborate_into(m, port)``: ``start`` is 1 in the cycle after the instruction was
    taken (``bits`` and ``index`` hold it), ``busy`` while it is held; drive ``finish`` (one cycle)
    with ``status`` and ``detail`` to answer it. The slot never takes an instruction while the
    program is aborting, so an abort leaves at most the one that started.
    """

    def __init__(self, opcode):
        self.opcode = isa.Opcode(opcode)
        self.bits = Signal(isa.INSTR_BITS)
        self.index = Signal(INDEX_BITS)
        self.start = Signal()
        self.busy = Signal()
        self.finish = Signal()
        self.status = Signal(ChipError)
        self.detail = Signal(8)
        self.fields = data.View(isa.layout(self.opcode), self.bits)

    def elaborate_into(self, m, port, events=None):
        take = Signal()
        m.d.comb += [port.instr.ready.eq(~self.busy & port.deps_ok & ~port.abort),
                     take.eq(port.instr.valid & port.instr.ready)]
        m.d.sync += self.start.eq(take)
        with m.If(take):
            m.d.sync += [self.busy.eq(1), self.bits.eq(port.instr.payload.bits),
                         self.index.eq(port.instr.payload.index)]
        with m.If(self.finish):
            m.d.sync += self.busy.eq(0)
        m.d.comb += [port.done.valid.eq(self.finish), port.done.payload.status.eq(self.status),
                     port.done.payload.detail.eq(self.detail), port.done.payload.index.eq(self.index),
                     port.idle.eq(~self.busy)]
        if events is not None:
            m.d.comb += [events.busy.eq(self.busy), events.instrs.eq(take),
                         events.wait_deps.eq(~self.busy & port.instr.valid & ~port.deps_ok)]
