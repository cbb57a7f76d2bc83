"""Weight-stationary systolic array of int8/bf16 processing elements (data type chosen at run time).

Geometry (R = ``rows`` along the reduction dimension K, C = ``cols`` along N)::

              psum[0]   psum[1]  ...  psum[C-1]        (top: accumulator so far / bias)
                 │         │             │
    a[0]  ──▶ PE(0,0) ─▶ PE(0,1) ─▶ ... PE(0,C-1)       activations move right, 1 cycle per PE
                 │         │             │
    a[1]  ──▶ PE(1,0) ─▶ PE(1,1) ─▶ ... PE(1,C-1)       partial sums move down, L cycles per PE
                 ...
                 ▼         ▼             ▼
             result[0] result[1] ... result[C-1]      (bottom: deskewed, one row per cycle)

PE(k, n) holds ``slots`` weights (one per weight tile in flight, a small memory) and computes
``psum_out = psum_in + a·w[slot]``; the slot travels with the activation, so tiles are written
into free slots, straight from the weight stream, while rows that use other slots are in flight.
The partial sum entering a PE is the sum so far of the products above it, so in bf16 mode every
output is the strictly sequential fp32 sum
``(((psum + a0·w0) + a1·w1) + ...)`` that docs/numerics.md requires, independent of R and C.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .arith import (
    Bf16MulCore,
    Fp32AddCore,
    bf16_mul_pack,
    bf16_mul_ranges,
    bf16_mul_unpack,
    bf16_significand,
)
from .dsp import RegisteredMultiplier, check_dsp
from .pipeline import KEEP, delay, step

__all__ = ["ProcessingElement", "SystolicArray", "PE_ADD_STAGES", "WEIGHT_SLOTS"]

#: Weight slots per PE (weight tiles that can be in the array at once): enough that the weight
#: stream at its full rate (one tile per ⌈R/2⌉ beats in wide int8) never waits for a slot to
#: pass its ``weight_hold`` (docs/matmul.md, "The array"). 16 is one distributed-RAM block deep.
WEIGHT_SLOTS = 16

#: The PE's default fp32 adder depth: a register after every step of
#: :class:`hdl.arith.Fp32AddCore` (6; the core's own default is 4). Inside the array the adder's
#: steps are the longest paths between registers and their nets are longer than in the adder
#: alone (docs/matmul.md, "ECP5"), so the PE spends two cycles more per partial sum for its clock.
PE_ADD_STAGES = Fp32AddCore.max_stages()


def _pe_add_stages(add_stages):
    return PE_ADD_STAGES if add_stages is None else add_stages


def _mul_latency(mul_stages):
    """PE multiply latency: the operand register, the multiplier's operand and product registers
    (:class:`hdl.dsp.RegisteredMultiplier`), then the bf16 multiply's ``mul_stages``."""
    return 1 + RegisteredMultiplier.latency + Bf16MulCore.latency_for(mul_stages)


def _check_stages(name, value):
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, not {value!r}")
    top = {"mul_stages": Bf16MulCore, "add_stages": Fp32AddCore}[name].max_stages()
    if not 1 <= value <= top:
        raise ValueError(f"{name} must be in 1..{top}, not {value}")


def _check_slots(slots):
    if not isinstance(slots, int) or isinstance(slots, bool):
        raise TypeError(f"slots must be an int, not {slots!r}")
    if not 2 <= slots <= 64 or slots & (slots - 1):
        raise ValueError(f"slots must be a power of two in 2..64, not {slots}")


class ProcessingElement(wiring.Component):
    """One int8/bf16 multiply-accumulate cell with ``slots`` stationary weights.

    One 9×9 signed multiplier serves both data types (one DSP block): the int8 product (the
    activation read as signed or unsigned 8-bit, the weight as signed 8-bit) or the product of
    the two 8-bit bf16 significands. Around it, the bf16 exponent and special-value logic of
    :class:`hdl.arith.Bf16MulCore` (the same functions), an :class:`hdl.arith.Fp32AddCore`, and a
    32-bit integer adder for the int8 partial sums.

    Parameters
    ----------
    mul_stages, add_stages : int or None
        Pipeline depth of the bf16 multiply (as :class:`hdl.arith.Bf16MulCore`'s ``stages``; the
        PE adds an operand register in front and the multiplier's own operand and product
        registers, so ``mul_latency`` is three more) and of the :class:`hdl.arith.Fp32AddCore`
        (``None``: the multiply core's default and :data:`PE_ADD_STAGES` for the adder).
    dsp : str
        How the multiplier is built: ``"generic"`` or ``"ecp5"``
        (:class:`hdl.dsp.RegisteredMultiplier`; same cycle behaviour).
    slots : int
        Weights held (a memory of ``slots`` × 16 bits with an asynchronous read), a power of two.

    Members
    -------
    a_in : In(16)
        Activation lane (bf16 bits, or int8 in the low 8 bits), arriving at cycle t.
    slot_in : In(log2(slots))
        Weight slot the activation uses; travels with it (read in cycle t).
    psum_in : In(32)
        Partial sum (int32, or fp32 bits) for this activation, arriving at cycle t + ``mul_latency``.
    a_out, slot_out : Out
        ``a_in``/``slot_in`` one cycle later (to the PE on the right).
    psum_out : Out(32)
        ``psum_in + a·w[slot]``, at cycle t + ``mul_latency`` + ``latency`` (int8 mode:
        ``int8_latency``; to the PE below).
    bf16 : In(1)
        1: bf16 × bf16 → fp32 product, fp32 add (:func:`golden.fp32_add`); 0: int8 MAC, int32
        wrapping. Must stay constant while data is in flight.
    a_unsigned : In(1)
        int8 mode: the activation is unsigned 8-bit.
    w_data, w_en, w_slot : In
        When ``w_en`` is 1, slot ``w_slot`` takes ``w_data`` (16 bits) at the end of the cycle (a
        read of that slot in the same cycle still gets the old weight). All slots start as 0x8000.

    Latency: ``latency`` cycles from ``psum_in`` to ``psum_out`` in bf16 mode (the fp32 adder and
    one output register), ``int8_latency`` (2) in int8 mode (one registered 32-bit add and the
    same output register); the activation must arrive ``mul_latency`` cycles before its partial
    sum in both modes. Throughput: one MAC per cycle.
    """

    def __init__(self, *, mul_stages=None, add_stages=None, dsp="generic", slots=WEIGHT_SLOTS):
        for name, value in (("mul_stages", mul_stages), ("add_stages", add_stages)):
            _check_stages(name, value)
        check_dsp(dsp)
        _check_slots(slots)
        self._dsp, self._slots = dsp, slots
        sb = ceil_log2(slots)
        self._mul_lat = _mul_latency(mul_stages)
        self._add_stages = _pe_add_stages(add_stages)
        self._add_lat = Fp32AddCore.latency_for(self._add_stages)
        super().__init__({
            "a_in": In(16), "slot_in": In(sb), "psum_in": In(32),
            "a_out": Out(16), "slot_out": Out(sb), "psum_out": Out(32),
            "bf16": In(1), "a_unsigned": In(1),
            "w_data": In(16), "w_en": In(1), "w_slot": In(sb),
        })

    @property
    def mul_latency(self):
        """Cycles by which the activation leads its partial sum."""
        return self._mul_lat

    @property
    def latency(self):
        """Cycles from ``psum_in`` to ``psum_out`` in bf16 mode."""
        return self._add_lat + 1

    @property
    def int8_latency(self):
        """Cycles from ``psum_in`` to ``psum_out`` in int8 mode."""
        return 2

    def elaborate(self, platform):
        m = Module()
        add = Fp32AddCore(stages=self._add_stages)
        m.submodules.add = add

        # The weight slots: a small memory (distributed RAM on an FPGA) written from w_data and
        # read asynchronously at the row's slot. Datapath registers (operands, products, sums)
        # have no reset: only the control that qualifies them (valid, data type) is reset,
        # outside the PE.
        wmem = m.submodules.wmem = Memory(shape=16, depth=self._slots, init=[0x8000] * self._slots)
        wp = wmem.write_port()
        rp = wmem.read_port(domain="comb")
        m.d.comb += [wp.addr.eq(self.w_slot), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     rp.addr.eq(self.slot_in)]
        w_sel = Signal(16)
        m.d.comb += w_sel.eq(rp.data)

        a_q = Signal(16, reset_less=True)
        slot_q = Signal.like(self.slot_in, reset_less=True, attrs=KEEP)  # one per PE: the slot chain
        m.d.sync += [a_q.eq(self.a_in), slot_q.eq(self.slot_in)]
        m.d.comb += [self.a_out.eq(a_q), self.slot_out.eq(slot_q)]

        # The shared multiplier: 9-bit signed operands, 18-bit signed product. bf16: the
        # significands (< 2**8, so the sign bit is 0); int8: a sign- or zero-extended, w signed.
        # The operands and the selected bf16 bits are registered first, so that the multiplier's
        # inputs come straight from flip-flops (timing: slot and type multiplexers in front of a
        # DSP block's multiply do not fit one 10 ns cycle on ECP5); the bf16 exponent sums and
        # classes are computed from that register, beside the multiply.
        a8, w8 = self.a_in[:8], w_sel[:8]
        x = Mux(self.bf16, Cat(bf16_significand(self.a_in), 0), Cat(a8, a8[7] & ~self.a_unsigned)).as_signed()
        y = Mux(self.bf16, Cat(bf16_significand(w_sel), 0), Cat(w8, w8[7])).as_signed()
        # The multiply itself has an operand and a product register of its own
        # (hdl.dsp.RegisteredMultiplier: on ECP5 those of the DSP block), so the routes into and
        # out of the DSP block each have a cycle; the bf16 exponent and class values travel
        # beside it through two registers.
        s0 = step(m, "operand", True, x=x, y=y, a=self.a_in, w=w_sel)
        m.submodules.mult = mult = RegisteredMultiplier(9, 9, dsp=self._dsp)
        m.d.comb += [mult.a.eq(s0.x), mult.b.eq(s0.y)]
        # the exponent sums are registered first and their range tests computed from that
        # register, in the cycle after (timing: the sums' and the tests' carry chains in series
        # did not fit one cycle after a detoured operand net)
        values, _, _ = bf16_mul_unpack(s0.a, s0.w)
        for i in range(mult.latency):
            values = vars(step(m, f"mval{i}", True, **values))
            if i == 0:
                values.update(bf16_mul_ranges(values))
        flags = Bf16MulCore.registered_steps(self._mul_lat - 1 - mult.latency)
        assert list(flags) == ["mul", "pack"]
        s1 = step(m, "mul", flags["mul"], prod=mult.p, **values)
        s2 = step(m, "pack", flags["pack"], y=bf16_mul_pack(m, s1))
        mul_regs = 1 + mult.latency + int(flags["mul"])

        # bf16: the product is ready when the partial sum arrives.
        m.d.comb += [add.en.eq(1), add.a.eq(self.psum_in), add.b.eq(s2.y)]
        # int8: the product waits to meet its partial sum, then one registered 32-bit add; the
        # sum leaves through the output register at once (int8_latency), not after the adder's
        # depth: the array's skews follow the data type.
        prod = delay(m, s1.prod, self.mul_latency - mul_regs, "iprod")
        isum = Signal(32, reset_less=True)
        m.d.sync += isum.eq((self.psum_in + prod)[:32])

        fp = delay(m, add.y, self.latency - 1 - add.latency, "fp")
        # the output select reads a copy of bf16 registered in this PE (the chain register that
        # drives bf16 also feeds the next PE and is placed between the two): the first partial
        # sum of a new data type reaches it mul_latency + 1 cycles after bf16 changed
        bf16_q = Signal(attrs=KEEP)
        m.d.sync += bf16_q.eq(self.bf16)
        psum_q = Signal(32, reset_less=True)
        m.d.sync += psum_q.eq(Mux(bf16_q, fp, isum))
        m.d.comb += self.psum_out.eq(psum_q)
        return m


class SystolicArray(wiring.Component):
    """R×C weight-stationary array; one row of A in, one row of partial sums out, per cycle.

    Parameters
    ----------
    rows, cols : int
        R (2..64, along K) and C (2..64, along N).
    tag_width : int
        Width of ``tag``, an opaque value delayed alongside each row (0..64).
    mul_stages, add_stages, dsp
        PE parameters (see :class:`ProcessingElement`).
    slots : int
        Weight slots per PE (a power of two, 2..64; default :data:`WEIGHT_SLOTS`).
    out_copies : int
        Copies of the ``o_valid`` and ``o_tag`` registers (1..8): copy 0 is ``o_valid``/``o_tag``,
        the others ``o_valid_x``/``o_tag_x``. Each copy is a register of its own with the same
        value, for a user whose loads sit in different parts of the die.

    Members
    -------
    valid : In(1)
        A row enters in this cycle.
    a : In(ArrayLayout(16, R))
        Activation row: lane k multiplies weight row k.
    psum : In(ArrayLayout(32, C))
        Starting partial sums of the row (accumulator so far, bias, or zero), one per column.
    slot : In(log2(slots))
        Weight slot the row uses.
    tag : In(tag_width)
        Returned with the result.
    bf16, a_unsigned : In(1)
        Data type (see :class:`ProcessingElement`); constant while rows are in flight. A change
        may enter together with the first row that uses it. ``bf16`` also sets the array's
        timing: ``latency`` and ``weight_hold`` in bf16 mode, ``int8_latency`` and
        ``int8_weight_hold`` in int8 mode.
    w_data : In(ArrayLayout(16, R*C))
        Weights to write, element (k, n) at index ``k*C + n``.
    w_en : In(R*C)
        Bit ``k*C + n``: PE(k, n) writes ``w_data[k*C + n]`` into slot ``w_slot[k]`` in this
        cycle (any subset of the PEs, in any cycle). Allowed ``weight_hold`` (int8:
        ``int8_weight_hold``) cycles after the last row using that slot entered, or later; a
        row may use the slot from the cycle after its last write on.
    w_slot : In(ArrayLayout(log2(slots), R))
        The slot that row k's PEs write (one copy per row of PEs).
    o_valid, result, o_tag : Out
        ``result[n] = psum[n] + Σ_k a[k]·w[k][n]`` (sequential in k) of the row that entered
        ``latency`` (int8: ``int8_latency``) cycles earlier.
    o_valid_x : Out(out_copies − 1), o_tag_x : Out(ArrayLayout(tag_width, out_copies − 1))
        Copies 1.. of ``o_valid`` and ``o_tag`` (only with ``out_copies`` > 1).

    Control distribution: the data type reaches the PEs through a chain of registers, one per PE
    (PE(k, n) is ``1 + k + n`` registers from the inputs), so no net spans the whole array; each
    register drives only its own PE and the next one in the chain.

    Latency: ``latency`` = ``mul_latency + R·pe_latency + C`` cycles in bf16 mode and
    ``int8_latency`` = ``mul_latency + R·pe_int8_latency + C`` in int8 mode: the activation skew
    and the valid and tag delays are tapped at the data type's depth (a multiplexer per row,
    chosen by ``bf16``). Throughput: one row per cycle (R·C MACs per cycle), no stalls: empty
    cycles travel as bubbles.
    """

    def __init__(self, *, rows, cols, tag_width=0, mul_stages=None, add_stages=None, dsp="generic",
                 slots=WEIGHT_SLOTS, out_copies=1):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
            if not 2 <= value <= 64:
                raise ValueError(f"{name} must be in 2..64, not {value}")
        if not isinstance(tag_width, int) or isinstance(tag_width, bool) or not 0 <= tag_width <= 64:
            raise ValueError(f"tag_width must be an int in 0..64, not {tag_width!r}")
        if not isinstance(out_copies, int) or isinstance(out_copies, bool) or not 1 <= out_copies <= 8:
            raise ValueError(f"out_copies must be an int in 1..8, not {out_copies!r}")
        self._out_copies = out_copies
        for name, value in (("mul_stages", mul_stages), ("add_stages", add_stages)):
            _check_stages(name, value)
        _check_slots(slots)
        self._rows, self._cols, self._tag_width, self._slots = rows, cols, tag_width, slots
        check_dsp(dsp)
        self._stages = dict(mul_stages=mul_stages, add_stages=add_stages, dsp=dsp, slots=slots)
        self._mul_latency = _mul_latency(mul_stages)
        self._pe_latency = Fp32AddCore.latency_for(_pe_add_stages(add_stages)) + 1
        self._pe_int8_latency = 2       # ProcessingElement.int8_latency
        sb = ceil_log2(slots)
        members = {
            "valid": In(1), "a": In(data.ArrayLayout(16, rows)), "psum": In(data.ArrayLayout(32, cols)),
            "slot": In(sb), "tag": In(max(tag_width, 1)),
            "bf16": In(1), "a_unsigned": In(1),
            "w_data": In(data.ArrayLayout(16, rows * cols)), "w_en": In(rows * cols),
            "w_slot": In(data.ArrayLayout(sb, rows)),
            "o_valid": Out(1), "result": Out(data.ArrayLayout(32, cols)), "o_tag": Out(max(tag_width, 1)),
        }
        if out_copies > 1:
            members.update(o_valid_x=Out(out_copies - 1),
                           o_tag_x=Out(data.ArrayLayout(max(tag_width, 1), out_copies - 1)))
        super().__init__(members)

    @property
    def rows(self):
        return self._rows

    @property
    def cols(self):
        return self._cols

    @property
    def slots(self):
        """Weight slots per PE."""
        return self._slots

    @property
    def pe_latency(self):
        """Cycles a partial sum spends in one PE (bf16 mode)."""
        return self._pe_latency

    @property
    def pe_int8_latency(self):
        """Cycles a partial sum spends in one PE (int8 mode)."""
        return self._pe_int8_latency

    @property
    def mul_latency(self):
        return self._mul_latency

    @staticmethod
    def latency_for(rows, cols, *, bf16, mul_stages=None, add_stages=None):
        """``latency`` (``bf16``) or ``int8_latency`` of an array of these parameters, without
        building it."""
        pe = Fp32AddCore.latency_for(_pe_add_stages(add_stages)) + 1 if bf16 else 2
        return _mul_latency(mul_stages) + rows * pe + cols

    @property
    def latency(self):
        """Cycles from a row entering (``valid``) to its result (``o_valid``), bf16 mode."""
        return self._mul_latency + self._rows * self._pe_latency + self._cols

    @property
    def int8_latency(self):
        """Cycles from a row entering (``valid``) to its result (``o_valid``), int8 mode."""
        return self._mul_latency + self._rows * self._pe_int8_latency + self._cols

    @property
    def weight_hold(self):
        """Cycles after the last row using a slot entered until that slot may be written (bf16
        mode): the row reads its weight at PE(k, n) ``1 + k·pe_latency + n`` cycles after it
        entered, so the last read is at PE(R − 1, C − 1), and a write in that cycle is already
        after it."""
        return (self._rows - 1) * self._pe_latency + self._cols

    @property
    def int8_weight_hold(self):
        """``weight_hold`` in int8 mode."""
        return (self._rows - 1) * self._pe_int8_latency + self._cols

    @property
    def throughput(self):
        """Rows per cycle."""
        return 1

    def elaborate(self, platform):
        m = Module()
        R, C, L, Li, Lm = self._rows, self._cols, self._pe_latency, self._pe_int8_latency, self._mul_latency
        pes = [[ProcessingElement(**self._stages) for _ in range(C)] for _ in range(R)]
        assert pes[0][0].latency == L and pes[0][0].int8_latency == Li

        def skew(sig, bf16_cycles, int8_cycles, name, sel, reset_less=True, copies=1, keep=False):
            # one delay line of bf16_cycles registers, whose last register takes the line's
            # (bf16_cycles − 1)th stage in bf16 mode and its (int8_cycles − 1)th in int8 mode, so
            # the output is a register either way; sel is a registered copy of bf16, valid from
            # the cycle a row entered + 1 on (int8_cycles ≥ 2 where the taps differ). With
            # copies > 1 the last register is repeated (each copy kept apart by synthesis) and a
            # list of the copies returned; ``keep``: every register of the line is kept.
            assert 1 <= int8_cycles <= bf16_cycles
            taps = [sig]
            for i in range(bf16_cycles - 1):
                nxt = Signal.like(sig, name=f"{name}_d{i + 1}", reset_less=reset_less, attrs=KEEP if keep else {})
                m.d.sync += nxt.eq(taps[-1])
                taps.append(nxt)
            if int8_cycles == bf16_cycles:
                last = taps[-1]
            else:
                assert int8_cycles >= 2
                last = Mux(sel, taps[bf16_cycles - 1], taps[int8_cycles - 1])
            outs = []
            for i in range(copies):
                suffix = f"_c{i}" if copies > 1 else ""
                out = Signal.like(sig, name=f"{name}_d{bf16_cycles}{suffix}", reset_less=reset_less,
                                  attrs=KEEP if keep or copies > 1 else {})
                m.d.sync += out.eq(last)
                outs.append(out)
            return outs if copies > 1 else outs[0]

        # bf16 one cycle late, for the valid and tag taps (the control chain's registers serve
        # the activation skew of rows 1..R-1)
        bf16_q = Signal()
        m.d.sync += bf16_q.eq(self.bf16)

        # control chain: down column 0, then along each row (one register per PE)
        ctl_layout = data.StructLayout({"bf16": 1, "a_unsigned": 1})
        ctl = [[Signal(ctl_layout, name=f"ctl_{k}_{n}", attrs=KEEP) for n in range(C)] for k in range(R)]
        m.d.sync += ctl[0][0].eq(Cat(self.bf16, self.a_unsigned))
        for k in range(R):
            for n in range(C):
                if n > 0:
                    m.d.sync += ctl[k][n].eq(ctl[k][n - 1])
                elif k > 0:
                    m.d.sync += ctl[k][0].eq(ctl[k - 1][0])
        for k in range(R):
            for n in range(C):
                m.submodules[f"pe_{k}_{n}"] = pe = pes[k][n]
                c = ctl[k][n]
                m.d.comb += [pe.bf16.eq(c.bf16), pe.a_unsigned.eq(c.a_unsigned),
                             pe.w_data.eq(self.w_data[k * C + n]), pe.w_en.eq(self.w_en[k * C + n]),
                             pe.w_slot.eq(self.w_slot[k])]
                if n == 0:
                    sel = ctl[k][0].bf16 if k else bf16_q     # row 0: one register, no taps
                    a = skew(self.a[k], 1 + k * L, 1 + k * Li, f"a_skew{k}", sel)
                    slot = skew(self.slot, 1 + k * L, 1 + k * Li, f"slot_skew{k}", sel, keep=True)
                    m.d.comb += [pe.a_in.eq(a), pe.slot_in.eq(slot)]
                else:
                    m.d.comb += [pe.a_in.eq(pes[k][n - 1].a_out), pe.slot_in.eq(pes[k][n - 1].slot_out)]
                if k == 0:
                    m.d.comb += pe.psum_in.eq(delay(m, self.psum[n], 1 + n + Lm, f"psum_skew{n}"))
                else:
                    m.d.comb += pe.psum_in.eq(pes[k - 1][n].psum_out)
        for n in range(C):
            m.d.comb += self.result[n].eq(delay(m, pes[R - 1][n].psum_out, C - 1 - n, f"deskew{n}"))
        # the output valid and tag in out_copies registers each (kept apart: attrs KEEP)
        n = self._out_copies
        valid = skew(self.valid, self.latency, self.int8_latency, "valid", bf16_q, reset_less=False, copies=n)
        tag = skew(self.tag, self.latency, self.int8_latency, "tag", bf16_q, copies=n)
        if n == 1:
            m.d.comb += [self.o_valid.eq(valid), self.o_tag.eq(tag)]
        else:
            m.d.comb += [self.o_valid.eq(valid[0]), self.o_tag.eq(tag[0])]
            for i in range(1, n):
                m.d.comb += [self.o_valid_x[i - 1].eq(valid[i]), self.o_tag_x[i - 1].eq(tag[i])]
        return m
