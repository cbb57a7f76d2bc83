"""The chip's AXI4 master: a read engine and a write engine with several clients each.

Both engines take *requests* (``addr`` in bytes, aligned to the bus width; ``beats`` in bus
words) from their clients, split them into INCR bursts of at most ``max_burst`` beats that never
cross a 4 KiB boundary (:class:`BurstSplitter`), and issue the bursts of all clients round robin,
one burst per grant, with up to ``max_outstanding`` bursts in flight.

* :class:`AxiReadEngine`: each client gets its data back in request order on a data stream
  (``data``, ``last`` on the request's final beat, ``error`` on that beat if any beat of the
  request answered SLVERR or DECERR). A burst is issued only when the client's data FIFO has
  room for all of it (credits), so ``rready`` is always 1 and a slow client never blocks the R
  channel for the others.
* :class:`AxiWriteEngine`: each client gives the data of its requests on a data stream
  (``data``, ``strb``) and gets one ``done`` beat per request (``error`` if any B response of
  the request was an error) once all of its bursts are answered. A burst is issued only when
  all of its data is in the client's FIFO, so the W channel never waits for a slow client, and
  only when the client's ``done`` FIFO has room for its answer, so ``bready`` is always 1.

AXI IDs: one per client (``arid``/``awid`` = client index). A client's bursts therefore come
back in order (AXI orders responses of one ID), and the bursts of different clients may be
answered in any order and interleaved beat by beat. The docs are in docs/dma.md.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .axi import BOUNDARY_BYTES, MAX_BURST_BEATS, AxiSignature, Burst
from .counters import events_layout
from .params import check_int as _check_int

__all__ = ["request_layout", "read_data_layout", "write_data_layout", "done_layout", "burst_layout",
           "read_events_layout", "write_events_layout",
           "ReadClientSignature", "WriteClientSignature", "BurstSplitter", "AxiReadEngine",
           "AxiWriteEngine", "AXI_PROT", "AXI_CACHE"]

#: ``arprot``/``awprot`` of every burst: unprivileged, non-secure, data.
AXI_PROT = 0b010
#: ``arcache``/``awcache`` of every burst: normal memory, non-cacheable, bufferable.
AXI_CACHE = 0b0011


def request_layout(addr_width, beats_width):
    """A read or write request: ``addr`` (bytes, a multiple of the bus width in bytes) and
    ``beats`` (bus words, ≥ 1; 0 means 2**beats_width)."""
    return data.StructLayout({"addr": addr_width, "beats": beats_width})


def read_data_layout(data_width):
    """A beat of read data: ``data``; ``last``: the request's final beat; ``error``: (on the
    final beat) some beat of the request answered SLVERR or DECERR."""
    return data.StructLayout({"data": data_width, "last": 1, "error": 1})


def write_data_layout(data_width):
    """A beat of write data: ``data`` and ``strb`` (byte enables, bit i for byte i)."""
    return data.StructLayout({"data": data_width, "strb": data_width // 8})


def done_layout():
    """The answer to a write request: ``error``: some B response of it was SLVERR/DECERR."""
    return data.StructLayout({"error": 1})


class ReadClientSignature(wiring.Signature):
    """A read client of :class:`AxiReadEngine`, seen from the client.

    Members
    -------
    req : Out(stream.Signature(request_layout(addr_width, beats_width)))
    data : In(stream.Signature(read_data_layout(data_width)))
        The beats of every request, in request order.
    """

    def __init__(self, *, addr_width, data_width, beats_width):
        super().__init__({
            "req": Out(stream.Signature(request_layout(addr_width, beats_width))),
            "data": In(stream.Signature(read_data_layout(data_width))),
        })


class WriteClientSignature(wiring.Signature):
    """A write client of :class:`AxiWriteEngine`, seen from the client.

    Members
    -------
    req : Out(stream.Signature(request_layout(addr_width, beats_width)))
    data : Out(stream.Signature(write_data_layout(data_width)))
        Exactly ``beats`` beats per request, in request order (they may come before or after
        their request).
    done : In(stream.Signature(done_layout()))
        One beat per request, in request order, once every burst of it is answered on B.
    """

    def __init__(self, *, addr_width, data_width, beats_width):
        super().__init__({
            "req": Out(stream.Signature(request_layout(addr_width, beats_width))),
            "data": Out(stream.Signature(write_data_layout(data_width))),
            "done": In(stream.Signature(done_layout())),
        })


def read_events_layout(data_width):
    """The ``events`` of :class:`AxiReadEngine` (see its docstring)."""
    return events_layout({"busy": 1, "read_bursts": 1, "read_bytes": (data_width // 8).bit_length(),
                          "stall_ar": 1, "stall_credit": 1, "bad_id": 1})


def write_events_layout(data_width):
    """The ``events`` of :class:`AxiWriteEngine` (see its docstring)."""
    return events_layout({"busy": 1, "write_bursts": 1, "write_bytes": (data_width // 8).bit_length(),
                          "stall_aw": 1, "stall_w": 1, "stall_w_data": 1, "bad_id": 1})


def burst_layout(addr_width, max_burst):
    """A burst of :class:`BurstSplitter`: ``addr`` (bytes), ``len`` (AXI ``*len``: beats − 1),
    ``last`` (the request's final burst)."""
    return data.StructLayout({"addr": addr_width, "len": range(max_burst), "last": 1})


class BurstSplitter(wiring.Component):
    """Splits requests into INCR bursts of ≤ ``max_burst`` beats that never cross a 4 KiB
    boundary.

    Parameters
    ----------
    addr_width : int
        12..64.
    beats_width : int
        Bits of a request's ``beats`` field, 1..64.
    data_bytes : int
        Bytes per beat: a power of two, 1..128.
    max_burst : int
        Longest burst in beats, 1..256.

    Members
    -------
    req : In(stream.Signature(request_layout(addr_width, beats_width)))
        ``addr`` must be a multiple of ``data_bytes`` (its low bits are ignored); ``beats`` ≥ 1
        (0 means 2**beats_width).
    burst : Out(stream.Signature(burst_layout(addr_width, max_burst)))
        The bursts of each request in address order; ``last`` on its final burst.

    A burst is ``min(remaining, max_burst, beats to the next 4 KiB boundary)`` beats. The first
    burst of a request leaves 2 cycles after the request is taken; one burst per cycle after
    that, and a request is taken in the cycle its predecessor's last burst is formed, so a
    stream of one-burst requests gives one burst per cycle.
    """

    def __init__(self, *, addr_width, beats_width, data_bytes, max_burst):
        _check_int("addr_width", addr_width, 12, 64)
        _check_int("beats_width", beats_width, 1, 64)
        _check_int("data_bytes", data_bytes, 1, 128)
        exact_log2(data_bytes)
        _check_int("max_burst", max_burst, 1, MAX_BURST_BEATS)
        self._addr_width, self._beats_width = addr_width, beats_width
        self._data_bytes, self._max_burst = data_bytes, max_burst
        super().__init__({
            "req": In(stream.Signature(request_layout(addr_width, beats_width))),
            "burst": Out(stream.Signature(burst_layout(addr_width, max_burst))),
        })

    def elaborate(self, platform):
        m = Module()
        lb = exact_log2(self._data_bytes)
        page_bits = exact_log2(BOUNDARY_BYTES) - lb          # word-index bits within a 4 KiB page
        busy = Signal()
        word = Signal(self._addr_width - lb)                 # address in bus words
        rem_m1 = Signal(self._beats_width)                   # beats left − 1
        to_page_m1 = Signal(page_bits)
        m.d.comb += to_page_m1.eq(~word[:page_bits])         # beats to the boundary − 1
        cap_m1 = Signal(range(max(self._max_burst, 1 << page_bits)))
        m.d.comb += cap_m1.eq(Mux(to_page_m1 < self._max_burst - 1, to_page_m1, self._max_burst - 1))
        n_m1 = Signal(range(self._max_burst))
        last = Signal()
        m.d.comb += [last.eq(rem_m1 <= cap_m1), n_m1.eq(Mux(last, rem_m1, cap_m1))]

        out = self.burst
        load = Signal()
        m.d.comb += load.eq(busy & (~out.valid | out.ready))
        with m.If(out.ready):
            m.d.sync += out.valid.eq(0)
        with m.If(load):
            m.d.sync += [out.valid.eq(1), out.payload.addr.eq(word << lb), out.payload.len.eq(n_m1),
                         out.payload.last.eq(last),
                         word.eq(word + n_m1 + 1), rem_m1.eq(rem_m1 - n_m1 - 1)]
            with m.If(last):
                m.d.sync += busy.eq(0)
        m.d.comb += self.req.ready.eq(~busy | (load & last))
        with m.If(self.req.valid & self.req.ready):
            m.d.sync += [busy.eq(1), word.eq(self.req.payload.addr[lb:]),
                         rem_m1.eq(self.req.payload.beats - 1)]
        return m


def round_robin(m, eligible, name):
    """One-hot grant among ``eligible`` (a list of 1-bit values): the first eligible index after
    the previous grant, cyclically. Returns ``(any, grant_bits, index)``; the previous grant is
    remembered when the caller sets ``take`` (returned fourth) in a cycle with ``any``."""
    n = len(eligible)
    elig = Signal(n, name=f"{name}_eligible")
    m.d.comb += elig.eq(Cat(*eligible))
    take = Signal(name=f"{name}_take")
    if n == 1:
        return elig[0], elig, Const(0, 1), take
    prev = Signal(range(n), name=f"{name}_prev", init=n - 1)
    above = Signal(n, name=f"{name}_above")
    m.d.comb += above.eq(elig & (Const((1 << n) - 1, n) << (prev + 1))[:n])
    pool = Signal(n, name=f"{name}_pool")
    m.d.comb += pool.eq(Mux(above.any(), above, elig))
    grant = Signal(n, name=f"{name}_grant")
    m.d.comb += grant.eq(pool & (~pool + 1)[:n])
    index = Signal(range(n), name=f"{name}_index")
    for i in range(n):
        with m.If(grant[i]):
            m.d.comb += index.eq(i)
    with m.If(take & elig.any()):
        m.d.sync += prev.eq(index)
    return elig.any(), grant, index, take


class _EngineParams:
    """Parameters shared by both engines (validated once)."""

    def __init__(self, clients, addr_width, data_width, id_width, beats_width, max_burst,
                 max_outstanding, fifo_depth):
        _check_int("clients", clients, 1, 16)
        _check_int("addr_width", addr_width, 12, 64)
        if data_width not in (32, 64, 128, 256, 512, 1024) or isinstance(data_width, bool):
            raise ValueError(f"data_width must be one of 32, 64, 128, 256, 512, 1024, not {data_width!r}")
        min_id = max(1, ceil_log2(clients))
        if id_width is None:
            id_width = min_id
        _check_int("id_width", id_width, min_id, 16)
        if beats_width is None:
            beats_width = addr_width - exact_log2(data_width // 8)
        _check_int("beats_width", beats_width, 1, 64)
        _check_int("max_burst", max_burst, 1, MAX_BURST_BEATS)
        _check_int("max_outstanding", max_outstanding, 1, 64)
        _check_int("fifo_depth", fifo_depth, max(4, max_burst), 1 << 16)
        self.clients, self.addr_width, self.data_width = clients, addr_width, data_width
        self.id_width, self.beats_width, self.max_burst = id_width, beats_width, max_burst
        self.max_outstanding, self.fifo_depth = max_outstanding, fifo_depth

    @property
    def data_bytes(self):
        return self.data_width // 8

    def axi(self, *, read):
        return AxiSignature(addr_width=self.addr_width, data_width=self.data_width,
                            id_width=self.id_width, read=read, write=not read)

    def splitter(self):
        return BurstSplitter(addr_width=self.addr_width, beats_width=self.beats_width,
                             data_bytes=self.data_bytes, max_burst=self.max_burst)


class _EngineBase(wiring.Component):
    """Properties common to both engines."""

    #: Defaults of :meth:`from_config` (the chip's engines).
    CHIP_MAX_BURST = 64
    CHIP_MAX_OUTSTANDING = 8
    CHIP_FIFO_DEPTH = 128

    num_clients = property(lambda self: self._p.clients)
    addr_width = property(lambda self: self._p.addr_width)
    data_width = property(lambda self: self._p.data_width)
    id_width = property(lambda self: self._p.id_width)
    beats_width = property(lambda self: self._p.beats_width)
    max_burst = property(lambda self: self._p.max_burst)
    max_outstanding = property(lambda self: self._p.max_outstanding)
    fifo_depth = property(lambda self: self._p.fifo_depth)
    data_bytes = property(lambda self: self._p.data_bytes)

    @property
    def request_layout(self):
        return request_layout(self._p.addr_width, self._p.beats_width)

    @property
    def throughput(self):
        """Data beats per cycle on long requests when the memory keeps up."""
        return 1

    @classmethod
    def _config_kwargs(cls, config, clients, **overrides):
        from .config import ChipConfig
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        mem = config.memory
        kw = dict(clients=clients, addr_width=mem.axi_addr_bits, data_width=mem.axi_data_bits,
                  max_burst=cls.CHIP_MAX_BURST, max_outstanding=cls.CHIP_MAX_OUTSTANDING,
                  fifo_depth=cls.CHIP_FIFO_DEPTH)
        kw.update(overrides)
        return kw


class AxiReadEngine(_EngineBase):
    """AXI4 read master serving ``clients`` read clients.

    Parameters
    ----------
    clients : int
        Read clients, 1..16.
    addr_width : int
        12..64.
    data_width : int
        32, 64, 128, 256, 512 or 1024.
    id_width : int or None
        ``arid`` bits, ≥ ceil(log2(clients)); default the minimum (1 for one client).
    beats_width : int or None
        Bits of a request's ``beats``; default ``addr_width − log2(data_width/8)``.
    max_burst : int
        Longest burst, 1..256 beats.
    max_outstanding : int
        Bursts issued and not yet fully answered, over all clients, 1..64.
    fifo_depth : int
        Beats of each client's data FIFO, ≥ ``max_burst`` and ≥ 4. One client alone reads at full rate
        when ``fifo_depth`` beats cover the round trip (burst issue to the client taking the
        beat): about the memory's latency + ``max_burst`` + 6 cycles.

    Members
    -------
    clients : In(ReadClientSignature).array(clients)
        ``clients[i].req``: requests; ``clients[i].data``: their beats, in request order.
    m_axi : Out(AxiSignature(read=True, write=False))
        The AR and R channels. ``arid`` = client index; ``arburst`` INCR; ``arsize`` full
        width; ``arcache`` :data:`AXI_CACHE`; ``arprot`` :data:`AXI_PROT`. ``rready`` is
        always 1. R beats may come in any order between IDs.
    events : Out(events_layout)
        ``busy`` (a request or burst is pending), ``read_bursts`` (AR accepted),
        ``read_bytes`` (bytes of R beats accepted this cycle), ``stall_ar`` (``arvalid``
        and not ``arready``), ``stall_credit`` (a burst waits only because its client's FIFO
        lacks room), ``bad_id`` (an R beat whose ``rid`` names no client; dropped).

    Latency: request taken → ``arvalid`` 3 cycles; R beat → client data 2 cycles.
    Throughput: one beat per cycle over all clients.
    """

    def __init__(self, *, clients, addr_width, data_width, id_width=None, beats_width=None,
                 max_burst=64, max_outstanding=8, fifo_depth=128):
        self._p = _EngineParams(clients, addr_width, data_width, id_width, beats_width, max_burst,
                                max_outstanding, fifo_depth)
        p = self._p
        client = ReadClientSignature(addr_width=p.addr_width, data_width=p.data_width,
                                     beats_width=p.beats_width)
        super().__init__({
            "clients": In(client).array(p.clients),
            "m_axi": Out(p.axi(read=True)),
            "events": Out(read_events_layout(p.data_width)),
        })

    @classmethod
    def from_config(cls, config, *, clients=3, **overrides):
        """The chip's read engine (clients: instruction fetch, LOAD, the matmul feeder)."""
        return cls(**cls._config_kwargs(config, clients, **overrides))

    @property
    def data_layout(self):
        return read_data_layout(self._p.data_width)

    @property
    def request_latency(self):
        """Cycles from a request taken to its first ``arvalid``."""
        return 3

    @property
    def data_latency(self):
        """Cycles from an R beat accepted to the beat on the client's data stream."""
        return 2

    def elaborate(self, platform):
        m = Module()
        p = self._p
        n = p.clients
        axi = self.m_axi
        fifo_width = p.data_width + 2
        splitters, fifos, lastqs, credits = [], [], [], []
        for c in range(n):
            s = m.submodules[f"split{c}"] = p.splitter()
            wiring.connect(m, wiring.flipped(self.clients[c].req), s.req)
            f = m.submodules[f"data{c}"] = SyncFIFOBuffered(width=fifo_width, depth=p.fifo_depth)
            q = m.submodules[f"lastq{c}"] = SyncFIFO(width=1, depth=p.max_outstanding)
            out = self.clients[c].data
            m.d.comb += [out.valid.eq(f.r_rdy), out.payload.eq(f.r_data), f.r_en.eq(out.ready)]
            splitters.append(s)
            fifos.append(f)
            lastqs.append(q)
            credits.append(Signal(range(p.fifo_depth + 1), init=p.fifo_depth, name=f"credits{c}"))

        # -- AR: round robin over the clients whose next burst fits in their FIFO ---------------
        outstanding = Signal(range(p.max_outstanding + 1))
        ar_free = ~axi.arvalid | axi.arready
        can_issue = ar_free & (outstanding < p.max_outstanding)
        fits = [credits[c] > splitters[c].burst.payload.len for c in range(n)]
        eligible = [splitters[c].burst.valid & fits[c] for c in range(n)]
        any_eligible, grant, _, take = round_robin(m, eligible, "ar")
        issue = Signal()
        m.d.comb += [issue.eq(any_eligible & can_issue), take.eq(issue)]
        with m.If(axi.arready):
            m.d.sync += axi.arvalid.eq(0)
        m.d.comb += [axi.arburst.eq(Burst.INCR), axi.arsize.eq(exact_log2(p.data_bytes)),
                     axi.arcache.eq(AXI_CACHE), axi.arprot.eq(AXI_PROT)]
        for c, s in enumerate(splitters):
            granted = issue & grant[c]
            m.d.comb += [s.burst.ready.eq(granted), lastqs[c].w_en.eq(granted),
                         lastqs[c].w_data.eq(s.burst.payload.last)]
            with m.If(granted):
                m.d.sync += [axi.arvalid.eq(1), axi.araddr.eq(s.burst.payload.addr),
                             axi.arlen.eq(s.burst.payload.len), axi.arid.eq(c)]

        # -- R: every beat goes to its client's FIFO (room reserved at issue) -------------------
        m.d.comb += axi.rready.eq(1)
        r_done = Signal()   # the final beat of a burst of a known client
        bad_id = Signal()
        m.d.comb += bad_id.eq(axi.rvalid & (axi.rid >= n))
        resp_error = axi.rresp[1]
        for c in range(n):
            hit = axi.rvalid & (axi.rid == c)
            err = Signal(name=f"error{c}")
            f, q = fifos[c], lastqs[c]
            req_last = axi.rlast & q.r_data
            m.d.comb += [f.w_en.eq(hit),
                         f.w_data.eq(Cat(axi.rdata, req_last, req_last & (err | resp_error))),
                         q.r_en.eq(hit & axi.rlast)]
            with m.If(hit):
                m.d.sync += err.eq(Mux(req_last, 0, err | resp_error))
            with m.If(hit & axi.rlast):
                m.d.comb += r_done.eq(1)
            granted = issue & grant[c]
            popped = f.r_rdy & f.r_en
            m.d.sync += credits[c].eq(credits[c] + popped - Mux(granted, splitters[c].burst.payload.len + 1, 0))
        m.d.sync += outstanding.eq(outstanding + issue - r_done)

        ev = self.events
        busy_any = Cat(*[s.req.valid | s.burst.valid for s in splitters]).any()
        m.d.comb += [
            ev.busy.eq(busy_any | (outstanding != 0) | axi.arvalid),
            ev.read_bursts.eq(axi.arvalid & axi.arready),
            ev.read_bytes.eq(Mux(axi.rvalid & ~bad_id, p.data_bytes, 0)),
            ev.stall_ar.eq(axi.arvalid & ~axi.arready),
            ev.stall_credit.eq(~any_eligible & Cat(*[s.burst.valid for s in splitters]).any()
                               & can_issue),
            ev.bad_id.eq(bad_id),
        ]
        return m


class AxiWriteEngine(_EngineBase):
    """AXI4 write master serving ``clients`` write clients.

    Parameters
    ----------
    clients, addr_width, data_width, id_width, beats_width, max_burst, max_outstanding
        As :class:`AxiReadEngine` (``awid`` = client index).
    fifo_depth : int
        Beats of each client's write-data FIFO, ≥ ``max_burst`` and ≥ 4. A burst is issued once all of
        its data is in the FIFO; ``2 · max_burst`` lets a client fill the next burst while the
        previous one is sent.

    Members
    -------
    clients : In(WriteClientSignature).array(clients)
        ``clients[i].req``: requests; ``clients[i].data``: exactly ``beats`` beats per request,
        in request order; ``clients[i].done``: one beat per request, in order.
    m_axi : Out(AxiSignature(read=False, write=True))
        AW, W and B. ``awid`` = client index; W beats follow the AW order (no interleaving);
        ``bready`` is always 1 (the answer's room is reserved at issue).
    events : Out(events_layout)
        ``busy``, ``write_bursts`` (AW accepted), ``write_bytes`` (bytes with their strobe set
        of the W beat accepted this cycle), ``stall_aw`` (``awvalid`` and not ``awready``),
        ``stall_w`` (``wvalid`` and not ``wready``), ``stall_w_data`` (W is free and the
        current burst's next beat is not yet out of its client's FIFO), ``bad_id`` (a B beat
        whose ``bid`` names no client; dropped).

    Latency: a burst's last data beat into the FIFO → ``awvalid`` 2 cycles (request taken →
    ``awvalid`` 3 cycles when its data is already there); first W beat 1 cycle after the burst
    is issued when the FIFO holds it; B beat → ``done`` 1 cycle (SyncFIFO, first-word fall
    through). Throughput: one W beat per cycle over all clients.
    """

    def __init__(self, *, clients, addr_width, data_width, id_width=None, beats_width=None,
                 max_burst=64, max_outstanding=8, fifo_depth=128):
        self._p = _EngineParams(clients, addr_width, data_width, id_width, beats_width, max_burst,
                                max_outstanding, fifo_depth)
        p = self._p
        client = WriteClientSignature(addr_width=p.addr_width, data_width=p.data_width,
                                      beats_width=p.beats_width)
        super().__init__({
            "clients": In(client).array(p.clients),
            "m_axi": Out(p.axi(read=False)),
            "events": Out(write_events_layout(p.data_width)),
        })

    @classmethod
    def from_config(cls, config, *, clients=1, **overrides):
        """The chip's write engine (one client: STORE)."""
        return cls(**cls._config_kwargs(config, clients, **overrides))

    @property
    def data_layout(self):
        return write_data_layout(self._p.data_width)

    @property
    def done_layout(self):
        return done_layout()

    def elaborate(self, platform):
        m = Module()
        p = self._p
        n = p.clients
        splitters, fifos, avail = [], [], []
        blastqs, dones, done_credits = [], [], []
        for c in range(n):
            s = m.submodules[f"split{c}"] = p.splitter()
            wiring.connect(m, wiring.flipped(self.clients[c].req), s.req)
            f = m.submodules[f"data{c}"] = SyncFIFOBuffered(width=p.data_width + p.data_bytes,
                                                             depth=p.fifo_depth)
            src = self.clients[c].data
            m.d.comb += [f.w_en.eq(src.valid), f.w_data.eq(src.payload), src.ready.eq(f.w_rdy)]
            q = m.submodules[f"blastq{c}"] = SyncFIFO(width=1, depth=p.max_outstanding)
            d = m.submodules[f"done{c}"] = SyncFIFO(width=1, depth=p.max_outstanding)
            out = self.clients[c].done
            m.d.comb += [out.valid.eq(d.r_rdy), out.payload.eq(d.r_data), d.r_en.eq(out.ready)]
            splitters.append(s)
            fifos.append(f)
            blastqs.append(q)
            dones.append(d)
            avail.append(Signal(range(p.fifo_depth + 1), name=f"avail{c}"))
            done_credits.append(Signal(range(p.max_outstanding + 1), init=p.max_outstanding,
                                       name=f"done_credits{c}"))
        wq = m.submodules.wq = SyncFIFO(width=max(1, ceil_log2(n)) + 8, depth=p.max_outstanding)
        issue, grant, outstanding = self._issue(m, splitters, avail, done_credits, blastqs, wq)
        self._send_w(m, fifos, wq)
        b_done, bad_id = self._answer(m, blastqs, dones)
        m.d.sync += outstanding.eq(outstanding + issue - b_done)
        for c in range(n):
            s = splitters[c]
            granted = issue & grant[c]
            wrote = fifos[c].w_en & fifos[c].w_rdy
            m.d.sync += avail[c].eq(avail[c] + wrote - Mux(granted, s.burst.payload.len + 1, 0))
            answered = dones[c].r_en & dones[c].r_rdy
            m.d.sync += done_credits[c].eq(done_credits[c] + answered - (granted & s.burst.payload.last))

        axi, ev = self.m_axi, self.events
        busy_any = Cat(*[s.req.valid | s.burst.valid for s in splitters]).any()
        m.d.comb += [
            ev.busy.eq(busy_any | (outstanding != 0) | axi.awvalid | axi.wvalid),
            ev.write_bursts.eq(axi.awvalid & axi.awready),
            ev.stall_aw.eq(axi.awvalid & ~axi.awready),
            ev.stall_w.eq(axi.wvalid & ~axi.wready),
            ev.bad_id.eq(bad_id),
        ]
        with m.If(axi.wvalid & axi.wready):
            m.d.comb += ev.write_bytes.eq(sum(axi.wstrb[i] for i in range(p.data_bytes)))
        return m

    def _issue(self, m, splitters, avail, done_credits, blastqs, wq):
        """AW: round robin over the clients whose next burst's data is all in their FIFO (and
        whose answer has room, if it is a request's final burst)."""
        p = self._p
        axi = self.m_axi
        outstanding = Signal(range(p.max_outstanding + 1))
        can_issue = (~axi.awvalid | axi.awready) & (outstanding < p.max_outstanding) & wq.w_rdy
        eligible = []
        for c, s in enumerate(splitters):
            b = s.burst.payload
            eligible.append(s.burst.valid & (avail[c] > b.len) & (~b.last | (done_credits[c] != 0)))
        any_eligible, grant, _, take = round_robin(m, eligible, "aw")
        wq_len, wq_client = Signal(8), Signal(wq.width - 8)
        issue = Signal()
        m.d.comb += [issue.eq(any_eligible & can_issue), take.eq(issue)]
        with m.If(axi.awready):
            m.d.sync += axi.awvalid.eq(0)
        m.d.comb += [axi.awburst.eq(Burst.INCR), axi.awsize.eq(exact_log2(p.data_bytes)),
                     axi.awcache.eq(AXI_CACHE), axi.awprot.eq(AXI_PROT)]
        for c, s in enumerate(splitters):
            granted = issue & grant[c]
            m.d.comb += [s.burst.ready.eq(granted), blastqs[c].w_en.eq(granted),
                         blastqs[c].w_data.eq(s.burst.payload.last)]
            with m.If(granted):
                m.d.sync += [axi.awvalid.eq(1), axi.awaddr.eq(s.burst.payload.addr),
                             axi.awlen.eq(s.burst.payload.len), axi.awid.eq(c)]
                m.d.comb += [wq_len.eq(s.burst.payload.len), wq_client.eq(c)]
        m.d.comb += [wq.w_en.eq(issue), wq.w_data.eq(Cat(wq_len, wq_client))]
        return issue, grant, outstanding

    def _send_w(self, m, fifos, wq):
        """W: the beats of the issued bursts in AW order, from their clients' FIFOs."""
        p = self._p
        axi = self.m_axi
        head_len = wq.r_data[:8]
        head_client = wq.r_data[8:]
        count = Signal(8)
        w_free = ~axi.wvalid | axi.wready
        have = Signal()
        beat = Signal(p.data_width + p.data_bytes)
        for c, f in enumerate(fifos):
            with m.If(head_client == c):
                m.d.comb += [have.eq(f.r_rdy), beat.eq(f.r_data)]
        send = Signal()
        m.d.comb += send.eq(w_free & wq.r_rdy & have)
        for c, f in enumerate(fifos):
            m.d.comb += f.r_en.eq(send & (head_client == c))
        with m.If(axi.wready):
            m.d.sync += axi.wvalid.eq(0)
        last = count == head_len
        with m.If(send):
            m.d.sync += [axi.wvalid.eq(1), axi.wdata.eq(beat[:p.data_width]),
                         axi.wstrb.eq(beat[p.data_width:]), axi.wlast.eq(last),
                         count.eq(Mux(last, 0, count + 1))]
        m.d.comb += [wq.r_en.eq(send & last),
                     self.events.stall_w_data.eq(w_free & wq.r_rdy & ~have)]

    def _answer(self, m, blastqs, dones):
        """B: each answer goes to its client; a request's final burst's answer becomes its
        ``done`` beat, with the errors of all of its bursts."""
        axi = self.m_axi
        n = self._p.clients
        m.d.comb += axi.bready.eq(1)
        b_done = Signal()
        bad_id = Signal()
        m.d.comb += bad_id.eq(axi.bvalid & (axi.bid >= n))
        for c in range(n):
            hit = axi.bvalid & (axi.bid == c)
            err = Signal(name=f"error{c}")
            q, d = blastqs[c], dones[c]
            final = q.r_data
            m.d.comb += [q.r_en.eq(hit), d.w_en.eq(hit & final), d.w_data.eq(err | axi.bresp[1])]
            with m.If(hit):
                m.d.sync += err.eq(Mux(final, 0, err | axi.bresp[1]))
                m.d.comb += b_done.eq(1)
        return b_done, bad_id
