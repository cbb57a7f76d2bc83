"""The LOAD and STORE execution units: rows between external memory and the scratchpad.

A LOAD moves ``rows`` rows of ``elems`` elements of ``elem_bytes`` bytes (1, 2 or 4) from
external memory (row r at ``ext_addr + r·ext_stride`` bytes) to the scratchpad (row r at word
``spad_addr + r·spad_stride``): element i of a row goes to lane ``i % L`` of the row's word
``i // L`` (L = ``spad_lanes``), 1- and 2-byte elements sign-extended (``signed``) or
zero-extended (bf16 is 2 bytes, unsigned), 4-byte elements whole; lanes past the row's end are
written 0. A STORE moves rows the other way, each lane's low ``elem_bytes`` bytes, with byte
strobes so that the bytes past a row's end in its last bus word are not written.

Each unit takes descriptors on ``cmd`` and answers each on ``resp`` (``status``:
:class:`spec.codes.LoadStoreStatus`), in order, once its data is all written (LOAD: every word
accepted by the scratchpad port; STORE: every burst answered on B). A bad descriptor is
answered without touching any memory. The LOAD reads through one :class:`hdl.dma.AxiReadEngine`
client, the STORE writes through one :class:`hdl.dma.AxiWriteEngine` client. The protocol and
the rates are in docs/dma.md.

Structure (each a component with its own tests): :class:`DescriptorChecker` (the checks, three
cycles) → the unit's issuer (one external request per row, and for a STORE the scratchpad reads)
→ a job FIFO → :class:`RowUnpacker` (LOAD: bus words → scratchpad words) or
:class:`RowPacker` (STORE: scratchpad words → bus words) and the STORE's completion counter.
The issuer runs ahead of the data by up to :attr:`LoadUnit.JOBS` descriptors.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spec.codes import LoadStoreStatus
from spec.isa import ElemBytes

from .counters import events_layout
from .dma import ReadClientSignature, WriteClientSignature
from .params import check_int as _check_int

__all__ = ["ROWS_BITS", "ELEMS_BITS", "ELEM_BYTES", "ELEM_CODE", "load_desc_layout", "store_desc_layout", "resp_layout",
           "load_events_layout", "store_events_layout",
           "spad_write_layout", "spad_read_req_layout", "spad_read_resp_layout", "SpadReadSignature",
           "SpadWriteSignature", "default_spad_addr_width",
           "DescriptorChecker", "RowUnpacker", "RowPacker", "LoadUnit", "StoreUnit"]

#: Bits of a descriptor's ``rows`` and ``elems``.
ROWS_BITS = 16
ELEMS_BITS = 16
#: The element sizes a descriptor may give, in bytes.
ELEM_BYTES = (1, 2, 4)
#: The ``elem_bytes`` code of each size (``spec.isa.ElemBytes``, log2 of the bytes; 3 is bad).
ELEM_CODE = {1: ElemBytes.B1, 2: ElemBytes.B2, 4: ElemBytes.B4}


def load_desc_layout(addr_width, spad_addr_width):
    """A LOAD descriptor: ``ext_addr``, ``ext_stride`` (bytes, multiples of the bus width),
    ``rows``, ``elems`` (per row), ``elem_bytes`` (``spec.isa.ElemBytes``: B1, B2, B4 for 1, 2,
    4 bytes; 3 is bad), ``signed`` (sign-extend 1- and
    2-byte elements), ``spad_addr``, ``spad_stride`` (words)."""
    return data.StructLayout({"ext_addr": addr_width, "ext_stride": addr_width, "rows": ROWS_BITS,
                              "elems": ELEMS_BITS, "elem_bytes": ElemBytes, "signed": 1,
                              "spad_addr": spad_addr_width, "spad_stride": spad_addr_width})


def store_desc_layout(addr_width, spad_addr_width):
    """A STORE descriptor: the fields of :func:`load_desc_layout` but ``signed``."""
    return data.StructLayout({"ext_addr": addr_width, "ext_stride": addr_width, "rows": ROWS_BITS,
                              "elems": ELEMS_BITS, "elem_bytes": ElemBytes,
                              "spad_addr": spad_addr_width, "spad_stride": spad_addr_width})


def resp_layout():
    """A LOAD/STORE response: ``status``."""
    return data.StructLayout({"status": LoadStoreStatus})


def load_events_layout():
    """The ``events`` of :class:`LoadUnit`."""
    return events_layout(["busy", "spad_writes", "beats_in", "stall_input", "stall_output"])


def store_events_layout():
    """The ``events`` of :class:`StoreUnit`."""
    return events_layout(["busy", "spad_reads", "beats_out", "stall_input", "stall_output"])


def spad_write_layout(addr_width, lanes):
    """A scratchpad write (docs/chip.md): ``addr`` (global word address), ``data`` (lanes of
    32 bits), ``mask`` (lane write enables)."""
    return data.StructLayout({"addr": addr_width, "data": data.ArrayLayout(32, lanes), "mask": lanes})


def spad_read_req_layout(addr_width):
    return data.StructLayout({"addr": addr_width})


def spad_read_resp_layout(lanes):
    return data.StructLayout({"data": data.ArrayLayout(32, lanes)})


class SpadReadSignature(wiring.Signature):
    """A scratchpad read port (docs/chip.md), seen from the reader: ``req`` (``addr``) out,
    ``resp`` (``data``) in, responses in request order. The same members as the scratchpad's
    ``read_port_signature`` (hdl/scratchpad.py)."""

    def __init__(self, addr_width, lanes):
        super().__init__({"req": Out(stream.Signature(spad_read_req_layout(addr_width))),
                          "resp": In(stream.Signature(spad_read_resp_layout(lanes)))})


class SpadWriteSignature(wiring.Signature):
    """A scratchpad write port (docs/chip.md), seen from the writer: ``req`` (``addr``,
    ``data``, ``mask``) out; ``done`` in, a one-cycle pulse per request, in request order,
    once the write is visible to reads. The same members as the scratchpad's
    ``write_port_signature`` (hdl/scratchpad.py)."""

    def __init__(self, addr_width, lanes):
        super().__init__({"req": Out(stream.Signature(spad_write_layout(addr_width, lanes))),
                          "done": In(1)})


def default_spad_addr_width(spad_words):
    """The scratchpad's address bits for ``spad_words`` words: one guard bit above the last
    word (hdl/scratchpad.py ``address_width``)."""
    return ceil_log2(spad_words) + 1


class _Params:
    """The parameters both units share, checked once."""

    def __init__(self, data_width, addr_width, lanes, spad_words, beats_width, spad_addr_width=None):
        if data_width not in (32, 64, 128, 256, 512) or isinstance(data_width, bool):
            raise ValueError(f"data_width must be one of 32, 64, 128, 256, 512, not {data_width!r}")
        _check_int("addr_width", addr_width, 12, 64)
        _check_int("lanes", lanes, 1, 64, pow2=True)
        _check_int("spad_words", spad_words, 2, 1 << 24)
        if beats_width is None:
            beats_width = addr_width - exact_log2(data_width // 8)
        # a row that passes the checks fits the address space: at most 2**(addr_width − log2
        # bytes) beats, which the engines' "0 means 2**beats_width" covers
        _check_int("beats_width", beats_width, min(ELEMS_BITS + 2, addr_width) - exact_log2(data_width // 8), 64)
        self.data_width, self.addr_width, self.lanes = data_width, addr_width, lanes
        self.spad_words, self.beats_width = spad_words, beats_width
        self.data_bytes = data_width // 8
        if spad_addr_width is None:
            spad_addr_width = default_spad_addr_width(spad_words)
        _check_int("spad_addr_width", spad_addr_width, ceil_log2(spad_words), 32)
        self.spad_addr_width = spad_addr_width

    @classmethod
    def from_config(cls, config, beats_width=None):
        from .config import ChipConfig
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        mem = config.memory
        return dict(data_width=mem.axi_data_bits, addr_width=mem.axi_addr_bits, lanes=mem.spad_lanes,
                    spad_words=mem.spad_words * mem.spad_banks, beats_width=beats_width,
                    spad_addr_width=exact_log2(mem.spad_words) + ceil_log2(mem.spad_banks) + 1)

    def elements_per_cycle(self, elem_bytes):
        """Elements a unit moves per cycle when neither side stalls: a bus word holds
        ``data_bytes / elem_bytes`` elements and a scratchpad word ``lanes``; one of each moves
        per cycle at most."""
        if elem_bytes not in ELEM_BYTES:
            raise ValueError(f"elem_bytes must be one of 1, 2, 4, not {elem_bytes!r}")
        return min(self.data_bytes // elem_bytes, self.lanes)


def _beats_of(p, elems, elem_bytes):
    """Bus words of a row (a Value): ceil(elems · bytes / data_bytes), ``elem_bytes`` the code."""
    nbytes = Mux(elem_bytes == ElemBytes.B4, elems << 2, Mux(elem_bytes == ElemBytes.B2, elems << 1, elems))
    return (nbytes + p.data_bytes - 1) >> exact_log2(p.data_bytes)


def _words_of(p, elems):
    """Scratchpad words of a row: ceil(elems / lanes)."""
    return (elems + p.lanes - 1) >> exact_log2(p.lanes)


class DescriptorChecker(wiring.Component):
    """Checks a LOAD or STORE descriptor.

    Parameters
    ----------
    layout : data.StructLayout
        :func:`load_desc_layout` or :func:`store_desc_layout`.
    params : _Params
        Bus width and scratchpad size.

    Members
    -------
    inp : In(stream.Signature(layout))
    out : Out(stream.Signature(StructLayout({"desc": layout, "status": LoadStoreStatus})))
        The descriptor and its status: the first failing check of BAD_ELEM_BYTES, ZERO_SIZE,
        UNALIGNED, EXT_RANGE (``ext_addr + (rows−1)·ext_stride + beats·data_bytes`` >
        2**addr_width, beats = ceil(elems·elem_bytes / data_bytes)), SPAD_RANGE
        (``spad_addr + (rows−1)·spad_stride + ceil(elems/lanes)`` > spad_words), else OK.

    Latency 3 cycles (take, multiply, compare); one descriptor per 4 cycles.
    """

    def __init__(self, layout, params):
        self._layout, self._p = layout, params
        super().__init__({
            "inp": In(stream.Signature(layout)),
            "out": Out(stream.Signature(data.StructLayout({"desc": layout, "status": LoadStoreStatus}))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        d = Signal(self._layout)
        prod_ext = Signal(p.addr_width + ROWS_BITS)
        prod_spad = Signal(p.spad_addr_width + ROWS_BITS)
        lb = exact_log2(p.data_bytes)
        ext_end = Signal(p.addr_width + ROWS_BITS + 2)
        spad_end = Signal(p.spad_addr_width + ROWS_BITS + 2)
        m.d.comb += [ext_end.eq(d.ext_addr + prod_ext + (_beats_of(p, d.elems, d.elem_bytes) << lb)),
                     spad_end.eq(d.spad_addr + prod_spad + _words_of(p, d.elems))]
        status = Signal(LoadStoreStatus)
        with m.If(d.elem_bytes == 3):
            m.d.comb += status.eq(LoadStoreStatus.BAD_ELEM_BYTES)
        with m.Elif((d.rows == 0) | (d.elems == 0)):
            m.d.comb += status.eq(LoadStoreStatus.ZERO_SIZE)
        with m.Elif((d.ext_addr[:lb] != 0) | (d.ext_stride[:lb] != 0)):
            m.d.comb += status.eq(LoadStoreStatus.UNALIGNED)
        with m.Elif(ext_end > (1 << p.addr_width)):
            m.d.comb += status.eq(LoadStoreStatus.EXT_RANGE)
        with m.Elif(spad_end > p.spad_words):
            m.d.comb += status.eq(LoadStoreStatus.SPAD_RANGE)
        with m.Else():
            m.d.comb += status.eq(LoadStoreStatus.OK)
        with m.FSM():
            with m.State("TAKE"):
                m.d.comb += self.inp.ready.eq(1)
                with m.If(self.inp.valid):
                    m.d.sync += d.eq(self.inp.payload)
                    m.next = "MULTIPLY"
            with m.State("MULTIPLY"):
                m.d.sync += [prod_ext.eq((d.rows - 1)[:ROWS_BITS] * d.ext_stride),
                             prod_spad.eq((d.rows - 1)[:ROWS_BITS] * d.spad_stride)]
                m.next = "COMPARE"
            with m.State("COMPARE"):
                m.d.sync += [self.out.payload.desc.eq(d), self.out.payload.status.eq(status),
                             self.out.valid.eq(1)]
                m.next = "GIVE"
            with m.State("GIVE"):
                with m.If(self.out.ready):
                    m.d.sync += self.out.valid.eq(0)
                    m.next = "TAKE"
        return m


def _unpack_lanes(raw, elem_bytes, signed, data_bytes):
    """{eb: the data_bytes/eb elements of a bus word as 32-bit values} for every eb of
    :data:`ELEM_BYTES` (1- and 2-byte elements sign-extended when ``signed``)."""
    out = {}
    for eb in ELEM_BYTES:
        lanes = []
        for k in range(data_bytes // eb):
            v = raw[8 * eb * k:8 * eb * (k + 1)]
            lanes.append(v if eb == 4 else Mux(signed, v.as_signed(), v))
        out[eb] = lanes
    return out


def _unpack_job_layout(spad_addr_width):
    return data.StructLayout({"status": LoadStoreStatus, "rows": ROWS_BITS, "elems": ELEMS_BITS,
                              "elem_bytes": ElemBytes, "signed": 1, "spad_addr": spad_addr_width,
                              "spad_stride": spad_addr_width})


class RowUnpacker(wiring.Component):
    """LOAD's back end: the bus words of a job's rows → scratchpad words.

    Members
    -------
    job : In(stream.Signature(_unpack_job_layout))
        One per descriptor, in order; a job whose ``status`` is not OK is answered with it at
        once (no data).
    data : In(stream.Signature(hdl.dma.read_data_layout(data_width)))
        The rows' bus words, ``last`` on each row's final word, ``error`` on it if a beat of
        the row failed.
    spad : Out(stream.Signature(spad_write_layout))
        Every lane written (``mask`` all ones); lanes past a row's end 0.
    resp : Out(stream.Signature(resp_layout()))
        Once the job's last word is accepted: OK, or AXI_ERROR if any row had an error.

    With E = data_bytes / elem_bytes elements per bus word and L lanes: if E ≥ L, each bus word
    gives up to E/L scratchpad words, one per cycle; if E < L, L/E bus words (one per cycle)
    make a scratchpad word. A bus word reaches ``spad`` 1 cycle after it is taken.
    """

    def __init__(self, params):
        self._p = p = params
        from .dma import read_data_layout
        super().__init__({
            "job": In(stream.Signature(_unpack_job_layout(p.spad_addr_width))),
            "data": In(stream.Signature(read_data_layout(p.data_width))),
            "spad": Out(stream.Signature(spad_write_layout(p.spad_addr_width, p.lanes))),
            "resp": Out(stream.Signature(resp_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        nb, L = p.data_bytes, p.lanes
        job = Signal(_unpack_job_layout(p.spad_addr_width))
        split = Signal()           # E ≥ L: a bus word gives whole scratchpad words
        last_idx = Signal(range(max(nb // L, L, 2)))
        idx = Signal.like(last_idx)  # split: chunk of the bus word; else: part of the word
        acc = Signal(data.ArrayLayout(32, L))
        word = Signal(data.ArrayLayout(32, L))
        left = Signal(ELEMS_BITS + 1)        # elements of the row from this word on
        rows_left = Signal(ROWS_BITS)
        row_addr = Signal(p.spad_addr_width)
        word_addr = Signal(p.spad_addr_width)
        err = Signal()
        beat = self.data.payload
        lanes = _unpack_lanes(beat.data, job.elem_bytes, job.signed, nb)
        with m.Switch(job.elem_bytes):
            for eb in ELEM_BYTES:
                e = nb // eb
                with m.Case(ELEM_CODE[eb]):
                    if e >= L:
                        with m.Switch(idx):
                            for q in range(e // L):
                                with m.Case(q):
                                    m.d.comb += [word[j].eq(lanes[eb][q * L + j]) for j in range(L)]
                    else:
                        m.d.comb += [word[j].eq(Mux(idx == j // e, lanes[eb][j % e], acc[j])) for j in range(L)]

        out = self.spad
        free = ~out.valid | out.ready
        last_word = Mux(split, left <= L, beat.last)        # the row's final scratchpad word
        emit = split | (idx == last_idx) | beat.last
        consume = ~split | (idx == last_idx) | last_word
        with m.If(out.ready):
            m.d.sync += out.valid.eq(0)
        status = Signal(LoadStoreStatus)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.job.ready.eq(1)
                with m.If(self.job.valid):
                    j = self.job.payload
                    m.d.sync += [job.eq(j), status.eq(j.status), err.eq(0), idx.eq(0), left.eq(j.elems),
                                 rows_left.eq(j.rows), row_addr.eq(j.spad_addr), word_addr.eq(j.spad_addr)]
                    with m.Switch(j.elem_bytes):
                        for eb in ELEM_BYTES:
                            e = nb // eb
                            with m.Case(ELEM_CODE[eb]):
                                m.d.sync += [split.eq(e >= L), last_idx.eq(e // L - 1 if e >= L else L // e - 1)]
                    with m.If(j.status == LoadStoreStatus.OK):
                        m.next = "RUN"
                    with m.Else():
                        m.next = "RESP"
            with m.State("RUN"):
                step = self.data.valid & free
                m.d.comb += self.data.ready.eq(step & consume)
                with m.If(step):
                    with m.If(emit):
                        m.d.sync += [out.valid.eq(1), out.payload.addr.eq(word_addr),
                                     out.payload.mask.eq(Const(-1, L)), word_addr.eq(word_addr + 1),
                                     left.eq(left - L)]
                        m.d.sync += [out.payload.data[j].eq(Mux(left > j, word[j], 0)) for j in range(L)]
                    with m.Else():
                        m.d.sync += acc.eq(word)
                    m.d.sync += idx.eq(Mux(Mux(split, consume, emit), 0, idx + 1))
                    with m.If(consume & beat.last):
                        m.d.sync += err.eq(err | beat.error)
                    with m.If(emit & last_word):
                        m.d.sync += [rows_left.eq(rows_left - 1), row_addr.eq(row_addr + job.spad_stride),
                                     word_addr.eq(row_addr + job.spad_stride), left.eq(job.elems), idx.eq(0)]
                        with m.If(rows_left == 1):
                            m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += [self.resp.valid.eq(~out.valid),
                             self.resp.payload.status.eq(
                                 Mux(status != LoadStoreStatus.OK, status,
                                     Mux(err, LoadStoreStatus.AXI_ERROR, LoadStoreStatus.OK)))]
                with m.If(self.resp.valid & self.resp.ready):
                    m.next = "IDLE"
        return m


def _pack_job_layout():
    return data.StructLayout({"rows": ROWS_BITS, "elems": ELEMS_BITS, "elem_bytes": ElemBytes})


class RowPacker(wiring.Component):
    """STORE's data path: scratchpad words → the bus words of a job's rows.

    Members
    -------
    job : In(stream.Signature(StructLayout({"rows", "elems", "elem_bytes"})))
        One per good descriptor, in order.
    words : In(stream.Signature(spad_read_resp_layout(lanes)))
        The rows' scratchpad words, ``ceil(elems / lanes)`` per row.
    out : Out(stream.Signature(hdl.dma.write_data_layout(data_width)))
        ``ceil(elems · elem_bytes / data_bytes)`` bus words per row, each lane's low
        ``elem_bytes`` bytes; ``strb`` covers the row's bytes only.

    Rates as :class:`RowUnpacker` the other way; a scratchpad word reaches ``out`` 1 cycle after
    it is taken.
    """

    def __init__(self, params):
        self._p = p = params
        from .dma import write_data_layout
        super().__init__({
            "job": In(stream.Signature(_pack_job_layout())),
            "words": In(stream.Signature(spad_read_resp_layout(p.lanes))),
            "out": Out(stream.Signature(write_data_layout(p.data_width))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self._p
        nb, L = p.data_bytes, p.lanes
        job = Signal(_pack_job_layout())
        split = Signal()            # L·eb > data_bytes: a scratchpad word gives several bus words
        last_idx = Signal(range(max(nb // L, 4 * L // nb, 2)))
        idx = Signal.like(last_idx)
        acc = Signal(8 * nb)
        beat = Signal(8 * nb)
        nbytes = Signal(range(nb + 1))   # bytes of the row in this bus word
        left = Signal(ELEMS_BITS + 1)    # elements of the row from this word (gather) / beat (split) on
        rows_left = Signal(ROWS_BITS)
        lanes = self.words.payload.data
        lb = {1: 0, 2: 1, 4: 2}
        with m.Switch(job.elem_bytes):
            for eb in ELEM_BYTES:
                e = nb // eb
                packed = Cat(*[lanes[j][:8 * eb] for j in range(L)])
                with m.Case(ELEM_CODE[eb]):
                    if L * eb <= nb:     # gather: word q of the bus word at bytes [q·L·eb, (q+1)·L·eb)
                        with m.Switch(idx):
                            for q in range(nb // (L * eb)):
                                with m.Case(q):
                                    lo, hi = 8 * q * L * eb, 8 * (q + 1) * L * eb
                                    m.d.comb += beat.eq(Cat(acc[:lo], packed, acc[hi:]))
                        in_beat = (idx << exact_log2(L)) + Mux(left < L, left, L)
                    else:                # split: bus word q of the scratchpad word
                        with m.Switch(idx):
                            for q in range(L * eb // nb):
                                with m.Case(q):
                                    m.d.comb += beat.eq(packed[8 * q * nb:8 * (q + 1) * nb])
                        in_beat = Mux(left < e, left, e)
                    m.d.comb += nbytes.eq(in_beat << lb[eb])
        e_now = Signal(range(nb + 1))
        with m.Switch(job.elem_bytes):
            for eb in ELEM_BYTES:
                with m.Case(ELEM_CODE[eb]):
                    m.d.comb += e_now.eq(nb // eb)
        row_end = Mux(split, left <= e_now, left <= L)
        emit = split | (idx == last_idx) | row_end
        consume = ~split | (idx == last_idx) | row_end
        out = self.out
        free = ~out.valid | out.ready
        with m.If(out.ready):
            m.d.sync += out.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.job.ready.eq(1)
                with m.If(self.job.valid):
                    j = self.job.payload
                    m.d.sync += [job.eq(j), idx.eq(0), left.eq(j.elems), rows_left.eq(j.rows)]
                    with m.Switch(j.elem_bytes):
                        for eb in ELEM_BYTES:
                            with m.Case(ELEM_CODE[eb]):
                                sp = L * eb > nb
                                m.d.sync += [split.eq(sp), last_idx.eq(L * eb // nb - 1 if sp else nb // (L * eb) - 1)]
                    m.next = "RUN"
            with m.State("RUN"):
                step = self.words.valid & free
                m.d.comb += self.words.ready.eq(step & consume)
                with m.If(step):
                    with m.If(emit):
                        m.d.sync += [out.valid.eq(1), out.payload.data.eq(beat),
                                     out.payload.strb.eq(Cat(*[nbytes > k for k in range(nb)]))]
                    with m.Else():
                        m.d.sync += acc.eq(beat)
                    m.d.sync += [idx.eq(Mux(Mux(split, consume, emit), 0, idx + 1)),
                                 left.eq(left - Mux(split, e_now, L))]
                    with m.If(row_end):
                        m.d.sync += [rows_left.eq(rows_left - 1), left.eq(job.elems), idx.eq(0)]
                        with m.If(rows_left == 1):
                            m.next = "IDLE"
        return m


class _UnitBase(wiring.Component):
    """Properties both units share."""

    #: Descriptors the issuer may run ahead of the data path.
    JOBS = 4

    data_width = property(lambda self: self._p.data_width)
    addr_width = property(lambda self: self._p.addr_width)
    lanes = property(lambda self: self._p.lanes)
    spad_words = property(lambda self: self._p.spad_words)
    spad_addr_width = property(lambda self: self._p.spad_addr_width)
    beats_width = property(lambda self: self._p.beats_width)

    @property
    def resp_layout(self):
        return resp_layout()

    def elements_per_cycle(self, elem_bytes):
        """Elements moved per cycle on long rows when neither side stalls:
        ``min(data_bytes / elem_bytes, lanes)``."""
        return self._p.elements_per_cycle(elem_bytes)

    @property
    def check_latency(self):
        """Cycles from a descriptor taken to its first request (the checks)."""
        return 4

    def _check(self, m, layout):
        chk = m.submodules.check = DescriptorChecker(layout, self._p)
        wiring.connect(m, wiring.flipped(self.cmd), chk.inp)
        return chk.out


class LoadUnit(_UnitBase):
    """The LOAD unit: rows from external memory to the scratchpad.

    Parameters
    ----------
    data_width : int
        AXI data bits: 32, 64, 128, 256 or 512.
    addr_width : int
        AXI address bits, 12..64.
    lanes : int
        Scratchpad lanes of 32 bits, a power of two 1..64.
    spad_words : int
        Scratchpad words over all banks (global word addresses 0 .. spad_words−1).
    beats_width : int or None
        ``beats`` bits of the read engine's requests (its default when ``None``).
    spad_addr_width : int or None
        Bits of a scratchpad address; default ``ceil(log2(spad_words)) + 1`` (the scratchpad's,
        with its guard bit).

    Members
    -------
    cmd : In(stream.Signature(load_desc_layout(addr_width, spad_addr_width)))
    resp : Out(stream.Signature(resp_layout()))
        One per descriptor, in order, after its last scratchpad word is accepted.
    dma : Out(hdl.dma.ReadClientSignature)
        One request per row (``addr = ext_addr + r·ext_stride``, ``beats`` =
        ceil(elems·elem_bytes / data_bytes)), issued ahead of the data by up to :attr:`JOBS`
        descriptors.
    spad : Out(SpadWriteSignature(spad_addr_width, lanes))
        ``ceil(elems / lanes)`` words per row at ``spad_addr + r·spad_stride + i``, every lane
        written (``mask`` all ones); the response waits for every write's ``done``.
    events : Out(events_layout)
        ``busy``, ``spad_writes`` (words accepted), ``beats_in`` (bus words taken),
        ``stall_input`` (waiting for read data), ``stall_output`` (a word waits for the
        scratchpad).

    Latency: descriptor → first request 4 cycles; bus word → scratchpad word 1 cycle; last
    ``done`` → ``resp`` 1 cycle. Throughput: :meth:`elements_per_cycle`.
    """

    def __init__(self, *, data_width, addr_width, lanes, spad_words, beats_width=None, spad_addr_width=None):
        self._p = p = _Params(data_width, addr_width, lanes, spad_words, beats_width, spad_addr_width)
        super().__init__({
            "cmd": In(stream.Signature(load_desc_layout(p.addr_width, p.spad_addr_width))),
            "resp": Out(stream.Signature(resp_layout())),
            "dma": Out(ReadClientSignature(addr_width=p.addr_width, data_width=p.data_width,
                                           beats_width=p.beats_width)),
            "spad": Out(SpadWriteSignature(p.spad_addr_width, p.lanes)),
            "events": Out(load_events_layout()),
        })

    @classmethod
    def from_config(cls, config, **overrides):
        return cls(**{**_Params.from_config(config), **overrides})

    @property
    def desc_layout(self):
        return load_desc_layout(self._p.addr_width, self._p.spad_addr_width)

    def elaborate(self, platform):
        m = Module()
        p = self._p
        checked = self._check(m, self.desc_layout)
        job_layout = _unpack_job_layout(p.spad_addr_width)
        jobs = m.submodules.jobs = SyncFIFO(width=job_layout.size, depth=self.JOBS)
        unpack = m.submodules.unpack = RowUnpacker(p)
        m.d.comb += [unpack.job.valid.eq(jobs.r_rdy), unpack.job.payload.eq(jobs.r_data),
                     jobs.r_en.eq(unpack.job.ready)]
        wiring.connect(m, wiring.flipped(self.dma.data), unpack.data)
        wiring.connect(m, unpack.spad, wiring.flipped(self.spad.req))
        # the response once every write of the job is visible: no write in flight
        in_flight = Signal(16)
        written = self.spad.req.valid & self.spad.req.ready
        m.d.sync += in_flight.eq(in_flight + written - self.spad.done)
        settled = in_flight == 0
        m.d.comb += [self.resp.valid.eq(unpack.resp.valid & settled), self.resp.payload.eq(unpack.resp.payload),
                     unpack.resp.ready.eq(self.resp.ready & settled)]

        d, status = checked.payload.desc, checked.payload.status
        job = Signal(job_layout)
        m.d.comb += [job.status.eq(status), job.rows.eq(d.rows), job.elems.eq(d.elems),
                     job.elem_bytes.eq(d.elem_bytes), job.signed.eq(d.signed),
                     job.spad_addr.eq(d.spad_addr), job.spad_stride.eq(d.spad_stride), jobs.w_data.eq(job)]
        req = self.dma.req
        stride = Signal(p.addr_width)
        rows_left = Signal(ROWS_BITS)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [checked.ready.eq(jobs.w_rdy), jobs.w_en.eq(checked.valid)]
                with m.If(checked.valid & jobs.w_rdy & (status == LoadStoreStatus.OK)):
                    m.d.sync += [req.payload.addr.eq(d.ext_addr), stride.eq(d.ext_stride), rows_left.eq(d.rows),
                                 req.payload.beats.eq(_beats_of(p, d.elems, d.elem_bytes))]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += req.valid.eq(1)
                with m.If(req.ready):
                    m.d.sync += [req.payload.addr.eq(req.payload.addr + stride), rows_left.eq(rows_left - 1)]
                    with m.If(rows_left == 1):
                        m.next = "IDLE"

        ev, data_in, out = self.events, self.dma.data, self.spad.req
        out_blocked = out.valid & ~out.ready
        m.d.comb += [
            ev.busy.eq(checked.valid | jobs.r_rdy | req.valid | ~unpack.job.ready | out.valid),
            ev.spad_writes.eq(out.valid & out.ready),
            ev.beats_in.eq(data_in.valid & data_in.ready),
            ev.stall_output.eq(out_blocked),
            ev.stall_input.eq(~out_blocked & ~unpack.job.ready & ~unpack.resp.valid & ~data_in.valid),
        ]
        return m


class StoreUnit(_UnitBase):
    """The STORE unit: rows from the scratchpad to external memory.

    Parameters
    ----------
    data_width, addr_width, lanes, spad_words, beats_width, spad_addr_width
        As :class:`LoadUnit` (``beats_width``: the write engine's).

    Members
    -------
    cmd : In(stream.Signature(store_desc_layout(addr_width, spad_addr_width)))
    resp : Out(stream.Signature(resp_layout()))
        One per descriptor, in order, after every row's ``done`` (OK, or AXI_ERROR if one
        failed).
    spad : Out(SpadReadSignature(spad_addr_width, lanes))
        ``ceil(elems / lanes)`` reads per row, issued ahead of the data.
    dma : Out(hdl.dma.WriteClientSignature)
        One request per row and its ``ceil(elems·elem_bytes / data_bytes)`` data beats, with
        ``strb`` 0 on the bytes past the row's end.
    events : Out(events_layout)
        ``busy``, ``spad_reads`` (requests accepted), ``beats_out`` (bus words given),
        ``stall_input`` (waiting for scratchpad data), ``stall_output`` (a bus word waits for
        the write engine).

    Latency: descriptor → first requests 4 cycles; scratchpad word → bus word 1 cycle; last
    ``done`` → ``resp`` 1 cycle. Throughput: :meth:`elements_per_cycle`.
    """

    def __init__(self, *, data_width, addr_width, lanes, spad_words, beats_width=None, spad_addr_width=None):
        self._p = p = _Params(data_width, addr_width, lanes, spad_words, beats_width, spad_addr_width)
        super().__init__({
            "cmd": In(stream.Signature(store_desc_layout(p.addr_width, p.spad_addr_width))),
            "resp": Out(stream.Signature(resp_layout())),
            "spad": Out(SpadReadSignature(p.spad_addr_width, p.lanes)),
            "dma": Out(WriteClientSignature(addr_width=p.addr_width, data_width=p.data_width,
                                            beats_width=p.beats_width)),
            "events": Out(store_events_layout()),
        })

    @classmethod
    def from_config(cls, config, **overrides):
        return cls(**{**_Params.from_config(config), **overrides})

    @property
    def desc_layout(self):
        return store_desc_layout(self._p.addr_width, self._p.spad_addr_width)

    def elaborate(self, platform):
        m = Module()
        p = self._p
        checked = self._check(m, self.desc_layout)
        pack_layout = _pack_job_layout()
        done_layout = data.StructLayout({"status": LoadStoreStatus, "rows": ROWS_BITS})
        pack_jobs = m.submodules.pack_jobs = SyncFIFO(width=pack_layout.size, depth=self.JOBS)
        done_jobs = m.submodules.done_jobs = SyncFIFO(width=done_layout.size, depth=self.JOBS)
        pack = m.submodules.pack = RowPacker(p)
        m.d.comb += [pack.job.valid.eq(pack_jobs.r_rdy), pack.job.payload.eq(pack_jobs.r_data),
                     pack_jobs.r_en.eq(pack.job.ready)]
        wiring.connect(m, wiring.flipped(self.spad.resp), pack.words)
        wiring.connect(m, pack.out, wiring.flipped(self.dma.data))
        self._issue(m, checked, pack_jobs, done_jobs)
        self._complete(m, done_jobs, done_layout)

        ev, out, words = self.events, self.dma.data, self.spad.resp
        out_blocked = out.valid & ~out.ready
        m.d.comb += [
            ev.busy.eq(checked.valid | pack_jobs.r_rdy | done_jobs.r_rdy | self.dma.req.valid
                       | self.spad.req.valid | ~pack.job.ready | out.valid),
            ev.spad_reads.eq(self.spad.req.valid & self.spad.req.ready),
            ev.beats_out.eq(out.valid & out.ready),
            ev.stall_output.eq(out_blocked),
            ev.stall_input.eq(~out_blocked & ~pack.job.ready & ~words.valid),
        ]
        return m

    def _issue(self, m, checked, pack_jobs, done_jobs):
        """One write request per row and the rows' scratchpad reads, both from the checked
        descriptor; the jobs of the data path and of the completion counter."""
        p = self._p
        d, status = checked.payload.desc, checked.payload.status
        ok = status == LoadStoreStatus.OK
        pack_job = data.View(_pack_job_layout(), pack_jobs.w_data)
        done_job = data.View(data.StructLayout({"status": LoadStoreStatus, "rows": ROWS_BITS}), done_jobs.w_data)
        m.d.comb += [pack_job.rows.eq(d.rows), pack_job.elems.eq(d.elems), pack_job.elem_bytes.eq(d.elem_bytes),
                     done_job.status.eq(status), done_job.rows.eq(d.rows)]
        wreq, rreq = self.dma.req, self.spad.req
        w_stride = Signal(p.addr_width)
        w_rows, r_rows = Signal(ROWS_BITS), Signal(ROWS_BITS)
        r_row, r_stride = Signal(p.spad_addr_width), Signal(p.spad_addr_width)
        r_word, r_words_m1 = Signal(ELEMS_BITS), Signal(ELEMS_BITS)
        m.d.comb += [wreq.valid.eq(w_rows != 0), rreq.valid.eq(r_rows != 0),
                     rreq.payload.addr.eq(r_row + r_word)]
        with m.If(wreq.valid & wreq.ready):
            m.d.sync += [wreq.payload.addr.eq(wreq.payload.addr + w_stride), w_rows.eq(w_rows - 1)]
        with m.If(rreq.valid & rreq.ready):
            m.d.sync += r_word.eq(r_word + 1)
            with m.If(r_word == r_words_m1):
                m.d.sync += [r_word.eq(0), r_row.eq(r_row + r_stride), r_rows.eq(r_rows - 1)]
        idle = (w_rows == 0) & (r_rows == 0)
        room = pack_jobs.w_rdy & done_jobs.w_rdy
        take = idle & room & checked.valid
        m.d.comb += [checked.ready.eq(idle & room), done_jobs.w_en.eq(take), pack_jobs.w_en.eq(take & ok)]
        with m.If(take & ok):
            m.d.sync += [wreq.payload.addr.eq(d.ext_addr), wreq.payload.beats.eq(_beats_of(p, d.elems, d.elem_bytes)),
                         w_stride.eq(d.ext_stride), w_rows.eq(d.rows), r_rows.eq(d.rows),
                         r_row.eq(d.spad_addr), r_stride.eq(d.spad_stride), r_word.eq(0),
                         r_words_m1.eq(_words_of(p, d.elems) - 1)]

    def _complete(self, m, done_jobs, done_layout):
        """Counts each job's ``done`` beats; answers with its status."""
        job = Signal(done_layout)
        count = Signal(ROWS_BITS)
        err = Signal()
        done = self.dma.done
        resp = self.resp
        with m.FSM():
            with m.State("IDLE"):
                head = data.View(done_layout, done_jobs.r_data)
                m.d.comb += done_jobs.r_en.eq(1)
                with m.If(done_jobs.r_rdy):
                    m.d.sync += [job.eq(head), count.eq(head.rows), err.eq(0)]
                    with m.If(head.status == LoadStoreStatus.OK):
                        m.next = "COUNT"
                    with m.Else():
                        m.next = "RESP"
            with m.State("COUNT"):
                m.d.comb += done.ready.eq(1)
                with m.If(done.valid):
                    m.d.sync += [count.eq(count - 1), err.eq(err | done.payload.error)]
                    with m.If(count == 1):
                        m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += [resp.valid.eq(1),
                             resp.payload.status.eq(Mux(job.status != LoadStoreStatus.OK, job.status,
                                                        Mux(err, LoadStoreStatus.AXI_ERROR, LoadStoreStatus.OK)))]
                with m.If(resp.ready):
                    m.next = "IDLE"


class InstrAdapter(wiring.Component):
    """Puts a :class:`LoadUnit` or :class:`StoreUnit` behind the command processor
    (``hdl.cmdproc.UnitPortSignature``, docs/isa.md): LOAD/STORE instructions become the
    unit's descriptors, its responses the processor's ``done`` beats.

    Parameters
    ----------
    unit : LoadUnit or StoreUnit
        The unit it serves (only its parameters are read; the chip top connects
        ``adapter.cmd`` → ``unit.cmd`` and ``unit.resp`` → ``adapter.resp``).
    depth : int
        Instructions taken and not yet answered, at most (1..64).

    Members
    -------
    proc : In(hdl.cmdproc.UnitPortSignature())
        An instruction is taken when it is valid, its waits are satisfied (``deps_ok``) and
        the unit takes its descriptor; every instruction taken has started and is answered
        (also after ``abort``), in order, with its ``index``: status OK, or AXI_READ (LOAD) /
        AXI_WRITE (STORE) with detail 0 on an AXI error, or — for descriptors the dispatcher
        already refuses, so never in the chip — BAD_FIELD / EXT_RANGE / SPAD_RANGE with the
        :class:`~spec.codes.LoadStoreStatus` as detail. ``idle``: nothing taken is unanswered.
        ``progress``: the ``moved`` input.
    cmd : Out(stream.Signature(the unit's descriptor layout))
        The instruction's fields: ``ext_addr`` and ``ext_stride`` cut to ``addr_width`` bits,
        ``spad_addr`` and ``spad_stride`` to ``spad_addr_width`` (the dispatcher's range checks
        keep the addresses inside), the others as they are.
    resp : In(stream.Signature(resp_layout()))
    moved : In(1)
        The unit moved data this cycle (e.g. ``beats_in | spad_writes``).
    events : Out(events_layout(["busy", "wait_deps", "instrs"]))
        ``busy``: an instruction taken is unanswered; ``wait_deps``: the queue's head waits for
        other units; ``instrs``: instructions taken (the chip's ``load_exec_*`` /
        ``store_exec_*`` counters).

    Latency: an instruction → its descriptor 0 cycles (combinational); a response → ``done``
    0 cycles.
    """

    def __init__(self, unit, *, depth=8):
        from .cmdproc import UnitPortSignature
        if not isinstance(unit, (LoadUnit, StoreUnit)):
            raise TypeError(f"unit must be a LoadUnit or a StoreUnit, not {type(unit).__name__}")
        _check_int("depth", depth, 1, 64)
        self._load = isinstance(unit, LoadUnit)
        self._desc = unit.desc_layout
        self._depth = depth
        super().__init__({
            "proc": In(UnitPortSignature()),
            "cmd": Out(stream.Signature(unit.desc_layout)),
            "resp": In(stream.Signature(resp_layout())),
            "moved": In(1),
            "events": Out(events_layout(["busy", "wait_deps", "instrs"])),
        })

    def elaborate(self, platform):
        from spec import isa
        from spec.codes import ChipError

        from .cmdproc import INDEX_BITS
        m = Module()
        proc = self.proc
        f = data.View(isa.layout(isa.Opcode.LOAD if self._load else isa.Opcode.STORE), proc.instr.payload.bits)
        names = [name for name, _ in self._desc]
        m.d.comb += [getattr(self.cmd.payload, name).eq(getattr(f, name)) for name in names]
        indices = m.submodules.indices = SyncFIFO(width=INDEX_BITS, depth=self._depth)
        take = proc.instr.valid & proc.deps_ok & indices.w_rdy
        m.d.comb += [self.cmd.valid.eq(take), proc.instr.ready.eq(take & self.cmd.ready),
                     indices.w_en.eq(take & self.cmd.ready), indices.w_data.eq(proc.instr.payload.index)]

        st = self.resp.payload.status
        code = Signal(ChipError)
        with m.Switch(st):
            with m.Case(LoadStoreStatus.OK):
                m.d.comb += code.eq(ChipError.OK)
            with m.Case(LoadStoreStatus.AXI_ERROR):
                m.d.comb += code.eq(ChipError.AXI_READ if self._load else ChipError.AXI_WRITE)
            with m.Case(LoadStoreStatus.EXT_RANGE):
                m.d.comb += code.eq(ChipError.EXT_RANGE)
            with m.Case(LoadStoreStatus.SPAD_RANGE):
                m.d.comb += code.eq(ChipError.SPAD_RANGE)
            with m.Default():
                m.d.comb += code.eq(ChipError.BAD_FIELD)
        done = proc.done
        m.d.comb += [done.valid.eq(self.resp.valid & indices.r_rdy), done.payload.status.eq(code),
                     done.payload.detail.eq(Mux(code.matches(ChipError.OK, ChipError.AXI_READ, ChipError.AXI_WRITE),
                                                0, st)),
                     done.payload.index.eq(indices.r_data),
                     self.resp.ready.eq(done.ready & indices.r_rdy), indices.r_en.eq(done.valid & done.ready),
                     proc.idle.eq(~indices.r_rdy), proc.progress.eq(self.moved)]
        m.d.comb += [self.events.busy.eq(indices.r_rdy), self.events.instrs.eq(take & self.cmd.ready),
                     self.events.wait_deps.eq(proc.instr.valid & ~proc.deps_ok)]
        return m
