"""Streaming row softmax, int8 and bf16 paths (docs/numerics.md "Softmax", docs/softmax.md).

:class:`SoftmaxUnit` computes exactly :func:`golden.softmax_int8` / :func:`golden.softmax_bf16_bits`
with P lanes in three passes, each in its own pipeline stage, so three rows are in flight:

* **A** (ingest): takes a row's score beats, turns each score into x (log2 units, fixed point),
  writes x into the X ring and keeps the running max; at the row's last beat it hands the row
  (max rounded up to R, mask, NaN flag) to B through a small FIFO.
* **B** (exp and sum): reads the row back from the X ring, looks up ``2**-f`` (one table read
  port per lane), writes ``(t, n)`` per element into the E ring and sums the terms exactly; at
  the last beat the sum enters a pipelined reciprocal whose result goes to C through a FIFO.
* **C** (normalize): reads ``(t, n)`` back from the E ring, multiplies by the reciprocal and
  rounds to uint8 (scale 1/255) or bf16, into the output FIFO.

The rings are ``lib.memory.Memory`` of 2·ceil(L_max/P) beats each; every stage reserves space
downstream before it takes a beat (credits), so no stage ever has to stall mid-pipeline, the
next row's pass A overlaps the previous rows' passes B and C, and rows follow each other
without bubbles.

``elaborate`` is wiring: :meth:`SoftmaxUnit._memories`, one method per pass (``_pass_a``,
``_pass_b``, ``_pass_c``; they share credits every cycle), the
:class:`~hdl.softmax_rcp.Reciprocal` component between B and C, and ``_events``.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spec import softmax as _g
from spec.codes import Dtype, SoftmaxStatus

from . import counters
from .config import ChipConfig
from .softmax_rcp import DIV_STEPS_PER_STAGE as _DIV_STEPS_PER_STAGE
from .softmax_rcp import Reciprocal, highest_set_bit
from .softmax_rcp import pipeline_stage as _stage

__all__ = ["SoftmaxUnit", "cmd_layout", "out_layout", "events_layout"]

_F = _g.FRAC_BITS
_EB = _g.EXP_BITS
_SG = _g.SUM_GUARD
_RB = _g.RCP_BITS
_RI = _g.RCP_IN_BITS
_XW = _g.X_BITS
_NW = 8  # n is clamped to N_MAX = 255
_TW = _EB + 1
_XMIN = -(1 << (_XW - 1))
_XMAX = (1 << (_XW - 1)) - 1
#: Rows that can wait between two passes (the row FIFOs A → B and B → C).
_ROW_QUEUE = 8

assert _g.N_MAX == (1 << _NW) - 1


def cmd_layout(max_len):
    """The command payload of a unit with rows of up to ``max_len`` elements (fields from bit 0:
    ``length``, ``valid_len``, ``causal_pos`` of ceil_log2(max_len + 1) bits each, ``dtype``
    (:class:`spec.codes.Dtype`), ``scale`` 32, ``shift`` 6)."""
    lw = ceil_log2(max_len + 1)
    return data.StructLayout({
        "length": lw, "valid_len": lw, "causal_pos": lw, "dtype": Dtype, "scale": 32, "shift": 6})


def out_layout(lanes):
    """The output payload: ``data`` (``lanes`` × 16 bits), ``last``."""
    return data.StructLayout({"data": data.ArrayLayout(16, lanes), "last": 1})


def events_layout(lanes):
    """The ``events`` port (docs/conventions.md, "Counters"; every field a flag but
    ``exp_reads``, 0..lanes)."""
    return counters.events_layout({
        "busy": 1, "cmds": 1, "cmds_rejected": 1, "rows_out": 1, "beats_in": 1, "beats_out": 1,
        "stall_output": 1, "stall_input": 1, "stall_ring": 1, "xring_reads": 1,
        "xring_writes": 1, "ering_reads": 1, "ering_writes": 1, "exp_reads": lanes.bit_length()})


def _clamp_x(m, value, name):
    """Saturate a signed value to X_BITS bits (it fits iff its bits from X_BITS-1 up are equal)."""
    value = Value.cast(value)
    top = value[_XW - 1:]
    fits = (top == 0) | top.all()
    x = Signal(signed(_XW), name=name)
    m.d.comb += x.eq(Mux(fits, value[:_XW], Mux(value[-1], _XMIN, _XMAX)))
    return x


class SoftmaxUnit(wiring.Component):
    """Streaming row softmax with P lanes, bit-exact with golden/softmax.py.

    Parameters
    ----------
    lanes : int
        Elements per beat and per cycle P; a power of two, 1..64.
    max_len : int
        Longest row L_max; a power of two, P..65536.

    Members
    -------
    cmd : In(stream)
        One command per row: ``length`` (1..L_max elements), ``valid_len`` (padding; values
        above ``length`` mean none), ``causal_pos`` (key j visible only if j ≤ causal_pos; any
        value ≥ length − 1 means no causal mask), ``dtype`` (:class:`spec.codes.Dtype`: 0 int8,
        1 bf16), ``scale`` (int8: the multiplier m in bits 0..15; bf16: the fp32 constant c)
        and ``shift`` (int8: sh). A command with ``length`` 0 or > L_max is consumed and
        dropped: ``error`` shows BAD_LENGTH for one cycle, the event ``cmds_rejected`` counts
        it, no score beat is taken for it and no output is produced; later rows are
        unaffected.
    i : In(stream)
        Scores, P per beat (int32 or fp32 bit patterns), ceil(length/P) beats per row in command
        order; lanes past the row's end are ignored.
    o : Out(stream)
        Probabilities, P per beat (``data``: uint8 zero-extended, or bf16 bits), ceil(length/P)
        beats per row, ``last`` on a row's final beat; lanes past the row's end are 0.
    error : Out(spec.codes.SoftmaxStatus)
        The code of the command rejected in this cycle (BAD_LENGTH), OK (0) in every other
        cycle: the unit has no response stream.
    events : Out(events_layout)
        What the unit does in each cycle (docs/conventions.md, "Counters"): ``busy`` (a row is
        in the unit), ``cmds`` and ``cmds_rejected`` (commands taken; rejected),
        ``rows_out`` (rows finished: an output beat with ``last``), ``beats_in``,
        ``beats_out``, and at most one stall reason: ``stall_output`` (an output beat not
        taken), ``stall_input`` (pass A has a row and no score beat is offered),
        ``stall_ring`` (a score beat offered, pass A cannot take it: the X ring or the row
        queue to pass B is full); memory words read and written: ``xring_reads``,
        ``xring_writes``, ``ering_reads``, ``ering_writes``, ``exp_reads`` (exp-table reads,
        P per beat of pass B).

    Latency: an isolated row of B = ceil(length/P) beats leaves its last output beat
    :meth:`row_latency` (= 3·B + :attr:`latency` cycles) after its first score beat is taken.
    Throughput: P elements (one beat) per cycle in each pass, across row boundaries without
    bubbles, as long as the output is not back-pressured. Each pass starts a row only when the
    previous pass has finished it, so a row longer than the one before it makes the output wait
    for its passes A and B, and pass A waits when 8 finished rows are queued for pass B (many
    short rows right after a long one); neither lowers the rate of the output stream, which
    stays at one beat per cycle for rows of non-increasing length.

    Memories: X ring and E ring (2·ceil(L_max/P) beats each, one write and one synchronous read
    port, never read and written at the same address in one cycle, so transparency does not
    matter), and one 2**F-entry exp table ROM per lane.
    """

    def __init__(self, *, lanes, max_len, src_loc_at=0):
        for name, value, hi in (("lanes", lanes, 64), ("max_len", max_len, 1 << 16)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
            if not 1 <= value <= hi or value & (value - 1):
                raise ValueError(f"{name} must be a power of two in 1..{hi}, not {value}")
        if max_len < lanes:
            raise ValueError(f"max_len ({max_len}) must be ≥ lanes ({lanes})")
        self._lanes = lanes
        self._max_len = max_len
        self._lw = ceil_log2(max_len + 1)
        self._beats = max(max_len // lanes, 1)
        self._ring = max(2 * self._beats, 4)
        self._sw = _EB + _SG + ceil_log2(max_len) + 2
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "i": In(stream.Signature(data.ArrayLayout(32, lanes))),
            "o": Out(stream.Signature(self.out_layout)),
            "error": Out(SoftmaxStatus),
            "events": Out(self.events_layout),
        }, src_loc_at=src_loc_at + 1)

    @classmethod
    def from_config(cls, config):
        """The unit for a :class:`~hdl.config.ChipConfig` (``softmax.lanes``, ``softmax.max_len``)."""
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        return cls(lanes=config.softmax.lanes, max_len=config.softmax.max_len, src_loc_at=1)

    @property
    def lanes(self):
        """P, elements per beat."""
        return self._lanes

    @property
    def max_len(self):
        """L_max, the longest row."""
        return self._max_len

    @property
    def cmd_layout(self):
        lw = ceil_log2(self._max_len + 1)
        return data.StructLayout({
            "length": lw, "valid_len": lw, "causal_pos": lw, "dtype": Dtype, "scale": 32, "shift": 6})

    @property
    def events_layout(self):
        """The layout of the ``events`` port (:func:`events_layout`)."""
        return events_layout(self._lanes)

    @property
    def out_layout(self):
        return data.StructLayout({"data": data.ArrayLayout(16, self._lanes), "last": 1})

    @property
    def div_stages(self):
        """Registers in the reciprocal pipeline."""
        return -(-(_RB + 1) // _DIV_STEPS_PER_STAGE)

    @property
    def latency(self):
        """Fixed part of :meth:`row_latency`: cycles beyond one per beat in each pass (the
        pipeline registers, ring and table reads and FIFO hand-overs, 15, and the reciprocal's
        :attr:`div_stages`)."""
        return 15 + self.div_stages

    def row_latency(self, length):
        """Cycles from an isolated row's first accepted score beat to its last output beat."""
        beats = -(-length // self._lanes)
        return 3 * beats + self.latency

    @property
    def throughput(self):
        """Elements per cycle, sustained (P)."""
        return self._lanes

    # ----------------------------------------------------------------------------------------

    @staticmethod
    def _x_products(m, score, scale, sh, name):
        """x, step 1: the int8 and bf16 products, the rounding terms and the flags."""
        out = {}
        p8 = Signal(signed(49), name=f"{name}_p8")
        m.d.comb += p8.eq(score.as_signed() * Cat(scale[:16], Const(0, 1)).as_signed())
        half8 = Signal(64, name=f"{name}_half8")
        m.d.comb += half8.eq((Const(1, 65) << sh) >> 1)
        ea, eb = score[23:31], scale[23:31]
        fa, fb = score[0:23], scale[0:23]
        a_zero, b_zero = ea == 0, eb == 0
        a_max, b_max = ea == 0xFF, eb == 0xFF
        a_nan, b_nan = a_max & (fa != 0), b_max & (fb != 0)
        a_inf, b_inf = a_max & (fa == 0), b_max & (fb == 0)
        nan = a_nan | b_nan | (a_inf & b_zero) | (b_inf & a_zero)
        pb = Signal(48, name=f"{name}_pb")
        m.d.comb += pb.eq(Mux(a_zero, 0, Cat(fa, Const(1, 1))) * Mux(b_zero, 0, Cat(fb, Const(1, 1))))
        e = Signal(signed(11), name=f"{name}_e")
        m.d.comb += e.eq(ea + eb - (2 * (127 + 23) - _F))
        k = Signal(range(63), name=f"{name}_k")
        m.d.comb += k.eq(Mux(e < -62, 62, Mux(e > 0, 0, -e)))
        halfb = Signal(63, name=f"{name}_halfb")
        m.d.comb += halfb.eq((Const(1, 64) << k) >> 1)
        # |value| ≥ 2**24 (saturates): a non-zero product (≥ 2**46) with e ≥ -22, or an Inf
        sat = ((e >= -22) & ~a_zero & ~b_zero) | a_inf | b_inf
        out.update(p8=p8, half8=half8, pb=pb, k=k, halfb=halfb, nan=nan, sat=sat & ~nan,
                   neg=score[31] ^ scale[31])
        return out

    @staticmethod
    def _x_sums(m, v, name):
        """x, step 2: add the rounding terms (bf16: to the signed product)."""
        s8 = Signal(signed(66), name=f"{name}_s8")
        m.d.comb += s8.eq(v["p8"] + Cat(v["half8"], Const(0, 1)).as_signed())
        sb = Signal(signed(65), name=f"{name}_sb")
        hb = Cat(v["halfb"], Const(0, 1)).as_signed()
        m.d.comb += sb.eq(Mux(v["neg"], hb - v["pb"], hb + v["pb"]))
        return {"s8": s8, "sb": sb}

    @staticmethod
    def _x_shifts(m, v, sh, name):
        """x, step 3: the rounding shifts."""
        r8 = Signal(signed(66), name=f"{name}_r8")
        m.d.comb += r8.eq(v["s8"] >> sh)
        rb = Signal(signed(65), name=f"{name}_rb")
        m.d.comb += rb.eq(v["sb"] >> v["k"])
        return {"r8": r8, "rb": rb}

    def elaborate(self, platform):
        m = Module()
        k = self._memories(m)
        self._pass_a(m, k)
        self._pass_b(m, k)
        self._reciprocal(m, k)
        self._pass_c(m, k)
        # ring occupancy: pass A writes the X ring, pass B moves a beat from it to the E ring,
        # pass C frees it
        m.d.sync += [k.x_occ.eq(k.x_occ + k.i_fire - k.b_issue), k.e_occ.eq(k.e_occ + k.b_issue - k.c_issue)]
        self._events(m, k)
        return m

    # -- parts of elaborate: the memories, one method per pass, the events ---------------------
    def _nb_m1(self, length):
        """Beats of a row, minus one."""
        return ((length + (self._lanes - 1)) >> exact_log2(self._lanes)) - 1

    def _memories(self, m):
        """The X and E rings, the exp tables, the row FIFOs between the passes and the output
        FIFO; returns the namespace the passes share."""
        P, lw, ring, sw = self._lanes, self._lw, self._ring, self._sw
        k = SimpleNamespace()
        m.submodules.xmem = xmem = Memory(shape=unsigned(_XW * P), depth=ring, init=[])
        k.x_wr = xmem.write_port()
        k.x_rd = xmem.read_port(domain="sync")
        m.submodules.emem = emem = Memory(shape=unsigned((_TW + _NW) * P), depth=ring, init=[])
        k.e_wr = emem.write_port()
        k.e_rd = emem.read_port(domain="sync")
        table = [int(v) for v in _g.EXP2_TABLE]
        k.t_rd = []
        for lane in range(P):
            rom = Memory(shape=unsigned(_TW), depth=len(table), init=table)
            m.submodules[f"exp_rom{lane}"] = rom
            k.t_rd.append(rom.read_port(domain="sync"))

        k.m1_layout = data.StructLayout({"length": lw, "vis": lw, "dtype": 1, "nan": 1,
                                         "r": signed(_XW + 1)})
        k.m2_layout = data.StructLayout({"length": lw, "vis": lw, "dtype": 1, "nan": 1,
                                         "rcp": _RB + 1, "z": range(sw)})
        k.m1_depth, k.m2_depth, k.o_depth = _ROW_QUEUE, _ROW_QUEUE + self.div_stages, 8
        m.submodules.m1 = k.m1 = SyncFIFO(width=k.m1_layout.size, depth=k.m1_depth)
        m.submodules.m2 = k.m2 = SyncFIFO(width=k.m2_layout.size, depth=k.m2_depth)
        m.submodules.ofifo = k.ofifo = SyncFIFO(width=self.out_layout.size, depth=k.o_depth)

        k.x_occ = Signal(range(ring + 1))
        k.e_occ = Signal(range(ring + 1))
        k.x_wp = Signal(range(ring))
        k.x_rp = Signal(range(ring))
        k.e_wp = Signal(range(ring))
        k.e_rp = Signal(range(ring))
        return k

    def _pass_a(self, m, k):
        """Pass A (ingest): takes the command and the row's score beats (A0), turns them into x
        (:meth:`_x_lanes`, A1 … A2d), and in A3 writes the X ring, keeps the running max and at
        the row's last beat hands the row to pass B through the row FIFO ``m1``."""
        P, lw, ring = self._lanes, self._lw, self._ring
        m1 = k.m1
        k.a_active = a_active = Signal()
        a_len = Signal(lw)
        a_vis = Signal(lw)
        a_dtype = Signal()
        a_scale = Signal(32)
        a_shift = Signal(6)
        a_bi = Signal(lw)
        a_nbm1 = Signal(lw)
        a_base = Signal(lw + 1)
        a_max = Signal(signed(_XW))
        a_nan = Signal()
        a_last = Signal()
        m.d.comb += a_last.eq(a_bi == a_nbm1)

        k.i_fire = i_fire = Signal()
        k.cmd_fire = cmd_fire = Signal()
        k.m1_pend = m1_pend = Signal(3)  # rows whose last beat is in A1..A3
        m.d.comb += [
            self.i.ready.eq(a_active & (k.x_occ < ring) & (~a_last | (m1.level + m1_pend < k.m1_depth))),
            i_fire.eq(self.i.valid & self.i.ready),
            self.cmd.ready.eq(~a_active | (i_fire & a_last)),
            cmd_fire.eq(self.cmd.valid & self.cmd.ready),
        ]

        # A0 → A1: the accepted beat and its row, registered
        a1 = _stage(m, "a1", {"beat": Value.cast(self.i.payload),
                              "lvis": Cat(*[a_base + lane < a_vis for lane in range(P)]),
                              "first": a_bi == 0, "last": a_last, "length": a_len, "vis": a_vis,
                              "dtype": a_dtype, "scale": a_scale, "shift": a_shift}, i_fire)
        stages, a3 = self._x_lanes(m, a1)
        # A3: write the X ring, running max; at the row's last beat hand the row to pass B
        row_max = Signal(signed(_XW))
        m.d.comb += row_max.eq(Mux(a3["first"] | (a3["bmax"] > a_max), a3["bmax"], a_max))
        row_nan = Signal()
        m.d.comb += row_nan.eq((~a3["first"] & a_nan) | a3["nan"])
        m.d.comb += [
            k.x_wr.addr.eq(k.x_wp),
            k.x_wr.data.eq(a3["x"]),
            k.x_wr.en.eq(a3["valid"]),
        ]
        m1_w = Signal(k.m1_layout)
        one = 1 << _F
        m.d.comb += [
            m1_w.length.eq(a3["length"]), m1_w.vis.eq(a3["vis"]), m1_w.dtype.eq(a3["dtype"]),
            m1_w.nan.eq(row_nan), m1_w.r.eq(((row_max + (one - 1)) >> _F) << _F),
            m1.w_data.eq(m1_w),
            m1.w_en.eq(a3["valid"] & a3["last"]),
            m1_pend.eq(sum(st["valid"] & st["last"] for st in stages)),
        ]
        with m.If(a3["valid"]):
            m.d.sync += [k.x_wp.eq(k.x_wp + 1), a_max.eq(row_max), a_nan.eq(row_nan)]
        with m.If(i_fire):
            m.d.sync += [a_bi.eq(a_bi + 1), a_base.eq(a_base + P)]
            with m.If(a_last):
                m.d.sync += a_active.eq(0)
        k.bad = bad = (self.cmd.payload.length == 0) | (self.cmd.payload.length > self._max_len)
        m.d.comb += self.error.eq(Mux(cmd_fire & bad, SoftmaxStatus.BAD_LENGTH, SoftmaxStatus.OK))
        with m.If(cmd_fire & ~bad):
            p = self.cmd.payload
            lim0 = Signal(lw + 1)
            m.d.comb += lim0.eq(Mux(p.valid_len < p.length, p.valid_len, p.length))
            lim = Signal(lw + 1)
            m.d.comb += lim.eq(Mux(p.causal_pos + 1 < lim0, p.causal_pos + 1, lim0))
            m.d.sync += [
                a_active.eq(1), a_len.eq(p.length), a_vis.eq(lim), a_dtype.eq(p.dtype),
                a_scale.eq(p.scale), a_shift.eq(p.shift), a_bi.eq(0), a_base.eq(0),
                a_nbm1.eq(self._nb_m1(p.length)),
            ]

    def _x_lanes(self, m, a1):
        """Pass A's datapath from the registered beat ``a1`` to the A3 registers: per lane x
        (int8: ``(score·m + half) >> sh``; bf16: the rounded fp32 product), saturated, masked,
        the beat's max (a balanced tree) and NaN flag. Returns the stages (A1 … A3, for the rows
        in flight) and A3."""
        P = self._lanes
        # A1 → A2: products, rounding terms, flags
        ctl = ("lvis", "first", "last", "length", "vis", "dtype", "shift")
        src = {key: a1[key] for key in ctl}
        for lane in range(P):
            for key, value in self._x_products(m, a1["beat"][32 * lane:32 * (lane + 1)], a1["scale"],
                                               a1["shift"], f"a1_{lane}").items():
                src[f"{key}{lane}"] = value
        a2 = _stage(m, "a2", src, a1["valid"])
        # A2 → A2b: sums
        src = {key: a2[key] for key in ctl}
        for lane in range(P):
            v = {key: a2[f"{key}{lane}"] for key in ("p8", "half8", "pb", "halfb", "neg")}
            src.update({f"{key}{lane}": value for key, value in self._x_sums(m, v, f"a2_{lane}").items()})
            src.update({f"{key}{lane}": a2[f"{key}{lane}"] for key in ("k", "nan", "sat", "neg")})
        a2b = _stage(m, "a2b", src, a2["valid"])
        # A2b → A2c: shifts
        src = {key: a2b[key] for key in ctl}
        for lane in range(P):
            v = {key: a2b[f"{key}{lane}"] for key in ("s8", "sb", "k")}
            src.update({f"{key}{lane}": value
                        for key, value in self._x_shifts(m, v, a2b["shift"], f"a2b_{lane}").items()})
            src.update({f"{key}{lane}": a2b[f"{key}{lane}"] for key in ("nan", "sat", "neg")})
        a2c = _stage(m, "a2c", src, a2b["valid"])
        # A2c → A2d: saturation, path select, masking
        lane_x, lane_m, lane_nan = [], [], []
        for lane in range(P):
            x8 = _clamp_x(m, a2c[f"r8{lane}"], f"a2c_x8{lane}")
            xc = _clamp_x(m, a2c[f"rb{lane}"], f"a2c_xc{lane}")
            xb = Signal(signed(_XW), name=f"a2c_xb{lane}")
            with m.If(a2c[f"nan{lane}"]):
                m.d.comb += xb.eq(0)
            with m.Elif(a2c[f"sat{lane}"]):
                m.d.comb += xb.eq(Mux(a2c[f"neg{lane}"], _XMIN, _XMAX))
            with m.Else():
                m.d.comb += xb.eq(xc)
            x = Signal(signed(_XW), name=f"a2c_x{lane}")
            m.d.comb += x.eq(Mux(a2c["dtype"], xb, x8))
            xm = Signal(signed(_XW), name=f"a2c_xm{lane}")  # masked lanes cannot raise the max
            m.d.comb += xm.eq(Mux(a2c["lvis"][lane], x, _XMIN))
            lane_x.append(x)
            lane_m.append(xm)
            lane_nan.append(a2c[f"nan{lane}"] & a2c["dtype"] & a2c["lvis"][lane])
        # A2d: the beat's max (a balanced tree) and NaN flag
        a2d = _stage(m, "a2d", {"x": Cat(*lane_x), "xm": Cat(*lane_m), "nan": Cat(*lane_nan).any(),
                                **{key: a2c[key] for key in ("first", "last", "length", "vis", "dtype")}},
                     a2c["valid"])
        lane_m = [a2d["xm"][lane * _XW:(lane + 1) * _XW].as_signed() for lane in range(P)]
        level = 0
        while len(lane_m) > 1:  # a balanced max tree
            nxt = []
            for j in range(0, len(lane_m) - 1, 2):
                mx = Signal(signed(_XW), name=f"a2_max{level}_{j}")
                m.d.comb += mx.eq(Mux(lane_m[j] > lane_m[j + 1], lane_m[j], lane_m[j + 1]))
                nxt.append(mx)
            if len(lane_m) % 2:
                nxt.append(lane_m[-1])
            lane_m, level = nxt, level + 1
        a3 = _stage(m, "a3", {"x": a2d["x"], "bmax": lane_m[0], "nan": a2d["nan"],
                              **{key: a2d[key] for key in ("first", "last", "length", "vis", "dtype")}},
                    a2d["valid"])
        return (a1, a2, a2b, a2c, a2d, a3), a3

    def _pass_b(self, m, k):
        """Pass B (exp and sum): reads the row back from the X ring (B1), looks up ``2**-f`` per
        lane (B2), writes ``(t, n)`` into the E ring and adds the beat's terms (B2b), accumulates
        the row's sum (B3)."""
        P, ring, sw = self._lanes, self._ring, self._sw
        m1, m2 = k.m1, k.m2
        b_row = data.View(k.m1_layout, m1.r_data)
        b_bi = Signal(self._lw)
        b_base = Signal(self._lw + 1)
        k.b_last = b_last = Signal()
        m.d.comb += b_last.eq(b_bi == self._nb_m1(b_row.length))
        k.m2_inflight = Signal(range(k.m2_depth + 1))
        k.b_issue = b_issue = Signal()
        m.d.comb += b_issue.eq(m1.r_rdy & (k.e_occ < ring) & (~b_last | (m2.level + k.m2_inflight < k.m2_depth)))
        m.d.comb += [k.x_rd.addr.eq(k.x_rp), m1.r_en.eq(b_issue & b_last)]
        with m.If(b_issue):
            m.d.sync += [k.x_rp.eq(k.x_rp + 1), b_bi.eq(b_bi + 1), b_base.eq(b_base + P)]
            with m.If(b_last):
                m.d.sync += [b_bi.eq(0), b_base.eq(0)]

        k.b1 = b1 = _stage(m, "b1", {"r": b_row.r, "vis": b_row.vis, "base": b_base, "first": b_bi == 0,
                                     "last": b_last, "length": b_row.length, "dtype": b_row.dtype,
                                     "nan": b_row.nan}, b_issue)
        b1_n, b1_vis = [], []
        for lane in range(P):
            x = k.x_rd.data[lane * _XW:(lane + 1) * _XW].as_signed()
            d = Signal(signed(_XW + 2), name=f"b1_d{lane}")
            m.d.comb += d.eq(b1["r"] - x)
            n = Signal(_NW, name=f"b1_n{lane}")
            hi = d >> _F
            m.d.comb += n.eq(Mux(hi > _g.N_MAX, _g.N_MAX, hi))
            m.d.comb += k.t_rd[lane].addr.eq(d[:_F])
            vis = Signal(name=f"b1_vis{lane}")
            m.d.comb += vis.eq(b1["base"] + lane < b1["vis"])
            b1_n.append(n)
            b1_vis.append(vis)
        k.b2 = b2 = _stage(m, "b2", {"first": b1["first"], "last": b1["last"], "length": b1["length"],
                                     "vis": b1["vis"], "dtype": b1["dtype"], "nan": b1["nan"],
                                     "n": Cat(*b1_n), "lvis": Cat(*b1_vis)}, b1["valid"])
        e_lanes = []
        for lane in range(P):
            t = Signal(_TW, name=f"b2_t{lane}")
            m.d.comb += t.eq(Mux(b2["lvis"][lane], k.t_rd[lane].data, 0))
            e_lanes += [t, b2["n"][lane * _NW:(lane + 1) * _NW]]
        # B2 → B2b: the table values registered; the terms and their adder tree
        k.b2b = b2b = _stage(m, "b2b", {"tn": Cat(*e_lanes), **{key: b2[key] for key in
                                                                ("first", "last", "length", "vis", "dtype", "nan")}},
                             b2["valid"])
        terms = []
        for lane in range(P):
            off = lane * (_TW + _NW)
            t, n = b2b["tn"][off:off + _TW], b2b["tn"][off + _TW:off + _TW + _NW]
            term = Signal(_TW + _SG, name=f"b2b_term{lane}")
            m.d.comb += term.eq((t << _SG) >> n)
            terms.append(term)
        level = 0
        while len(terms) > 1:  # a balanced adder tree of the beat's terms
            nxt = []
            for j in range(0, len(terms) - 1, 2):
                t2 = Signal(len(terms[j]) + 1, name=f"b2b_sum{level}_{j}")
                m.d.comb += t2.eq(terms[j] + terms[j + 1])
                nxt.append(t2)
            if len(terms) % 2:
                nxt.append(terms[-1])
            terms, level = nxt, level + 1
        m.d.comb += [k.e_wr.addr.eq(k.e_wp), k.e_wr.data.eq(Cat(*e_lanes)), k.e_wr.en.eq(b2["valid"])]
        with m.If(b2["valid"]):
            m.d.sync += k.e_wp.eq(k.e_wp + 1)
        # B3: accumulate the row's sum
        k.b3 = b3 = _stage(m, "b3", {"bsum": terms[0], **{key: b2b[key] for key in
                                                          ("first", "last", "length", "vis", "dtype", "nan")}},
                           b2b["valid"])
        s_acc = Signal(sw)
        k.s_new = s_new = Signal(sw)
        m.d.comb += s_new.eq(Mux(b3["first"], 0, s_acc) + b3["bsum"])
        with m.If(b3["valid"]):
            m.d.sync += s_acc.eq(s_new)

    def _reciprocal(self, m, k):
        """The row's sum, at its last beat, through the :class:`~hdl.softmax_rcp.Reciprocal` into
        the row FIFO ``m2`` of pass C."""
        b3 = k.b3
        tag = data.StructLayout({"length": self._lw, "vis": self._lw, "dtype": 1, "nan": 1})
        m.submodules.rcp = rcp = Reciprocal(sum_bits=self._sw, tag_bits=tag.size)
        i_tag, o_tag = data.View(tag, rcp.i_tag), data.View(tag, rcp.o_tag)
        m.d.comb += [rcp.i_valid.eq(b3["valid"] & b3["last"]), rcp.i_sum.eq(k.s_new),
                     i_tag.length.eq(b3["length"]), i_tag.vis.eq(b3["vis"]), i_tag.dtype.eq(b3["dtype"]),
                     i_tag.nan.eq(b3["nan"])]
        m2_w = Signal(k.m2_layout)
        m.d.comb += [
            m2_w.length.eq(o_tag.length), m2_w.vis.eq(o_tag.vis), m2_w.dtype.eq(o_tag.dtype),
            m2_w.nan.eq(o_tag.nan), m2_w.rcp.eq(rcp.o_rcp), m2_w.z.eq(rcp.o_z),
            k.m2.w_data.eq(m2_w), k.m2.w_en.eq(rcp.o_valid),
        ]
        m.d.sync += k.m2_inflight.eq(k.m2_inflight + (k.b_issue & k.b_last) - rcp.o_valid)

    def _pass_c(self, m, k):
        """Pass C (normalize): reads ``(t, n)`` back from the E ring (C1), multiplies by the
        reciprocal (C1 → C2) and rounds to uint8 (scale 1/255) or bf16 (C2 … C3), into the
        output FIFO."""
        P, sw = self._lanes, self._sw
        m2, ofifo = k.m2, k.ofifo
        c_row = data.View(k.m2_layout, m2.r_data)
        c_bi = Signal(self._lw)
        c_base = Signal(self._lw + 1)
        c_last = Signal()
        m.d.comb += c_last.eq(c_bi == self._nb_m1(c_row.length))
        k.c_issue = c_issue = Signal()
        k.c_pend = c_pend = Signal(3)  # beats in C1..C3
        m.d.comb += c_issue.eq(m2.r_rdy & (ofifo.level + c_pend < k.o_depth))
        m.d.comb += [k.e_rd.addr.eq(k.e_rp), m2.r_en.eq(c_issue & c_last)]
        with m.If(c_issue):
            m.d.sync += [k.e_rp.eq(k.e_rp + 1), c_bi.eq(c_bi + 1), c_base.eq(c_base + P)]
            with m.If(c_last):
                m.d.sync += [c_bi.eq(0), c_base.eq(0)]
        c1 = _stage(m, "c1", {"rcp": c_row.rcp, "z": c_row.z, "base": c_base, "vis": c_row.vis,
                              "dtype": c_row.dtype, "nan": c_row.nan, "last": c_last}, c_issue)
        # C1 → C2: V = t·Rcp and k per lane
        src = {key: c1[key] for key in ("dtype", "nan", "last")}
        kw = ceil_log2(_g.N_MAX + _RB + sw + 1)
        for lane in range(P):
            off = lane * (_TW + _NW)
            t = k.e_rd.data[off:off + _TW]
            n = k.e_rd.data[off + _TW:off + _TW + _NW]
            v = Signal(_TW + _RB + 1, name=f"c1_v{lane}")
            m.d.comb += v.eq(t * c1["rcp"])
            kk = Signal(kw, name=f"c1_k{lane}")
            m.d.comb += kk.eq(n + c1["z"] + (_RB - _SG))
            src.update({f"v{lane}": v, f"k{lane}": kk, f"vis{lane}": c1["base"] + lane < c1["vis"]})
        c2 = _stage(m, "c2", src, c1["valid"])
        c2b = self._c_round_terms(m, c2)
        # C2b → C3: int8 255·V + 2**(k-1); bf16 normalization
        src = {key: c2b[key] for key in ("dtype", "nan", "last")}
        for lane in range(P):
            v = c2b[f"v{lane}"]
            pre = Signal(64, name=f"c2b_pre{lane}")
            m.d.comb += pre.eq(c2b[f"v255{lane}"] + c2b[f"halfq{lane}"])
            vn = Signal(len(v), name=f"c2b_vn{lane}")
            m.d.comb += vn.eq(v << c2b[f"lz{lane}"])
            src.update({f"pre{lane}": pre, f"vn{lane}": vn,
                        **{f"{key}{lane}": c2b[f"{key}{lane}"] for key in ("kc", "ev", "zero", "vis")}})
        c3 = _stage(m, "c3", src, c2b["valid"])
        outs = [self._c_lane_out(m, c3, lane) for lane in range(P)]
        m.d.comb += [ofifo.w_data.eq(Cat(*outs, c3["last"])), ofifo.w_en.eq(c3["valid"]),
                     c_pend.eq(c1["valid"] + c2["valid"] + c2b["valid"] + c3["valid"])]
        m.d.comb += [
            self.o.valid.eq(ofifo.r_rdy),
            self.o.payload.eq(ofifo.r_data),
            ofifo.r_en.eq(self.o.ready),
        ]

    def _c_round_terms(self, m, c2):
        """C2 → C2b: int8 255·V and 2**(k-1); bf16 leading one. Returns the C2b stage."""
        src = {key: c2[key] for key in ("dtype", "nan", "last")}
        for lane in range(self._lanes):
            v, k = c2[f"v{lane}"], c2[f"k{lane}"]
            vw = len(v)
            kc = Signal(6, name=f"c2_kc{lane}")
            m.d.comb += kc.eq(Mux(k > 63, 63, k))
            v255 = Signal(vw + 8, name=f"c2_v255{lane}")
            m.d.comb += v255.eq((v << 8) - v)
            halfq = Signal(63, name=f"c2_halfq{lane}")
            m.d.comb += halfq.eq((Const(1, 64) << kc) >> 1)
            b = highest_set_bit(m, v, f"c2_b{lane}")
            lz = Signal(range(vw), name=f"c2_lz{lane}")
            m.d.comb += lz.eq(vw - 1 - b)
            ev0 = Signal(signed(12), name=f"c2_ev{lane}")
            m.d.comb += ev0.eq(b - k)
            src.update({f"kc{lane}": kc, f"v255{lane}": v255, f"halfq{lane}": halfq, f"v{lane}": v,
                        f"lz{lane}": lz, f"ev{lane}": ev0, f"zero{lane}": v == 0, f"vis{lane}": c2[f"vis{lane}"]})
        return _stage(m, "c2b", src, c2["valid"])

    @staticmethod
    def _c_lane_out(m, c3, lane):
        """C3, one lane: int8 shift and saturation; bf16 rounding and exponent; the lane's
        output (0 past the row, the NaN row, bf16 or uint8)."""
        q = Signal(64, name=f"c3_q{lane}")
        m.d.comb += q.eq(c3[f"pre{lane}"] >> c3[f"kc{lane}"])
        q8 = Mux(q > 255, 255, q[:8])
        vn = c3[f"vn{lane}"]
        vw = len(vn)
        mant = vn[vw - 8:vw]
        guard = vn[vw - 9]
        sticky = vn[:vw - 9] != 0
        up = guard & (sticky | mant[0])
        mr = Signal(9, name=f"c3_mr{lane}")
        m.d.comb += mr.eq(mant + up)
        carry = mr[8]
        ev = Signal(signed(12), name=f"c3_ev{lane}")
        m.d.comb += ev.eq(c3[f"ev{lane}"] + carry)
        bf = Signal(16, name=f"c3_bf{lane}")
        with m.If(c3[f"zero{lane}"] | (ev < -126)):
            m.d.comb += bf.eq(0)
        with m.Else():
            m.d.comb += bf.eq(Cat(Mux(carry, 0, mr[:7]), (ev + 127)[:8], Const(0, 1)))
        out = Signal(16, name=f"c3_out{lane}")
        with m.If(~c3[f"vis{lane}"]):
            m.d.comb += out.eq(0)
        with m.Elif(c3["dtype"] & c3["nan"]):
            m.d.comb += out.eq(_g.BF16_NAN_ROW)
        with m.Elif(c3["dtype"]):
            m.d.comb += out.eq(bf)
        with m.Else():
            m.d.comb += out.eq(q8)
        return out

    def _events(self, m, k):
        """The ``events`` port (docs/conventions.md, "Counters")."""
        ev = self.events
        o_fire = self.o.valid & self.o.ready
        busy = k.a_active | (k.m1_pend != 0) | k.m1.r_rdy | k.m2.r_rdy | k.b1["valid"] | k.b2["valid"] \
            | k.b2b["valid"] | k.b3["valid"] | (k.m2_inflight != 0) | (k.c_pend != 0) | k.ofifo.r_rdy
        stall_output = self.o.valid & ~self.o.ready
        m.d.comb += [
            ev.busy.eq(busy), ev.cmds.eq(k.cmd_fire), ev.cmds_rejected.eq(k.cmd_fire & k.bad),
            ev.rows_out.eq(o_fire & self.o.payload.last), ev.beats_in.eq(k.i_fire), ev.beats_out.eq(o_fire),
            ev.stall_output.eq(stall_output),
            ev.stall_input.eq(~stall_output & k.a_active & ~self.i.valid),
            ev.stall_ring.eq(~stall_output & k.a_active & self.i.valid & ~self.i.ready),
            ev.xring_writes.eq(k.x_wr.en), ev.xring_reads.eq(k.b_issue),
            ev.ering_writes.eq(k.e_wr.en), ev.ering_reads.eq(k.c_issue),
            ev.exp_reads.eq(Mux(k.b1["valid"], self._lanes, 0)),
        ]
