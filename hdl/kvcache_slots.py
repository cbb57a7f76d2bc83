"""The KV-cache controller's sequence slots and free-page stack (hdl/kvcache.py, docs/kvcache.md):
:class:`SlotTable` (which slot holds a sequence, its length and tail page) and
:class:`FreeList` (the physical pages no sequence holds)."""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .params import check_int as _check_int

__all__ = ["SlotTable", "FreeList", "SEQ_ID_BITS"]

SEQ_ID_BITS = 16


class SlotTable(wiring.Component):
    """``max_seqs`` sequence slots in registers: a valid bit, the 16-bit id, the length and the
    page that receives the next token (the tail), looked up by id with a parallel compare.

    Parameters
    ----------
    max_seqs : int
        Slots, 1..1024.
    max_len : int
        Longest sequence (``num_pages · page_size``), 1..2**24.
    page_bits : int
        Bits of a physical page number, 1..16.

    Members
    -------
    seq : In(16)
        The id looked up.
    hit, slot, length, tail : Out
        A valid slot holds ``seq``; which one, its length and tail page (0 when there is no
        hit). Ids are unique among valid slots (the controller refuses a duplicate ALLOC), so
        the slot's values are AND-OR selected: no priority encoder or mux.
    free_slot, any_free : Out
        The lowest slot that is not valid; whether there is one.
    alloc, alloc_slot, alloc_id : In
        Makes ``alloc_slot`` valid with id ``alloc_id`` and length 0.
    grow, grow_slot, grow_length : In
        Sets the length of ``grow_slot``; with ``new_tail``, also its tail page to ``tail_page``.
    new_tail, tail_page : In
    release, release_slot : In
        Makes ``release_slot`` invalid.

    Latency: the lookup is combinational; a write shows on the outputs in the next cycle. At
    most one of ``alloc``, ``grow`` and ``release`` per cycle.
    """

    def __init__(self, *, max_seqs, max_len, page_bits):
        _check_int("max_seqs", max_seqs, 1, 1024)
        _check_int("max_len", max_len, 1, 1 << 24)
        _check_int("page_bits", page_bits, 1, 16)
        self._max_seqs, self._max_len, self._page_bits = max_seqs, max_len, page_bits
        slot, length = range(max_seqs), range(max_len + 1)
        super().__init__({
            "seq": In(SEQ_ID_BITS),
            "hit": Out(1), "slot": Out(slot), "length": Out(length), "tail": Out(page_bits),
            "free_slot": Out(slot), "any_free": Out(1),
            "alloc": In(1), "alloc_slot": In(slot), "alloc_id": In(SEQ_ID_BITS),
            "grow": In(1), "grow_slot": In(slot), "grow_length": In(length),
            "new_tail": In(1), "tail_page": In(page_bits),
            "release": In(1), "release_slot": In(slot),
        })

    def elaborate(self, platform):
        m = Module()
        S = self._max_seqs
        slot_valid = Array(Signal(name=f"slot_valid{i}") for i in range(S))
        slot_id = Array(Signal(SEQ_ID_BITS, name=f"slot_id{i}") for i in range(S))
        slot_len = Array(Signal(range(self._max_len + 1), name=f"slot_len{i}") for i in range(S))
        slot_tail = Array(Signal(self._page_bits, name=f"slot_tail{i}") for i in range(S))

        hits = Signal(S)
        m.d.comb += hits.eq(Cat(slot_valid[i] & (slot_id[i] == self.seq) for i in range(S)))

        def select(values):
            out = 0
            for i, v in enumerate(values):
                out = out | Mux(hits[i], v, 0)
            return out

        m.d.comb += [
            self.hit.eq(hits.any()),
            self.slot.eq(select(range(S)) if S > 1 else 0),
            self.length.eq(select(slot_len[i] for i in range(S))),
            self.tail.eq(select(slot_tail[i] for i in range(S))),
            self.any_free.eq(~Cat(slot_valid[i] for i in range(S)).all()),
        ]
        for i in reversed(range(S)):
            with m.If(~slot_valid[i]):
                m.d.comb += self.free_slot.eq(i)

        with m.If(self.alloc):
            m.d.sync += [slot_valid[self.alloc_slot].eq(1), slot_id[self.alloc_slot].eq(self.alloc_id),
                         slot_len[self.alloc_slot].eq(0)]
        with m.If(self.grow):
            m.d.sync += slot_len[self.grow_slot].eq(self.grow_length)
            with m.If(self.new_tail):
                m.d.sync += slot_tail[self.grow_slot].eq(self.tail_page)
        with m.If(self.release):
            m.d.sync += slot_valid[self.release_slot].eq(0)
        return m


class FreeList(wiring.Component):
    """The free physical pages: a ``num_pages``-entry LIFO stack in an ``amaranth.lib.memory.Memory``
    (synchronous, non-transparent read port) and its count.

    After reset an initialization walk of ``num_pages`` cycles writes page 0 on top …
    ``num_pages − 1`` at the bottom; ``ready`` rises when it is done.

    Parameters
    ----------
    num_pages : int
        Pages, 2..65536.

    Members
    -------
    ready : Out(1)
        The initialization walk is done (from cycle ``num_pages`` after reset).
    count : Out(range(num_pages + 1))
        Free pages; the top of the stack is entry ``count − 1``.
    top : Out(page bits)
        The top page, read synchronously: the entry ``count − 1`` of the previous cycle (after
        a push or pop it shows the new top one cycle later).
    pop : In(1)
        Takes the top page (``count − 1``).
    push, page : In
        Puts ``page`` on top (``count + 1``). Not in the same cycle as ``pop``.
    write : Out(1)
        A stack entry is written this cycle (the walk or a push).
    """

    def __init__(self, *, num_pages):
        _check_int("num_pages", num_pages, 2, 65536)
        self._num_pages = num_pages
        page_bits = max(1, ceil_log2(num_pages))
        super().__init__({
            "ready": Out(1), "count": Out(range(num_pages + 1), init=num_pages), "top": Out(page_bits),
            "pop": In(1), "push": In(1), "page": In(page_bits), "write": Out(1),
        })

    @property
    def init_cycles(self):
        """Cycles from reset to ``ready``."""
        return self._num_pages

    def elaborate(self, platform):
        m = Module()
        N = self._num_pages
        m.submodules.free_stack = stack = Memory(shape=len(self.top), depth=N, init=[])
        st_w = stack.write_port()
        st_r = stack.read_port()
        sp = self.count
        m.d.comb += [st_r.addr.eq(sp - 1), self.top.eq(st_r.data), self.write.eq(st_w.en)]
        init_i = Signal(range(N))
        with m.If(~self.ready):
            m.d.comb += [st_w.addr.eq(init_i), st_w.data.eq(N - 1 - init_i), st_w.en.eq(1)]
            m.d.sync += init_i.eq(init_i + 1)
            with m.If(init_i == N - 1):
                m.d.sync += [sp.eq(N), self.ready.eq(1)]
        with m.If(self.push):
            m.d.comb += [st_w.addr.eq(sp), st_w.data.eq(self.page), st_w.en.eq(1)]
            m.d.sync += sp.eq(sp + 1)
        with m.If(self.pop):
            m.d.sync += sp.eq(sp - 1)
        return m
