"""Control and status registers: an AXI4-Lite slave (32-bit data) over a register bank
described in Python.

A register map is a list of :class:`Register` (name, byte offset, width, access, description),
checked by :class:`RegisterMap`; the chip's map is data in :mod:`spec.csr`
(``RegisterMap.from_spec()``). :class:`CsrBank` builds the hardware: for each register a port
``regs.<name in lower case>`` whose direction follows its access:

===========  =====================================================================
``ro``       ``In(width)``: the value the hardware shows
``rw``       ``Out(width)``: the register (reset value ``reset``)
``w1p``      ``Out(width)``: 1 for one cycle on each bit written 1
``w1c``      ``Out(width)``: the status bits; ``<name>_set``: ``In(width)``, 1 sets a bit
===========  =====================================================================

``python -m hdl.csr --doc`` writes docs/csr.md from :mod:`spec.csr`.
"""

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from spec import csr as spec_csr

from .axi import AxiLiteSignature, Resp

__all__ = ["Register", "RegisterMap", "CsrBank", "ACCESS", "markdown"]

#: The access kinds (spec.csr.ACCESS describes them).
ACCESS = tuple(spec_csr.ACCESS)


@dataclass(frozen=True)
class Register:
    """One register.

    Parameters
    ----------
    name : str
        An identifier (the port is ``regs.<name.lower()>``).
    offset : int
        Byte offset, a multiple of 4.
    width : int
        1..64 (``ro`` and ``rw``), 1..32 (``w1p``, ``w1c``). Wider than 32: two words, low half
        at ``offset``, high half at ``offset + 4``.
    access : str
        ``"ro"``, ``"rw"``, ``"w1p"`` or ``"w1c"`` (see :mod:`spec.csr`).
    doc : str
    reset : int
        Value after reset (``rw`` only).
    """

    name: str
    offset: int
    width: int
    access: str
    doc: str = ""
    reset: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.name):
            raise ValueError(f"register name must be an identifier, not {self.name!r}")
        where = f"register {self.name}"
        if self.access not in ACCESS:
            raise ValueError(f"{where}: access must be one of {', '.join(ACCESS)}, not {self.access!r}")
        if not isinstance(self.offset, int) or self.offset < 0 or self.offset % 4:
            raise ValueError(f"{where}: offset must be a non-negative multiple of 4, not {self.offset!r}")
        top = 64 if self.access in ("ro", "rw") else 32
        if not isinstance(self.width, int) or isinstance(self.width, bool) or not 1 <= self.width <= top:
            raise ValueError(f"{where}: width must be in 1..{top} for {self.access}, not {self.width!r}")
        if not isinstance(self.reset, int) or not 0 <= self.reset < (1 << self.width):
            raise ValueError(f"{where}: reset must fit {self.width} bits, not {self.reset!r}")
        if self.reset and self.access != "rw":
            raise ValueError(f"{where}: only rw registers have a reset value")

    @property
    def words(self):
        """32-bit words taken: 1 or 2."""
        return 2 if self.width > 32 else 1

    @property
    def port(self):
        return self.name.lower()


class RegisterMap:
    """An ordered, checked list of :class:`Register` in an ``addr_width``-bit window.

    Raises ``ValueError`` on two registers with one name or overlapping words, or a word past
    the window.
    """

    def __init__(self, registers, *, addr_width):
        if not isinstance(addr_width, int) or not 3 <= addr_width <= 32:
            raise ValueError(f"addr_width must be in 3..32, not {addr_width!r}")
        regs = [r if isinstance(r, Register) else Register(*r) for r in registers]
        if not regs:
            raise ValueError("a register map needs at least one register")
        names, words = set(), {}
        for r in regs:
            for key in (r.name.lower(), r.name.lower() + "_set"):
                if key in names:
                    raise ValueError(f"register {r.name}: its port name {key!r} is taken")
            names.add(r.port)
            if r.access == "w1c":
                names.add(r.port + "_set")
            for k in range(r.words):
                offset = r.offset + 4 * k
                if offset in words:
                    raise ValueError(f"register {r.name} overlaps {words[offset]} at {offset:#x}")
                if offset >= 1 << addr_width:
                    raise ValueError(f"register {r.name} at {offset:#x} is outside the {addr_width}-bit window")
                words[offset] = r.name
        self._regs = tuple(regs)
        self._addr_width = addr_width

    @classmethod
    def from_spec(cls, registers=None, addr_width=None):
        """The map of :mod:`spec.csr` (or of ``registers``, entries
        ``(name, offset, width, access, doc)``)."""
        return cls(spec_csr.REGISTERS if registers is None else registers,
                   addr_width=spec_csr.ADDR_WIDTH if addr_width is None else addr_width)

    registers = property(lambda self: self._regs)
    addr_width = property(lambda self: self._addr_width)

    def __iter__(self):
        return iter(self._regs)

    def __getitem__(self, name):
        for r in self._regs:
            if r.name == name:
                return r
        raise KeyError(name)

    def signature_members(self):
        """The ``regs`` members, seen from the bank."""
        members = {}
        for r in self._regs:
            if r.access == "ro":
                members[r.port] = In(r.width)
            elif r.access == "rw":
                members[r.port] = Out(r.width, init=r.reset)
            elif r.access == "w1p":
                members[r.port] = Out(r.width)
            else:
                members[r.port] = Out(r.width)
                members[r.port + "_set"] = In(r.width)
        return members


class CsrBank(wiring.Component):
    """An AXI4-Lite slave over a :class:`RegisterMap`.

    Parameters
    ----------
    regmap : RegisterMap

    Members
    -------
    bus : In(AxiLiteSignature(addr_width=regmap.addr_width, data_width=32))
        ``araddr``/``awaddr`` bits 1:0 are ignored. Answers OKAY, or SLVERR for an address no
        register takes (a read returns 0) and for a write to a ``ro`` register.
    regs : Out(Signature(regmap.signature_members()))
        One port per register (see the module docstring).

    win_index : Out(range(n)), win_value : In(width)
        With ``window``: the window register a read asks for, given in the cycle AR is accepted,
        and its value, expected in the next cycle (a :class:`hdl.counters.CounterBank`'s
        ``rd_index`` and ``rd_value``).

    ``window`` (optional) is ``(offset, n)``: the ``n`` registers at ``offset + 8·i`` (``offset`` a
    multiple of 8), all ``ro``, two words and of one width, are read through ``win_index`` /
    ``win_value`` instead of one ``regs`` port each, so that a memory can hold them. A window
    register keeps the ``ro`` rule: its high half reads the snapshot its last low-half read
    took; the snapshots are a memory too (0 before the first low-half read after power-up; a
    reset leaves them).

    Protocol: the read and the write channels are independent. R is valid 2 cycles after AR
    is accepted (:attr:`read_latency`), and the next AR is accepted once R is taken. AW and W
    are each held in a register (either may come first); in the first cycle both are held and B
    is free the write is done, and B, the new ``rw`` value and a ``w1p`` pulse appear in the
    next cycle. No ``*ready`` depends combinationally on an input. A read in the cycle a write
    is done returns the old value.
    """

    def __init__(self, regmap, *, window=None):
        if not isinstance(regmap, RegisterMap):
            raise TypeError(f"regmap must be a RegisterMap, not {type(regmap).__name__}")
        self._map = regmap
        self._window = self._check_window(regmap, window)
        members = {
            "bus": In(AxiLiteSignature(addr_width=regmap.addr_width, data_width=32)),
            "regs": Out(wiring.Signature({k: v for k, v in regmap.signature_members().items()
                                          if k not in {r.port for r in self._window_regs}})),
        }
        if self._window:
            members["win_index"] = Out(range(self._window[1]))
            members["win_value"] = In(self._window_regs[0].width)
        super().__init__(members)

    @staticmethod
    def _check_window(regmap, window):
        if window is None:
            return None
        offset, n = window
        if not isinstance(offset, int) or offset < 0 or offset % 8:
            raise ValueError(f"window offset must be a non-negative multiple of 8, not {offset!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"window size must be a positive int, not {n!r}")
        at = {r.offset: r for r in regmap}
        widths = set()
        for i in range(n):
            r = at.get(offset + 8 * i)
            if r is None or r.access != "ro" or r.words != 2:
                raise ValueError(f"window register {i} at {offset + 8 * i:#x} must be a two-word ro register")
            widths.add(r.width)
        if len(widths) != 1:
            raise ValueError(f"window registers must share one width, not {sorted(widths)}")
        return (offset, n)

    @property
    def _window_regs(self):
        if not self._window:
            return []
        offset, n = self._window
        at = {r.offset: r for r in self._map}
        return [at[offset + 8 * i] for i in range(n)]

    @classmethod
    def from_config(cls, config=None):
        """The chip's register bank (:mod:`spec.csr`); the map does not depend on ``config``."""
        return cls(RegisterMap.from_spec())

    regmap = property(lambda self: self._map)

    @property
    def read_latency(self):
        """Cycles from AR accepted to R valid."""
        return 2

    def _word_cases(self):
        """(offset, register, half) of every word outside the window."""
        skip = {r.name for r in self._window_regs}
        return [(r.offset + 4 * k, r, k) for r in self._map if r.name not in skip for k in range(r.words)]

    def elaborate(self, platform):
        m = Module()
        snaps = {r.name: Signal(r.width - 32, name=f"{r.port}_snap")
                 for r in self._map if r.access == "ro" and r.words == 2}
        status = {r.name: getattr(self.regs, r.port) for r in self._map if r.access == "w1c"}
        cleared = {name: Signal(len(sig), name=f"{name.lower()}_clear") for name, sig in status.items()}
        self._read(m, snaps)
        self._write(m, cleared)
        for name, sig in status.items():
            set_ = getattr(self.regs, name.lower() + "_set")
            m.d.sync += sig.eq((sig & ~cleared[name]) | set_)
        return m

    def _read(self, m, snaps):
        bus = self.bus
        pending = Signal()
        addr = Signal(self._map.addr_width - 2)
        m.d.comb += bus.arready.eq(~pending & ~bus.rvalid)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [pending.eq(1), addr.eq(bus.araddr[2:])]
        win = self._read_window(m, pending, addr) if self._window else None
        with m.If(bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(pending):
            m.d.sync += [pending.eq(0), bus.rvalid.eq(1), bus.rdata.eq(0), bus.rresp.eq(Resp.SLVERR)]
            with m.Switch(addr):
                for offset, r, half in self._word_cases():
                    with m.Case(offset >> 2):
                        m.d.sync += bus.rresp.eq(Resp.OKAY)
                        if r.access == "w1p":
                            continue
                        value = getattr(self.regs, r.port)
                        if r.name in snaps and half == 0:
                            m.d.sync += [bus.rdata.eq(value[:32]), snaps[r.name].eq(value[32:])]
                        elif r.name in snaps:
                            m.d.sync += bus.rdata.eq(snaps[r.name])
                        else:
                            m.d.sync += bus.rdata.eq(value[32 * half:32 * half + 32])
            if win is not None:
                in_win, hi, snap = win
                with m.If(in_win):
                    m.d.sync += [bus.rresp.eq(Resp.OKAY), bus.rdata.eq(Mux(hi, snap, self.win_value[:32]))]

    def _read_window(self, m, pending, addr):
        """The window's index (from ``araddr``), its snapshot memory; (in window, high half,
        snapshot) of the read in its ``pending`` cycle."""
        offset, n = self._window
        first = offset >> 2
        word = self.bus.araddr[2:]
        m.d.comb += self.win_index.eq((word - first)[1:])
        hi_bits = len(self.win_value) - 32
        m.submodules.win_snaps = snaps = Memory(shape=unsigned(hi_bits), depth=max(n, 2), init=[])
        snap_rd = snaps.read_port(domain="sync")
        snap_wr = snaps.write_port()
        in_win = Signal()
        m.d.comb += [in_win.eq((addr >= first) & (addr < first + 2 * n)),
                     snap_rd.addr.eq(self.win_index), snap_rd.en.eq(self.bus.arvalid & self.bus.arready),
                     snap_wr.addr.eq((addr - first)[1:]), snap_wr.en.eq(pending & in_win & ~addr[0]),
                     snap_wr.data.eq(self.win_value[32:])]
        return pending & in_win, addr[0], snap_rd.data

    def _write(self, m, cleared):
        bus = self.bus
        aw_full, w_full = Signal(), Signal()
        addr = Signal(self._map.addr_width - 2)
        wdata, wstrb = Signal(32), Signal(4)
        m.d.comb += [bus.awready.eq(~aw_full), bus.wready.eq(~w_full)]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), addr.eq(bus.awaddr[2:])]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), wdata.eq(bus.wdata), wstrb.eq(bus.wstrb)]
        with m.If(bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        mask = Signal(32)
        m.d.comb += mask.eq(Cat(*[b.replicate(8) for b in wstrb]))
        ones = wdata & mask
        for r in self._map:
            if r.access == "w1p":
                m.d.sync += getattr(self.regs, r.port).eq(0)
        do = Signal()
        m.d.comb += do.eq(aw_full & w_full & ~bus.bvalid)
        with m.If(do):
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1), bus.bresp.eq(Resp.SLVERR)]
            with m.Switch(addr):
                for offset, r, half in self._word_cases():
                    with m.Case(offset >> 2):
                        if r.access == "ro":
                            continue
                        m.d.sync += bus.bresp.eq(Resp.OKAY)
                        reg = getattr(self.regs, r.port)
                        if r.access == "rw":
                            lo = 32 * half
                            part = reg[lo:min(lo + 32, r.width)]
                            n = len(part)
                            m.d.sync += part.eq((part & ~mask[:n]) | (wdata[:n] & mask[:n]))
                        elif r.access == "w1p":
                            m.d.sync += reg.eq(ones[:r.width])
                        else:
                            m.d.comb += cleared[r.name].eq(ones[:r.width])


def markdown(regmap=None):
    """docs/csr.md: the register table of ``regmap`` (default the map of :mod:`spec.csr`)."""
    regmap = regmap or RegisterMap.from_spec()
    lines = [
        "# Control and status registers",
        "",
        "<!-- generated from spec/csr.py by `python -m hdl.csr --doc`; do not edit -->",
        "",
        f"An AXI4-Lite slave with 32-bit data and a {regmap.addr_width}-bit address "
        "(hdl/csr.py, `CsrBank`).",
        "",
        "| offset | name | bits | access | description |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(regmap, key=lambda r: r.offset):
        for half in range(r.words):
            name = r.name if r.words == 1 else f"{r.name}_{'LO' if half == 0 else 'HI'}"
            bits = min(32, r.width - 32 * half)
            doc = r.doc if half == 0 else f"bits {r.width - 1}:32 of {r.name}" + (
                " (the snapshot taken when the low half was read)" if r.access == "ro" else "")
            lines.append(f"| 0x{r.offset + 4 * half:03x} | {name} | {bits} | {r.access} | {doc} |")
    lines += ["", "Access kinds:", ""]
    lines += [f"- `{kind}`: {text}" for kind, text in spec_csr.ACCESS.items()]
    lines += ["", f"Responses: {spec_csr.RESPONSES}", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="the register map's documentation")
    parser.add_argument("--doc", action="store_true", help="write docs/csr.md")
    args = parser.parse_args(argv)
    text = markdown()
    if args.doc:
        path = Path(__file__).resolve().parent.parent / "docs" / "csr.md"
        path.write_text(text)
        print(f"wrote {path}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
