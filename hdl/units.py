"""Execution units of the chip that run one instruction at a time: the glue between a
:class:`hdl.cmdproc.UnitPortSignature` and a block (docs/chip.md, "Units").

:class:`InstrSlot` is the shared part: it takes the instruction at the head of the unit's queue
when its waits are satisfied, holds it while the block runs and answers it on ``done``.
:class:`LoadExec` and :class:`StoreExec` turn LOAD and STORE instructions into descriptors of
:class:`hdl.loadstore.LoadUnit` / :class:`~hdl.loadstore.StoreUnit`.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec import isa
from spec.codes import ChipError, LoadStoreStatus

from .cmdproc import INDEX_BITS, UnitPortSignature
from .counters import events_layout
from .loadstore import load_desc_layout, resp_layout, store_desc_layout

__all__ = ["InstrSlot", "LoadExec", "StoreExec", "slot_events_layout", "KVReadPortSignature"]


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


def _loadstore_status(status, axi_error):
    """ChipError of a LOAD/STORE unit response (the dispatcher has checked every field, so only
    the AXI error is expected; the others are mapped for completeness)."""
    table = {LoadStoreStatus.AXI_ERROR: axi_error, LoadStoreStatus.BAD_ELEM_BYTES: ChipError.BAD_FIELD,
             LoadStoreStatus.ZERO_SIZE: ChipError.BAD_FIELD, LoadStoreStatus.UNALIGNED: ChipError.BAD_FIELD,
             LoadStoreStatus.EXT_RANGE: ChipError.EXT_RANGE, LoadStoreStatus.SPAD_RANGE: ChipError.SPAD_RANGE}
    return table, ChipError.OK


class _LoadStoreExec(wiring.Component):
    """LOAD or STORE instructions → descriptors of the block's ``cmd`` stream, its ``resp`` → done."""

    _opcode = None
    _axi_error = None

    def __init__(self, *, addr_width, spad_addr_width):
        self._addr_width, self._spad_addr_width = addr_width, spad_addr_width
        super().__init__({
            "port": In(UnitPortSignature()),
            "cmd": Out(stream.Signature(self._desc_layout())),
            "resp": In(stream.Signature(resp_layout())),
            "events": Out(slot_events_layout()),
        })

    def elaborate(self, platform):
        m = Module()
        slot = InstrSlot(self._opcode)
        slot.elaborate_into(m, self.port, self.events)
        f = slot.fields
        sent = Signal()
        with m.If(slot.start):
            m.d.sync += sent.eq(0)
        desc = self.cmd.payload
        m.d.comb += [desc.ext_addr.eq(f.ext_addr), desc.ext_stride.eq(f.ext_stride), desc.rows.eq(f.rows),
                     desc.elems.eq(f.elems), desc.elem_bytes.eq(1 << f.elem_bytes),
                     desc.spad_addr.eq(f.spad_addr), desc.spad_stride.eq(f.spad_stride)]
        if "signed" in desc.shape().members:
            m.d.comb += desc.signed.eq(f.signed)
        m.d.comb += self.cmd.valid.eq(slot.busy & ~slot.start & ~sent)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += sent.eq(1)
        m.d.comb += self.resp.ready.eq(1)
        table, ok = _loadstore_status(None, self._axi_error)
        with m.If(self.resp.valid):
            m.d.comb += [slot.finish.eq(1), slot.status.eq(ok), slot.detail.eq(self.resp.payload.status)]
            for code, err in table.items():
                with m.If(self.resp.payload.status == code):
                    m.d.comb += slot.status.eq(err)
        return m


class LoadExec(_LoadStoreExec):
    """The LOAD unit's instruction side: a LOAD instruction → one :class:`~hdl.loadstore.LoadUnit`
    descriptor; its response → ``done`` (AXI_ERROR → ChipError.AXI_READ, ``detail`` the
    LoadStoreStatus).

    Members
    -------
    port : In(UnitPortSignature())
    cmd : Out(stream)
        To ``LoadUnit.cmd``.
    resp : In(stream)
        From ``LoadUnit.resp``.
    events : Out(slot_events_layout())
    """

    _opcode = isa.Opcode.LOAD
    _axi_error = ChipError.AXI_READ

    def _desc_layout(self):
        return load_desc_layout(self._addr_width, self._spad_addr_width)


class StoreExec(_LoadStoreExec):
    """The STORE unit's instruction side, as :class:`LoadExec` (AXI_ERROR →
    ChipError.AXI_WRITE)."""

    _opcode = isa.Opcode.STORE
    _axi_error = ChipError.AXI_WRITE

    def _desc_layout(self):
        return store_desc_layout(self._addr_width, self._spad_addr_width)
