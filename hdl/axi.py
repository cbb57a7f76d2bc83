"""AXI4 and AXI4-Lite signatures, with the AXI signal names as members.

Both signatures are seen from the master: a master's port is ``Out(sig)``, a slave's
``In(sig)``. Members are flat and named exactly like the AXI signals (``arvalid``, ``rdata``,
…), so that a port called ``m_axi`` becomes the Verilog ports ``m_axi__arvalid``,
``m_axi__rdata``, … and a cocotbext-axi model binds to them with
``AxiBus.from_prefix(dut, "m_axi_")`` (cocotb_bus joins the prefix and the signal name with one
``_``).

:class:`AxiSignature` can hold the read half (AR, R), the write half (AW, W, B) or both: the
read and write engines (hdl/dma.py) each have one half, :func:`connect_halves` joins them into
one AXI4 master port of the chip.

Encodings (AMBA AXI4, IHI 0022): ``*burst`` ``INCR`` = 1; ``*size`` log2 of the bytes per beat;
``*len`` beats − 1; ``*resp`` OKAY 0, EXOKAY 1, SLVERR 2, DECERR 3 (bit 1 set: an error).
"""

from amaranth.hdl import Shape
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from .params import check_int as _check_width

__all__ = ["Burst", "Resp", "AxiSignature", "AxiLiteSignature", "connect_halves",
           "CACHE_NORMAL_NON_CACHEABLE_BUFFERABLE", "MAX_BURST_BEATS", "BOUNDARY_BYTES"]

#: Longest INCR burst of AXI4 (``*len`` = 255).
MAX_BURST_BEATS = 256
#: An INCR burst may not cross an address boundary of this many bytes.
BOUNDARY_BYTES = 4096
#: ``arcache``/``awcache`` of the engines: normal memory, non-cacheable, bufferable.
CACHE_NORMAL_NON_CACHEABLE_BUFFERABLE = 0b0011


class Burst(enum.IntEnum, shape=2):
    """``arburst``/``awburst``."""
    FIXED = 0
    INCR = 1
    WRAP = 2


class Resp(enum.IntEnum, shape=2):
    """``rresp``/``bresp``; a response with bit 1 set is an error."""
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


def _check_data_width(value, choices):
    if value not in choices or isinstance(value, bool):
        raise ValueError(f"data_width must be one of {', '.join(map(str, choices))}, not {value!r}")


class AxiSignature(wiring.Signature):
    """An AXI4 master port (or one of its halves).

    Parameters
    ----------
    addr_width : int
        ``araddr``/``awaddr`` bits, 12..64.
    data_width : int
        ``rdata``/``wdata`` bits: 8, 16, 32, 64, 128, 256, 512 or 1024.
    id_width : int
        ``arid``/``rid``/``awid``/``bid`` bits, 1..16.
    read, write : bool
        Include the read channels (AR, R) / the write channels (AW, W, B).

    Members
    -------
    Read half: ``arid``, ``araddr``, ``arlen`` (8), ``arsize`` (3), ``arburst`` (2),
    ``arcache`` (4), ``arprot`` (3), ``arvalid`` out; ``arready`` in; ``rid``, ``rdata``,
    ``rresp`` (2), ``rlast``, ``rvalid`` in; ``rready`` out.

    Write half: ``awid``, ``awaddr``, ``awlen``, ``awsize``, ``awburst``, ``awcache``,
    ``awprot``, ``awvalid`` out; ``awready`` in; ``wdata``, ``wstrb`` (data_width / 8),
    ``wlast``, ``wvalid`` out; ``wready`` in; ``bid``, ``bresp`` (2), ``bvalid`` in;
    ``bready`` out.
    """

    DATA_WIDTHS = (8, 16, 32, 64, 128, 256, 512, 1024)

    def __init__(self, *, addr_width, data_width, id_width, read=True, write=True):
        _check_width("addr_width", addr_width, 12, 64)
        _check_data_width(data_width, self.DATA_WIDTHS)
        _check_width("id_width", id_width, 1, 16)
        if not (read or write):
            raise ValueError("an AxiSignature needs the read half, the write half or both")
        self._addr_width, self._data_width, self._id_width = addr_width, data_width, id_width
        self._read, self._write = bool(read), bool(write)
        members = {}
        if write:
            members.update({
                "awid": Out(id_width), "awaddr": Out(addr_width), "awlen": Out(8), "awsize": Out(3),
                "awburst": Out(Burst), "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1),
                "awready": In(1),
                "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
                "wvalid": Out(1), "wready": In(1),
                "bid": In(id_width), "bresp": In(Resp), "bvalid": In(1), "bready": Out(1),
            })
        if read:
            members.update({
                "arid": Out(id_width), "araddr": Out(addr_width), "arlen": Out(8), "arsize": Out(3),
                "arburst": Out(Burst), "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1),
                "arready": In(1),
                "rid": In(id_width), "rdata": In(data_width), "rresp": In(Resp), "rlast": In(1),
                "rvalid": In(1), "rready": Out(1),
            })
        super().__init__(members)

    addr_width = property(lambda self: self._addr_width)
    data_width = property(lambda self: self._data_width)
    id_width = property(lambda self: self._id_width)
    has_read = property(lambda self: self._read)
    has_write = property(lambda self: self._write)

    @property
    def data_bytes(self):
        """Bytes per beat."""
        return self._data_width // 8

    @property
    def size(self):
        """``arsize``/``awsize`` of full-width beats: log2(data_bytes)."""
        return Shape.cast(range(self.data_bytes)).width if self.data_bytes > 1 else 0

    def __eq__(self, other):
        return (isinstance(other, AxiSignature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width and other.id_width == self.id_width
                and other.has_read == self.has_read and other.has_write == self.has_write)

    def __repr__(self):
        halves = "+".join(h for h, on in (("read", self._read), ("write", self._write)) if on)
        return (f"AxiSignature(addr_width={self._addr_width}, data_width={self._data_width}, "
                f"id_width={self._id_width}, {halves})")


class AxiLiteSignature(wiring.Signature):
    """An AXI4-Lite master port.

    Parameters
    ----------
    addr_width : int
        ``araddr``/``awaddr`` bits, 3..64.
    data_width : int
        32 or 64.

    Members
    -------
    ``awaddr``, ``awprot`` (3), ``awvalid`` out, ``awready`` in; ``wdata``, ``wstrb``,
    ``wvalid`` out, ``wready`` in; ``bresp`` (2), ``bvalid`` in, ``bready`` out; ``araddr``,
    ``arprot``, ``arvalid`` out, ``arready`` in; ``rdata``, ``rresp``, ``rvalid`` in,
    ``rready`` out.
    """

    def __init__(self, *, addr_width, data_width=32):
        _check_width("addr_width", addr_width, 3, 64)
        _check_data_width(data_width, (32, 64))
        self._addr_width, self._data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(Resp), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(Resp), "rvalid": In(1), "rready": Out(1),
        })

    addr_width = property(lambda self: self._addr_width)
    data_width = property(lambda self: self._data_width)

    def __eq__(self, other):
        return (isinstance(other, AxiLiteSignature) and other.addr_width == self.addr_width
                and other.data_width == self.data_width)

    def __repr__(self):
        return f"AxiLiteSignature(addr_width={self._addr_width}, data_width={self._data_width})"


def connect_halves(m, port, *, read=None, write=None):
    """Drive the full AXI4 master interface ``port`` from a read-half master ``read`` and a
    write-half master ``write`` (either may be ``None``: that half of ``port`` stays idle —
    no ``*valid``, ``*ready`` high so that nothing hangs). The widths of the halves must match
    ``port``'s."""
    sig = port.signature
    if not (isinstance(sig, AxiSignature) and sig.has_read and sig.has_write):
        raise TypeError(f"port must have a full AxiSignature, not {sig!r}")
    for half, name in ((read, "read"), (write, "write")):
        if half is None:
            continue
        h = half.signature
        if not isinstance(h, AxiSignature) or (h.addr_width, h.data_width, h.id_width) != (
                sig.addr_width, sig.data_width, sig.id_width):
            raise TypeError(f"{name} half {h!r} does not match {sig!r}")
    for member_name, member in sig.members.items():
        channel = member_name[:2] if member_name.startswith(("ar", "aw")) else member_name[0]
        half = read if channel in ("ar", "r") else write
        ours = getattr(port, member_name)
        if half is None:
            if member.flow == Out:  # an idle master: no valid, every response accepted
                m.d.comb += ours.eq(1 if member_name.endswith("ready") else 0)
            continue
        theirs = getattr(half, member_name)
        if member.flow == Out:
            m.d.comb += ours.eq(theirs)
        else:
            m.d.comb += theirs.eq(ours)
