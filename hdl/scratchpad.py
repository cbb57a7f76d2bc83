"""The on-chip scratchpad: banks of wide words behind arbitrated read and write ports.

``banks`` banks of ``words`` words; a word is ``lanes`` lanes of 32 bits. A *global word
address* is ``bank · words + offset``; the address field has one guard bit more than the
capacity needs, so that an address past the last bank (a walk that runs off the end, see
:class:`hdl.agu.AddressGenerator`, which saturates instead of wrapping) is never a valid one.

Each bank is a :class:`hdl.memport.SyncMemory` with one read and one write port and a write
enable per lane. Every cycle, each bank serves one read and one write, each chosen round robin
among the ports whose oldest request wants that bank. The protocol, timing and counters are in
docs/scratchpad.md.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .counters import events_layout
from .memport import SyncMemory
from .params import check_int

__all__ = ["Scratchpad", "RoundRobin", "READ_LATENCY", "WRITE_LATENCY", "address_width",
           "read_port_signature", "write_port_signature", "read_request_layout",
           "read_response_layout", "write_request_layout", "scratchpad_events_layout", "check_int",
           "CheckedComponent"]

#: Cycles from a read request's acceptance to its response's ``valid`` (no bank conflict).
READ_LATENCY = 3
#: Cycles from a write request's acceptance to its ``done`` pulse (no bank conflict); from the
#: cycle of ``done`` on, every read the scratchpad grants returns the written word.
WRITE_LATENCY = 2


class CheckedComponent(wiring.Component):
    """A component whose keyword parameters are checked before the object exists.

    ``__new__`` calls the class's ``check_parameters(**parameters)`` (raising
    ``TypeError``/``ValueError`` that name the parameter) before Amaranth registers the new
    object as an elaboratable that must be used, so that a bad parameter gives its error and no
    "created but never used" warning besides: Amaranth offers no public way to discard an
    elaboratable. Positional arguments are refused (parameters are keyword-only).
    """

    def __new__(cls, *args, **parameters):
        if args:
            raise TypeError(f"{cls.__name__} takes keyword arguments only")
        cls.check_parameters(**parameters)
        return super().__new__(cls, src_loc_at=1, **parameters)

    @classmethod
    def check_parameters(cls, **parameters):
        raise NotImplementedError


def address_width(*, words, banks):
    """Bits of a global word address: ``ceil(log2(banks · words))`` plus one guard bit."""
    return exact_log2(words) + ceil_log2(banks) + 1


def read_request_layout(addr_width):
    """``r[i].req`` payload: ``addr``, a global word address."""
    return data.StructLayout({"addr": addr_width})


def read_response_layout(lanes):
    """``r[i].resp`` payload: ``data``, the word (``lanes`` lanes of 32 bits)."""
    return data.StructLayout({"data": data.ArrayLayout(32, lanes)})


def write_request_layout(addr_width, lanes):
    """``w[j].req`` payload: ``addr``; ``data``; ``mask``, one write enable per lane."""
    return data.StructLayout({"addr": addr_width, "data": data.ArrayLayout(32, lanes),
                              "mask": lanes})


def read_port_signature(*, addr_width, lanes):
    """A scratchpad read port seen from its user: ``req`` (stream out) and ``resp`` (stream in,
    one beat per request, in request order)."""
    return wiring.Signature({"req": Out(stream.Signature(read_request_layout(addr_width))),
                             "resp": In(stream.Signature(read_response_layout(lanes)))})


def write_port_signature(*, addr_width, lanes):
    """A scratchpad write port seen from its user: ``req`` (stream out) and ``done`` (in, a
    one-cycle pulse per request, in request order, once the write is visible to reads)."""
    return wiring.Signature({"req": Out(stream.Signature(write_request_layout(addr_width, lanes))),
                             "done": In(1)})


def scratchpad_events_layout(*, banks, read_ports, write_ports):
    """The ``events`` layout of a :class:`Scratchpad`: ``bank<b>_reads``, ``bank<b>_writes``
    (flags), ``r<i>_wait``, ``w<j>_wait`` (flags), ``bad_addr`` (requests per cycle)."""
    fields = {}
    for b in range(banks):
        fields[f"bank{b}_reads"] = 1
        fields[f"bank{b}_writes"] = 1
    fields.update({f"r{i}_wait": 1 for i in range(read_ports)})
    fields.update({f"w{j}_wait": 1 for j in range(write_ports)})
    fields["bad_addr"] = ceil_log2(read_ports + write_ports + 1)
    return events_layout(fields)


def _lowest_one(m, x, width, name):
    """A signal with only the lowest set bit of ``x`` (``width`` bits) set."""
    low = Signal(width, name=name)
    m.d.comb += low.eq(x & (~x + 1))
    return low


class RoundRobin(CheckedComponent):
    """A round-robin arbiter among ``count`` requesters.

    In every cycle in which some ``requests`` bit is 1, exactly one of them is granted: the
    first requester after the one granted last (in index order, wrapping around; requester 0
    first after reset). A requester that keeps requesting is granted within ``count`` cycles in
    which grants are made.

    Parameters
    ----------
    count : int
        Requesters, 1..64.

    Members
    -------
    requests : In(count)
    grant : Out(count)
        One-hot (or 0 when nothing requests), combinational from ``requests``.

    Latency 0 (the grant is in the cycle of the request); one grant per cycle.
    """

    @classmethod
    def check_parameters(cls, *, count):
        check_int("count", count, 1, 64)

    def __init__(self, *, count):
        self._count = count
        super().__init__({"requests": In(count), "grant": Out(count)})

    @property
    def count(self):
        return self._count

    @property
    def max_wait(self):
        """Cycles with grants that a continuously requesting requester waits at most."""
        return self._count - 1

    def elaborate(self, platform):
        m = Module()
        n = self._count
        if n == 1:
            m.d.comb += self.grant.eq(self.requests)
            return m
        above = Signal(n, init=(1 << n) - 1)   # the requesters after the last one granted
        first_above = _lowest_one(m, self.requests & above, n, "first_above")
        first = _lowest_one(m, self.requests, n, "first")
        m.d.comb += self.grant.eq(Mux(first_above.any(), first_above, first))
        below_and_granted = Signal(n)
        m.d.comb += below_and_granted.eq((self.grant << 1) - 1)
        with m.If(self.requests.any()):
            m.d.sync += above.eq(~below_and_granted)
        return m


class Scratchpad(CheckedComponent):
    """``banks`` banks of ``words`` words of ``lanes`` 32-bit lanes, with ``read_ports`` read
    ports and ``write_ports`` write ports.

    Parameters (keyword-only)
    -------------------------
    lanes : int
        32-bit lanes per word, a power of two 1..64.
    words : int
        Words per bank, a power of two 2..2**20.
    banks : int
        Banks, 1..16. Bank ``b`` holds the global addresses ``b·words … (b+1)·words − 1``.
    read_ports, write_ports : int
        Ports, 1..16 each.
    resp_depth : int or None
        Responses a read port buffers (its credit), 1..64; ``None``: :data:`READ_LATENCY` + 1,
        the least that sustains one word per cycle.
    verilog : bool or None
        Passed to every bank's :class:`hdl.memport.SyncMemory` (``None``: a Verilog RAM
        instance above 1 Mbit per bank, which ``amaranth.sim`` cannot run).

    Members
    -------
    r : In(read_port_signature).array(read_ports)
        ``r[i].req``: stream of ``addr`` (:attr:`addr_width` bits). A request is accepted only
        when the port has room for its response (``resp_depth`` outstanding at most), so a
        reader that stops taking responses never holds a bank. ``r[i].resp``: stream of
        ``data`` (``ArrayLayout(32, lanes)``), one beat per request, in request order; an
        address past the last bank reads zeros.
    w : In(write_port_signature).array(write_ports)
        ``w[j].req``: stream of ``addr``, ``data`` and ``mask`` (lane ``k`` is written when
        mask bit ``k`` is 1). ``w[j].done``: a one-cycle pulse per request, in request order,
        :data:`WRITE_LATENCY` cycles after acceptance without conflicts; from that cycle on
        every read the scratchpad grants sees the word. A write past the last bank is dropped
        (and still answered on ``done``).
    events : Out(events_layout)
        ``bank<b>_reads`` / ``bank<b>_writes``: flags, a read / a write (non-zero mask) of bank
        ``b`` this cycle; ``r<i>_wait`` / ``w<j>_wait``: flags, the port's oldest request waits
        for its bank (a bank conflict); ``bad_addr``: requests to an address past the last bank
        consumed this cycle.

    Per bank and cycle one read and one write, each granted round robin (:class:`RoundRobin`)
    among the ports that want the bank: a port's oldest request waits at most ``ports − 1``
    cycles. A read and a write of one address granted in the same cycle: the read returns the
    old word. Within one read port, responses come in request order; within one write port,
    writes happen in request order.

    Latency: :attr:`read_latency` cycles from a read request's acceptance to its response,
    :attr:`write_latency` from a write's acceptance to its ``done``, each plus the cycles it
    waits for its bank. Throughput: one request per port per cycle while the ports use
    different banks and readers take their responses.

    Raises
    ------
    TypeError, ValueError
        A parameter of the wrong type or out of range; the message names it.
    """

    @classmethod
    def check_parameters(cls, *, lanes, words, banks, read_ports, write_ports, resp_depth=None,
                         verilog=None):
        check_int("lanes", lanes, 1, 64, pow2=True)
        check_int("words", words, 2, 1 << 20, pow2=True)
        check_int("banks", banks, 1, 16)
        check_int("read_ports", read_ports, 1, 16)
        check_int("write_ports", write_ports, 1, 16)
        if resp_depth is not None:
            check_int("resp_depth", resp_depth, 1, 64)
        if verilog not in (None, True, False):
            raise TypeError(f"verilog must be None, True or False, not {verilog!r}")

    def __init__(self, *, lanes, words, banks, read_ports, write_ports, resp_depth=None,
                 verilog=None):
        if resp_depth is None:
            resp_depth = READ_LATENCY + 1
        self._lanes, self._words, self._banks = lanes, words, banks
        self._read_ports, self._write_ports = read_ports, write_ports
        self._resp_depth, self._verilog = resp_depth, verilog
        aw = self.addr_width
        super().__init__({
            "r": In(read_port_signature(addr_width=aw, lanes=lanes)).array(read_ports),
            "w": In(write_port_signature(addr_width=aw, lanes=lanes)).array(write_ports),
            "events": Out(self.events_layout),
        })

    @classmethod
    def from_config(cls, config, *, read_ports=8, write_ports=5, resp_depth=None, verilog=None):
        """The scratchpad of an :class:`hdl.config.ChipConfig` (``memory.spad_*``). The default
        ports are one per stream of the units in docs/chip.md: reads for STORE, the matmul
        activations, four vector streams, softmax and KV append; writes for LOAD, the matmul
        results, two vector streams and softmax."""
        mem = config.memory
        return cls(lanes=mem.spad_lanes, words=mem.spad_words, banks=mem.spad_banks,
                   read_ports=read_ports, write_ports=write_ports, resp_depth=resp_depth,
                   verilog=verilog)

    lanes = property(lambda self: self._lanes)
    words = property(lambda self: self._words)
    banks = property(lambda self: self._banks)
    read_ports = property(lambda self: self._read_ports)
    write_ports = property(lambda self: self._write_ports)
    resp_depth = property(lambda self: self._resp_depth)

    @property
    def capacity(self):
        """Words in all banks; global addresses ``0 … capacity − 1`` are valid."""
        return self._banks * self._words

    @property
    def addr_width(self):
        return address_width(words=self._words, banks=self._banks)

    @property
    def read_latency(self):
        """Cycles from a read request's acceptance to its response's ``valid``, no conflict."""
        return READ_LATENCY

    @property
    def latency(self):
        """The read latency (:attr:`read_latency`)."""
        return READ_LATENCY

    @property
    def write_latency(self):
        """Cycles from a write request's acceptance to its ``done``, no conflict."""
        return WRITE_LATENCY

    @property
    def throughput(self):
        """Requests per port per cycle (ports on different banks, responses taken)."""
        return 1 if self._resp_depth > READ_LATENCY else self._resp_depth / (READ_LATENCY + 1)

    @property
    def max_read_wait(self):
        """Cycles a read port's oldest request waits for its bank at most."""
        return self._read_ports - 1

    @property
    def max_write_wait(self):
        """Cycles a write port's oldest request waits for its bank at most."""
        return self._write_ports - 1

    @property
    def events_layout(self):
        return scratchpad_events_layout(banks=self._banks, read_ports=self._read_ports,
                                        write_ports=self._write_ports)

    # -- hardware ----------------------------------------------------------------------------
    def _entry_layout(self, write):
        """A request as a port's input queue holds it: the bank decoded (one-hot; all zero and
        ``bad`` for an address past the last bank), the offset in the bank, and for writes the
        data and mask."""
        fields = {"bank": self._banks, "bad": 1, "offset": exact_log2(self._words)}
        if write:
            fields.update({"data": 32 * self._lanes, "mask": self._lanes})
        return data.StructLayout(fields)

    def _queue(self, m, name, addr, write):
        """A two-entry input queue of decoded requests (registered ``ready``); returns the
        FIFO and a view of its oldest entry."""
        layout = self._entry_layout(write)
        fifo = SyncFIFO(width=layout.size, depth=2)
        m.submodules[name] = fifo
        entry = Signal(layout, name=f"{name}_in")
        ob = exact_log2(self._words)
        bank = addr[ob:]
        m.d.comb += [entry.offset.eq(addr[:ob]), entry.bad.eq(bank >= self._banks),
                     entry.bank.eq(Cat(bank == b for b in range(self._banks))),
                     fifo.w_data.eq(entry)]
        return fifo, entry, data.View(layout, fifo.r_data)

    def elaborate(self, platform):
        m = Module()
        B = self._banks
        mems = []
        for b in range(B):
            mem = SyncMemory(depth=self._words, data_width=32 * self._lanes, granularity=32,
                             verilog=self._verilog)
            m.submodules[f"bank{b}"] = mem
            mems.append(mem.port)
        rd = [self._read_front(m, i) for i in range(self._read_ports)]
        wr = [self._write_front(m, j) for j in range(self._write_ports)]
        read_grants = self._arbitrate(m, mems, rd, write=False)
        write_grants = self._arbitrate(m, mems, wr, write=True)
        bad = []
        for i, (fifo, head) in enumerate(rd):
            granted = Cat(g[i] for g in read_grants).any()
            self._read_back(m, i, fifo, head, granted, mems)
            bad.append(fifo.r_rdy & head.bad)
            m.d.comb += getattr(self.events, f"r{i}_wait").eq(fifo.r_rdy & ~head.bad & ~granted)
        for j, (fifo, head) in enumerate(wr):
            granted = Cat(g[j] for g in write_grants).any()
            pop = fifo.r_rdy & (head.bad | granted)
            m.d.comb += fifo.r_en.eq(pop)
            m.d.sync += self.w[j].done.eq(pop)
            bad.append(fifo.r_rdy & head.bad)
            m.d.comb += getattr(self.events, f"w{j}_wait").eq(fifo.r_rdy & ~head.bad & ~granted)
        m.d.comb += self.events.bad_addr.eq(sum(bad))
        for b, mem in enumerate(mems):
            m.d.comb += [getattr(self.events, f"bank{b}_reads").eq(mem.ren),
                         getattr(self.events, f"bank{b}_writes").eq(mem.wen.any())]
        return m

    def _read_front(self, m, i):
        """Read port ``i``'s input queue and credit: a request is taken while fewer than
        ``resp_depth`` of the port's requests are unanswered."""
        port = self.r[i]
        fifo, _, head = self._queue(m, f"r{i}_queue", port.req.payload.addr, write=False)
        outstanding = Signal(range(self._resp_depth + 1), name=f"r{i}_outstanding")
        take = port.req.valid & port.req.ready
        give = port.resp.valid & port.resp.ready
        m.d.comb += [port.req.ready.eq(fifo.w_rdy & (outstanding < self._resp_depth)),
                     fifo.w_en.eq(take)]
        with m.If(take & ~give):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.If(give & ~take):
            m.d.sync += outstanding.eq(outstanding - 1)
        return fifo, head

    def _write_front(self, m, j):
        port = self.w[j]
        fifo, entry, head = self._queue(m, f"w{j}_queue", port.req.payload.addr, write=True)
        m.d.comb += [entry.data.eq(port.req.payload.data), entry.mask.eq(port.req.payload.mask),
                     port.req.ready.eq(fifo.w_rdy), fifo.w_en.eq(port.req.valid)]
        return fifo, head

    def _arbitrate(self, m, mems, ports, *, write):
        """Per bank, a :class:`RoundRobin` among the ports whose oldest request wants it;
        drives the bank's read (or write) port from the granted request (AND-OR selects:
        grants are one-hot). Returns the grant vector of every bank."""
        kind = "w" if write else "r"
        grants = []
        for b, mem in enumerate(mems):
            arb = RoundRobin(count=len(ports))
            m.submodules[f"bank{b}_{kind}arb"] = arb
            m.d.comb += arb.requests.eq(Cat(f.r_rdy & h.bank[b] for f, h in ports))
            g = arb.grant

            def pick(field, g=g):
                out = 0
                for p, (_, h) in enumerate(ports):
                    out = out | Mux(g[p], getattr(h, field), 0)
                return out

            if write:
                m.d.comb += [mem.waddr.eq(pick("offset")), mem.wdata.eq(pick("data")),
                             mem.wen.eq(pick("mask"))]
            else:
                m.d.comb += [mem.raddr.eq(pick("offset")), mem.ren.eq(g.any())]
            grants.append(g)
        return grants

    def _read_back(self, m, i, fifo, head, granted, mems):
        """Pops read port ``i``'s request when granted (or at once when its address is bad)
        and moves the bank's word into the response FIFO a cycle later (zeros for a bad
        address)."""
        port = self.r[i]
        pop = fifo.r_rdy & (head.bad | granted)
        m.d.comb += fifo.r_en.eq(pop)
        arriving = Signal(name=f"r{i}_arriving")
        source = Signal(self._banks, name=f"r{i}_source")   # one-hot bank; 0 for a bad address
        m.d.sync += [arriving.eq(pop), source.eq(Mux(head.bad, 0, head.bank))]
        resp = SyncFIFO(width=32 * self._lanes, depth=self._resp_depth)
        m.submodules[f"r{i}_resp"] = resp
        word = 0
        for b, mem in enumerate(mems):
            word = word | Mux(source[b], mem.rdata, 0)
        m.d.comb += [resp.w_en.eq(arriving), resp.w_data.eq(word),
                     port.resp.valid.eq(resp.r_rdy), port.resp.payload.data.eq(resp.r_data),
                     resp.r_en.eq(port.resp.ready)]
