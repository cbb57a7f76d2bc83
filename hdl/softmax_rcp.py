"""The softmax unit's reciprocal (hdl/softmax.py, docs/softmax.md): ``Rcp = 2**(RCP_IN_BITS − 1 +
RCP_BITS) // St`` of a row's exact sum, pipelined (docs/numerics.md "Softmax", step 4)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spec import softmax as _g

from .params import check_int as _check_int

__all__ = ["Reciprocal", "DIV_STEPS_PER_STAGE", "pipeline_stage", "highest_set_bit"]

_RB = _g.RCP_BITS
_RI = _g.RCP_IN_BITS
#: Restoring-division steps between two registers of the reciprocal.
DIV_STEPS_PER_STAGE = 2


def pipeline_stage(m, prefix, src, valid):
    """Register the values of ``src`` (a dict of values) and ``valid`` into a new pipeline stage:
    a dict of the registers (named ``<prefix>_<key>``), with ``"valid"``."""
    out = {}
    for key, value in src.items():
        sig = Signal(Value.cast(value).shape(), name=f"{prefix}_{key}")
        m.d.sync += sig.eq(value)
        out[key] = sig
    v = Signal(name=f"{prefix}_valid")
    m.d.sync += v.eq(valid)
    out["valid"] = v
    return out


def highest_set_bit(m, value, name):
    """Position of the highest set bit of ``value`` (0 when value is 0)."""
    pos = Signal(range(max(len(value), 2)), name=name)
    for i in range(len(value)):
        with m.If(value[i]):
            m.d.comb += pos.eq(i)
    return pos


class Reciprocal(wiring.Component):
    """``z = bit_length(s) − 1``, ``St = s >> (z + 1 − RCP_IN_BITS)`` (the top RCP_IN_BITS bits of
    the sum) and ``rcp = 2**(RCP_IN_BITS − 1 + RCP_BITS) // St`` by restoring division, one
    quotient bit per step, :data:`DIV_STEPS_PER_STAGE` steps per register; a row's values
    (``tag``) travel alongside.

    Parameters
    ----------
    sum_bits : int
        Bits of the sum ``s``, RCP_IN_BITS..64.
    tag_bits : int
        Bits carried from ``i_tag`` to ``o_tag``, 1..256.

    Members
    -------
    i_valid, i_sum, i_tag : In
        A sum (``s`` < 2**(RCP_IN_BITS − 1) gives ``St = 0`` and ``rcp`` all ones).
    o_valid, o_rcp, o_z, o_tag : Out
        Its reciprocal (RCP_BITS + 1 bits), ``z`` and tag, :attr:`latency` cycles later.

    Latency: :attr:`latency` = 1 + :attr:`stages` cycles (the sum registered, then the division
    stages); a new sum every cycle, never stalls.
    """

    def __init__(self, *, sum_bits, tag_bits):
        _check_int("sum_bits", sum_bits, _RI, 64)
        _check_int("tag_bits", tag_bits, 1, 256)
        self._sw = sum_bits
        super().__init__({
            "i_valid": In(1), "i_sum": In(sum_bits), "i_tag": In(tag_bits),
            "o_valid": Out(1), "o_rcp": Out(_RB + 1), "o_z": Out(range(sum_bits)), "o_tag": Out(tag_bits),
        })

    @property
    def stages(self):
        """Registers in the division."""
        return -(-(_RB + 1) // DIV_STEPS_PER_STAGE)

    @property
    def latency(self):
        return 1 + self.stages

    def elaborate(self, platform):
        m = Module()
        sw = self._sw
        dn = pipeline_stage(m, "dn", {"s": self.i_sum, "tag": self.i_tag}, self.i_valid)
        z = highest_set_bit(m, dn["s"], "dn_z")
        st = Signal(_RI, name="dn_st")
        st_sh = Signal(range(sw), name="dn_st_sh")
        m.d.comb += st_sh.eq(Mux(z >= _RI - 1, z + 1 - _RI, 0))
        m.d.comb += st.eq(Mux(z >= _RI - 1, dn["s"] >> st_sh, 0))
        rem = Signal(_RI + 1, name="div_rem0")
        m.d.comb += rem.eq(1 << (_RI - 1))
        pipe = {"st": st, "z": z, "tag": dn["tag"], "rem": rem, "q": Const(0, _RB + 1)}
        valid = dn["valid"]
        for step in range(_RB + 1):
            if step % DIV_STEPS_PER_STAGE == 0:
                pipe = pipeline_stage(m, f"div{step}", pipe, valid)
                valid = pipe.pop("valid")
            ge = pipe["rem"] >= pipe["st"]
            r2 = Signal(_RI + 1, name=f"div_rem{step + 1}")
            m.d.comb += r2.eq(Mux(ge, pipe["rem"] - pipe["st"], pipe["rem"]) << 1)
            q2 = Signal(_RB + 1, name=f"div_q{step + 1}")
            m.d.comb += q2.eq(Cat(ge, pipe["q"][:-1]))
            pipe = dict(pipe, rem=r2, q=q2)
        m.d.comb += [self.o_valid.eq(valid), self.o_rcp.eq(pipe["q"]), self.o_z.eq(pipe["z"]),
                     self.o_tag.eq(pipe["tag"])]
        return m
