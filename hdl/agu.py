"""Address generators and the scratchpad movers every unit uses (docs/scratchpad.md, "Movers").

A *descriptor* names a walk over the scratchpad: ``base`` plus three nested loops,
``count2 × count1 × count0`` (innermost ``count0``), each with an unsigned stride in words::

    for i2 in range(count2):
        for i1 in range(count1):
            for i0 in range(count0):
                addr = base + i2·stride2 + i1·stride1 + i0·stride0

* :class:`AddressGenerator`: descriptors in, one address per cycle out (running sums, no
  multiplier), no cycle between descriptors;
* :class:`SpadReader`: descriptors in, read requests on a scratchpad read port, the words out
  in walk order;
* :class:`SpadWriter`: descriptors and words in, writes on a scratchpad write port, a ``done``
  pulse once the descriptor's last word is visible to reads.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .scratchpad import (
    READ_LATENCY,
    WRITE_LATENCY,
    CheckedComponent,
    address_width,
    check_int,
    read_port_signature,
    write_port_signature,
)

__all__ = ["AddressGenerator", "SpadReader", "SpadWriter", "descriptor_layout", "address_layout",
           "read_data_layout", "write_data_layout"]

#: Width of a descriptor's counts unless a block asks for another.
COUNT_WIDTH = 16


def descriptor_layout(*, addr_width, count_width=COUNT_WIDTH):
    """``base``, ``stride0..2`` (``addr_width`` bits, unsigned, in words) and ``count0..2``
    (``count_width`` bits; 0 in any count: an empty walk)."""
    return data.StructLayout({"base": addr_width,
                              "count0": count_width, "count1": count_width, "count2": count_width,
                              "stride0": addr_width, "stride1": addr_width, "stride2": addr_width})


def address_layout(addr_width):
    """An address of a walk: ``addr``; ``last0`` (last of the innermost loop), ``last1`` (last
    of loop 1, hence of loop 0 too), ``last`` (last of the descriptor); ``empty``: the beat of
    an empty descriptor, without an address (``last0 = last1 = last = 1``)."""
    return data.StructLayout({"addr": addr_width, "last0": 1, "last1": 1, "last": 1, "empty": 1})


def read_data_layout(lanes):
    """A :class:`SpadReader` output beat: ``data`` (``lanes`` 32-bit lanes) and the walk's
    ``last0``, ``last1``, ``last`` flags."""
    return data.StructLayout({"data": data.ArrayLayout(32, lanes), "last0": 1, "last1": 1, "last": 1})


def write_data_layout(lanes, with_mask=True):
    """A :class:`SpadWriter` input beat: ``data`` and, ``with_mask``, ``mask`` (lane enables)."""
    fields = {"data": data.ArrayLayout(32, lanes)}
    if with_mask:
        fields["mask"] = lanes
    return data.StructLayout(fields)


def _check_widths(addr_width, count_width):
    check_int("addr_width", addr_width, 1, 32)
    check_int("count_width", count_width, 1, 32)


class AddressGenerator(CheckedComponent):
    """Walks descriptors: one address per cycle, in loop order, innermost loop first.

    Addresses are running sums (no multiplier), kept ``count_width + 2`` bits wider than
    ``addr_width``, so a walk never wraps: an address of ``2**addr_width`` or more is given as
    ``2**addr_width − 1`` (all ones), which the scratchpad treats as past its last bank.

    Parameters (keyword-only)
    -------------------------
    addr_width : int
        Bits of an address and of ``base`` and the strides, 1..32.
    count_width : int
        Bits of each count, 1..32.

    Members
    -------
    desc : In(stream.Signature(descriptor_layout))
        Descriptors. The next one is taken in the cycle the previous one's last address is
        taken, so consecutive walks have no cycle between them.
    out : Out(stream.Signature(address_layout))
        ``addr``, ``last0``, ``last1``, ``last``. A descriptor with a count of 0 gives one beat
        with ``empty = 1`` (and ``last = 1``) and no address, so that every descriptor ends
        with a ``last`` beat.

    Latency :attr:`latency` (1) cycle from a descriptor's acceptance to its first address;
    throughput one address per cycle, across descriptors.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range; the message names it.
    """

    @classmethod
    def check_parameters(cls, *, addr_width, count_width=COUNT_WIDTH):
        _check_widths(addr_width, count_width)

    def __init__(self, *, addr_width, count_width=COUNT_WIDTH):
        self._addr_width, self._count_width = addr_width, count_width
        super().__init__({
            "desc": In(stream.Signature(self.descriptor_layout)),
            "out": Out(stream.Signature(address_layout(addr_width))),
        })

    @classmethod
    def from_config(cls, config, *, count_width=COUNT_WIDTH):
        """The generator of scratchpad addresses of an :class:`hdl.config.ChipConfig`."""
        mem = config.memory
        return cls(addr_width=address_width(words=mem.spad_words, banks=mem.spad_banks),
                   count_width=count_width)

    addr_width = property(lambda self: self._addr_width)
    count_width = property(lambda self: self._count_width)

    @property
    def descriptor_layout(self):
        return descriptor_layout(addr_width=self._addr_width, count_width=self._count_width)

    @property
    def latency(self):
        """Cycles from a descriptor's acceptance to its first address's ``valid``."""
        return 1

    @property
    def throughput(self):
        """Addresses per cycle, also from one descriptor to the next."""
        return 1

    def elaborate(self, platform):
        m = Module()
        aw, cw = self._addr_width, self._count_width
        W = aw + cw + 2                      # no running sum of a walk overflows this
        d, out = self.desc.payload, self.out
        a0, a1, a2 = (Signal(W, name=f"a{k}") for k in range(3))     # i0, i1, i2 sums
        r0, r1, r2 = (Signal(cw, name=f"left{k}") for k in range(3))  # iterations left
        c0m1, c1m1 = Signal(cw), Signal(cw)                           # reload values
        c0_one, c1_one = Signal(), Signal()
        s0, s1, s2 = (Signal(aw, name=f"s{k}") for k in range(3))
        beat = Signal(address_layout(aw))
        m.d.comb += [out.payload.eq(beat),
                     out.payload.addr.eq(Mux(a0[aw:].any(), Const((1 << aw) - 1, aw), a0[:aw]))]

        advance = ~out.valid | out.ready
        finished = ~out.valid | beat.last          # the current walk has no address left
        m.d.comb += self.desc.ready.eq(advance & finished)
        with m.If(advance & finished):
            empty = (d.count0 == 0) | (d.count1 == 0) | (d.count2 == 0)
            one0, one1, one2 = d.count0 == 1, d.count1 == 1, d.count2 == 1
            m.d.sync += [
                out.valid.eq(self.desc.valid),
                a0.eq(d.base), a1.eq(d.base), a2.eq(d.base),
                r0.eq(d.count0 - 1), r1.eq(d.count1 - 1), r2.eq(d.count2 - 1),
                c0m1.eq(d.count0 - 1), c1m1.eq(d.count1 - 1), c0_one.eq(one0), c1_one.eq(one1),
                s0.eq(d.stride0), s1.eq(d.stride1), s2.eq(d.stride2),
                beat.empty.eq(empty), beat.last0.eq(one0 | empty),
                beat.last1.eq((one0 & one1) | empty), beat.last.eq((one0 & one1 & one2) | empty),
            ]
        with m.Elif(advance):
            with m.If(~beat.last0):                # next i0
                m.d.sync += [a0.eq(a0 + s0), r0.eq(r0 - 1), beat.last0.eq(r0 == 1),
                             beat.last1.eq((r0 == 1) & (r1 == 0)),
                             beat.last.eq((r0 == 1) & (r1 == 0) & (r2 == 0))]
            with m.Elif(~beat.last1):              # next i1, i0 = 0
                m.d.sync += [a1.eq(a1 + s1), a0.eq(a1 + s1), r0.eq(c0m1), r1.eq(r1 - 1),
                             beat.last0.eq(c0_one), beat.last1.eq(c0_one & (r1 == 1)),
                             beat.last.eq(c0_one & (r1 == 1) & (r2 == 0))]
            with m.Else():                         # next i2, i1 = i0 = 0
                m.d.sync += [a2.eq(a2 + s2), a1.eq(a2 + s2), a0.eq(a2 + s2), r0.eq(c0m1),
                             r1.eq(c1m1), r2.eq(r2 - 1), beat.last0.eq(c0_one),
                             beat.last1.eq(c0_one & c1_one), beat.last.eq(c0_one & c1_one & (r2 == 1))]
        return m


class SpadReader(CheckedComponent):
    """Reads the words of descriptors from a scratchpad read port, in walk order.

    Parameters (keyword-only)
    -------------------------
    addr_width : int
        The scratchpad's address width (:attr:`hdl.scratchpad.Scratchpad.addr_width`), 1..32.
    lanes : int
        32-bit lanes per word, a power of two 1..64.
    count_width : int
        Bits of each descriptor count, 1..32.
    depth : int
        Reads in flight at most (the flags of each wait in a FIFO of this depth), 1..64. One
        word per cycle needs at least the port's ``resp_depth`` (:data:`READ_LATENCY` + 1,
        the default).

    Members
    -------
    desc : In(stream.Signature(descriptor_layout))
        Descriptors (see :class:`AddressGenerator`); an empty one reads nothing and gives no
        beat.
    data : Out(stream.Signature(read_data_layout))
        The words, in walk order: ``data``, and the walk's ``last0``, ``last1``, ``last``
        (``last``: the descriptor's final word).
    port : Out(read_port_signature)
        To a scratchpad read port (``wiring.connect(m, reader.port, spad.r[i])``).

    Latency :attr:`latency` cycles from a descriptor's acceptance to its first word on a
    Scratchpad port without conflicts; one word per cycle sustained, across descriptors, while
    ``data`` is taken.
    """

    @classmethod
    def check_parameters(cls, *, addr_width, lanes, count_width=COUNT_WIDTH, depth=READ_LATENCY + 1):
        _check_widths(addr_width, count_width)
        check_int("lanes", lanes, 1, 64, pow2=True)
        check_int("depth", depth, 1, 64)

    def __init__(self, *, addr_width, lanes, count_width=COUNT_WIDTH, depth=READ_LATENCY + 1):
        self._addr_width, self._lanes = addr_width, lanes
        self._count_width, self._depth = count_width, depth
        super().__init__({
            "desc": In(stream.Signature(descriptor_layout(addr_width=addr_width, count_width=count_width))),
            "data": Out(stream.Signature(read_data_layout(lanes))),
            "port": Out(read_port_signature(addr_width=addr_width, lanes=lanes)),
        })

    @classmethod
    def from_config(cls, config, *, count_width=COUNT_WIDTH, depth=READ_LATENCY + 1):
        mem = config.memory
        return cls(addr_width=address_width(words=mem.spad_words, banks=mem.spad_banks),
                   lanes=mem.spad_lanes, count_width=count_width, depth=depth)

    addr_width = property(lambda self: self._addr_width)
    lanes = property(lambda self: self._lanes)
    count_width = property(lambda self: self._count_width)
    depth = property(lambda self: self._depth)

    @property
    def latency(self):
        """Cycles from a descriptor's acceptance to its first word (no bank conflict)."""
        return 1 + READ_LATENCY

    @property
    def throughput(self):
        """Words per cycle (no bank conflict, ``data`` taken)."""
        return 1 if self._depth > READ_LATENCY else self._depth / (READ_LATENCY + 1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.agu = agu = AddressGenerator(addr_width=self._addr_width,
                                                  count_width=self._count_width)
        m.submodules.flags = flags = SyncFIFO(width=3, depth=self._depth)
        wiring.connect(m, wiring.flipped(self.desc), agu.desc)
        a, req, resp = agu.out, self.port.req, self.port.resp
        issue = a.valid & ~a.payload.empty & flags.w_rdy
        m.d.comb += [
            req.valid.eq(issue), req.payload.addr.eq(a.payload.addr),
            a.ready.eq(a.payload.empty | (flags.w_rdy & req.ready)),
            flags.w_en.eq(issue & req.ready),
            flags.w_data.eq(Cat(a.payload.last0, a.payload.last1, a.payload.last)),
            self.data.valid.eq(resp.valid), self.data.payload.data.eq(resp.payload.data),
            Cat(self.data.payload.last0, self.data.payload.last1, self.data.payload.last).eq(flags.r_data),
            resp.ready.eq(self.data.ready), flags.r_en.eq(resp.valid & self.data.ready),
        ]
        return m


class SpadWriter(CheckedComponent):
    """Writes a stream of words to the addresses of descriptors through a scratchpad write
    port, and signals each descriptor's completion.

    Parameters (keyword-only)
    -------------------------
    addr_width : int
        The scratchpad's address width, 1..32.
    lanes : int
        32-bit lanes per word, a power of two 1..64.
    count_width : int
        Bits of each descriptor count, 1..32.
    with_mask : bool
        The ``data`` stream has a ``mask`` field (lane write enables); without it every lane is
        written.
    depth : int
        Writes in flight (issued, not yet done) at most, 1..64. One word per cycle needs
        :data:`WRITE_LATENCY` + 1 (the default).

    Members
    -------
    desc : In(stream.Signature(descriptor_layout))
        Descriptors (see :class:`AddressGenerator`).
    data : In(stream.Signature(write_data_layout))
        One beat per address of the walks, in order; an empty descriptor takes none.
    port : Out(write_port_signature)
        To a scratchpad write port.
    done : Out(1)
        One pulse per descriptor, in order, in the cycle from which every read the scratchpad
        grants sees all of the descriptor's words (:attr:`done_latency` cycles after its last
        word is taken, without conflicts). An empty descriptor's pulse comes once the writes
        before it are done; the writer issues no write until then (a gap of at most
        :attr:`done_latency` cycles).

    Latency: a descriptor's first write is issued 1 cycle after its acceptance; ``done``
    :attr:`done_latency` cycles after the last word. One word per cycle sustained, across
    descriptors.
    """

    @classmethod
    def check_parameters(cls, *, addr_width, lanes, count_width=COUNT_WIDTH, with_mask=True,
                         depth=WRITE_LATENCY + 1):
        _check_widths(addr_width, count_width)
        check_int("lanes", lanes, 1, 64, pow2=True)
        check_int("depth", depth, 1, 64)
        if not isinstance(with_mask, bool):
            raise TypeError(f"with_mask must be a bool, not {with_mask!r}")

    def __init__(self, *, addr_width, lanes, count_width=COUNT_WIDTH, with_mask=True,
                 depth=WRITE_LATENCY + 1):
        self._addr_width, self._lanes, self._with_mask = addr_width, lanes, with_mask
        self._count_width, self._depth = count_width, depth
        super().__init__({
            "desc": In(stream.Signature(descriptor_layout(addr_width=addr_width, count_width=count_width))),
            "data": In(stream.Signature(write_data_layout(lanes, with_mask))),
            "port": Out(write_port_signature(addr_width=addr_width, lanes=lanes)),
            "done": Out(1),
        })

    @classmethod
    def from_config(cls, config, *, count_width=COUNT_WIDTH, with_mask=True, depth=WRITE_LATENCY + 1):
        mem = config.memory
        return cls(addr_width=address_width(words=mem.spad_words, banks=mem.spad_banks),
                   lanes=mem.spad_lanes, count_width=count_width, with_mask=with_mask, depth=depth)

    addr_width = property(lambda self: self._addr_width)
    lanes = property(lambda self: self._lanes)
    count_width = property(lambda self: self._count_width)
    with_mask = property(lambda self: self._with_mask)
    depth = property(lambda self: self._depth)

    @property
    def done_latency(self):
        """Cycles from the acceptance of a descriptor's last word to its ``done`` (no
        conflict)."""
        return WRITE_LATENCY

    @property
    def latency(self):
        """Cycles from a descriptor's acceptance to its first write request."""
        return 1

    @property
    def throughput(self):
        """Words per cycle (no bank conflict)."""
        return 1 if self._depth > WRITE_LATENCY else self._depth / (WRITE_LATENCY + 1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.agu = agu = AddressGenerator(addr_width=self._addr_width,
                                                  count_width=self._count_width)
        m.submodules.inflight = inflight = SyncFIFO(width=1, depth=self._depth)   # each write's last
        wiring.connect(m, wiring.flipped(self.desc), agu.desc)
        a, req, beat = agu.out, self.port.req, self.data.payload
        issue = a.valid & ~a.payload.empty & self.data.valid & inflight.w_rdy
        fire = issue & req.ready
        idle = inflight.level == 0
        end_empty = a.valid & a.payload.empty & idle   # an empty walk ends once nothing is in flight
        m.d.comb += [
            req.valid.eq(issue), req.payload.addr.eq(a.payload.addr), req.payload.data.eq(beat.data),
            req.payload.mask.eq(beat.mask if self._with_mask else Const((1 << self._lanes) - 1, self._lanes)),
            a.ready.eq(fire | end_empty), self.data.ready.eq(fire),
            inflight.w_en.eq(fire), inflight.w_data.eq(a.payload.last),
            inflight.r_en.eq(self.port.done),
            self.done.eq((self.port.done & inflight.r_data) | end_empty),
        ]
        return m
