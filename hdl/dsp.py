"""A registered multiplier that maps onto one FPGA DSP block, registers included.

:class:`RegisteredMultiplier` computes ``p = a·b`` (signed operands of up to 18 bits) with the
operands and the product registered: ``p`` is the product of the operands of two cycles
earlier. It is built one of two ways, with identical cycle behaviour:

``"generic"``
    Two operand registers, a ``*`` and a product register in plain HDL. Any tool maps it;
    this is what the simulations and ``make verilog`` use.
``"ecp5"``
    One Lattice ECP5 ``MULT18X18D`` with its own A, B and output registers enabled
    (``REG_INPUTA_CLK``, ``REG_INPUTB_CLK``, ``REG_OUTPUT_CLK`` = ``CLK0``). yosys'
    ``synth_ecp5`` maps a ``*`` to a ``MULT18X18D`` with every register bypassed and does not
    move fabric flip-flops into the block, so the route into the DSP block, its multiply and the
    route out of it would all fall in one clock cycle; with the block's registers each of the
    three gets a cycle of its own. ``make fpga`` builds this way. The Verilator testbenches
    simulate it against ``sim/models/ecp5_mult18x18d.v``, a model of the primitive in exactly
    this configuration.

Latency 2 cycles either way; one product per cycle; no enable and no reset (datapath only).
"""

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DSP_KINDS", "RegisteredMultiplier"]

#: The implementations :class:`RegisteredMultiplier` knows.
DSP_KINDS = ("generic", "ecp5")

#: Operand width of one ECP5 MULT18X18D.
_ECP5_WIDTH = 18


def check_dsp(dsp):
    """Raise if ``dsp`` is not one of :data:`DSP_KINDS`."""
    if dsp not in DSP_KINDS:
        raise ValueError(f"dsp must be one of {', '.join(map(repr, DSP_KINDS))}, not {dsp!r}")


class RegisteredMultiplier(wiring.Component):
    """``p = a·b``, signed, two cycles after ``a`` and ``b``.

    Parameters
    ----------
    a_width, b_width : int
        Signed operand widths, 2..18 (pass an unsigned value one bit wider, zero-extended).
    dsp : str
        ``"generic"`` or ``"ecp5"`` (see the module documentation).

    Members
    -------
    a : In(signed(a_width))
    b : In(signed(b_width))
    p : Out(signed(a_width + b_width))
        ``a·b`` of the operands two cycles earlier (exact: the product always fits).
    """

    latency = 2

    def __init__(self, a_width, b_width, *, dsp="generic"):
        for name, width in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(width, int) or isinstance(width, bool) or not 2 <= width <= _ECP5_WIDTH:
                raise ValueError(f"{name} must be an int in 2..{_ECP5_WIDTH}, not {width!r}")
        check_dsp(dsp)
        self._dsp = dsp
        super().__init__({"a": In(signed(a_width)), "b": In(signed(b_width)),
                          "p": Out(signed(a_width + b_width))})

    def elaborate(self, platform):
        m = Module()
        if self._dsp == "generic":
            a_q = Signal.like(self.a, reset_less=True)
            b_q = Signal.like(self.b, reset_less=True)
            p_q = Signal.like(self.p, reset_less=True)
            m.d.sync += [a_q.eq(self.a), b_q.eq(self.b), p_q.eq(a_q * b_q)]
            m.d.comb += self.p.eq(p_q)
            return m
        a18 = Signal(signed(_ECP5_WIDTH))
        b18 = Signal(signed(_ECP5_WIDTH))
        p36 = Signal(signed(2 * _ECP5_WIDTH))
        m.d.comb += [a18.eq(self.a), b18.eq(self.b), self.p.eq(p36[:len(self.p)])]
        ports = {"i_CLK0": ClockSignal("sync"), "i_CE0": Const(1), "i_RST0": Const(0),
                 "i_SIGNEDA": Const(1), "i_SIGNEDB": Const(1),
                 "i_SOURCEA": Const(0), "i_SOURCEB": Const(0)}
        for i in range(_ECP5_WIDTH):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = Const(0)
        for i in range(2 * _ECP5_WIDTH):
            ports[f"o_P{i}"] = p36[i]
        m.submodules.mult = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0", p_REG_OUTPUT_CLK="CLK0",
            p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
            p_REG_INPUTA_CE="CE0", p_REG_INPUTB_CE="CE0", p_REG_OUTPUT_CE="CE0",
            p_REG_INPUTA_RST="RST0", p_REG_INPUTB_RST="RST0", p_REG_OUTPUT_RST="RST0",
            p_GSR="DISABLED", p_RESETMODE="SYNC", p_MULT_BYPASS="DISABLED",
            **ports)
        return m
