"""Matmul engine: ``C = A·W (+ bias)`` for any M, K, N on one R×C int8/bf16 systolic array.

The full description (ports, command format, stream orders, latencies, counters, error codes)
is docs/matmul.md. In short:

* A command (``cmd`` stream) gives M, K, N, the data type, the output format, the weight
  orientation and flags. The engine answers each command with exactly one ``resp`` beat: an
  error code and the performance counters.
* Activations stream in once (``a``: R lanes per beat, K-tile-major), into an on-chip buffer
  that the engine re-reads for every N tile; the first N tile computes from it while it fills.
* Weight tiles stream in (``w``: C lanes per beat, tile order, rows along K or transposed) into a
  staging register, then into the idle weight bank of the array (double buffering).
* Per-N-tile parameters (bias, requantization multiplier and shift) come on ``p``.
* Results leave on ``o``, one beat per output row slice of C columns, N-tile-major.
"""

import operator
from functools import reduce
from types import SimpleNamespace

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from spec.codes import MatmulStatus as Status
from spec.codes import OutFormat

from .arith import Fp32ToBf16Core
from .config import ChipConfig
from .dsp import RegisteredMultiplier
from .requant import PASS_MULTIPLIER, PASS_SHIFT, Requantizer, requant_input_layout, requant_params_bad
from .systolic import SystolicArray

__all__ = ["MatmulEngine", "command_layout", "param_layout",
           "result_layout", "response_layout", "COUNTERS"]


#: Performance counters in every response, in this order.
COUNTERS = ("cycles", "busy", "macs", "stall_input", "stall_output", "stall_weight", "stall_dependency")
_COUNTER_WIDTH = 48
#: Pipeline registers of the fp32 → bf16 conversion (``out_fmt = BF16``): a register between its
#: rounding add and its select (timing: a long route from the requantization's registers). It
#: reads the requantization's pass-through that many stages before its end, so this costs no
#: cycle.
_CVT_STAGES = 2
# words per lane in the activation FIFO between the buffer's reads and the issue
A_FIFO_DEPTH = 5
# users of the array's output valid and tag, one register copy each: the accumulator's write
# port, the issue flags' two copies ("i", "l") and the accumulator banks' write counters
_OUT_COPIES = ("acc", "i", "l", "cnt")


def command_layout():
    """Payload of the ``cmd`` stream (the first field at the least significant bit)."""
    return data.StructLayout({
        "m": 16, "k": 16, "n": 16,
        "dtype": 1,          # 0 int8, 1 bf16
        "out_fmt": 2,        # OutFormat
        "w_transposed": 1,   # 0: a beat is a row of a W tile; 1: a beat is (part of) a column
        "a_unsigned": 1,     # int8 mode: activations are unsigned 8-bit
        "has_bias": 1,
    })


def param_layout(cols):
    """Payload of the ``p`` stream: one beat per N tile, lane c is output column n0 + c."""
    return data.StructLayout({
        "bias": data.ArrayLayout(32, cols),        # int32, or fp32 bits
        "multiplier": data.ArrayLayout(32, cols),  # requant multiplier, 0 ≤ m < 2**31
        "shift": data.ArrayLayout(8, cols),        # requant shift, 1..62
    })


def result_layout(cols):
    """Payload of the ``o`` stream."""
    return data.StructLayout({"data": data.ArrayLayout(32, cols), "last": 1})


def response_layout():
    """Payload of the ``resp`` stream."""
    return data.StructLayout({"code": 4, **{name: _COUNTER_WIDTH for name in COUNTERS}})


def _reciprocal(divisor, bits):
    """(multiplier, shift) with ``x * multiplier >> shift == x // divisor`` for all x < 2**bits."""
    shift = bits + ceil_log2(divisor)
    mult = -(-(1 << shift) // divisor)
    x = np.arange(1 << bits, dtype=np.int64)
    # exhaustive check at elaboration (x·mult < 2**63 for bits ≤ 17, divisor ≤ 64)
    if not np.array_equal((x * mult) >> shift, x // divisor):
        raise AssertionError(f"no exact reciprocal of {divisor} for {bits}-bit numerators")
    return mult, shift


#: Attribute of the engine's memories: no read uses data from a row written in the same cycle
#: (the prefetch reads an activation word from the cycle after its write; the issue reads an
#: accumulator row once its write has been counted, and the drain once the whole bank has
#: been), so a synthesis tool need not build the read-before-write bypass that a simultaneous
#: read and write of one row would otherwise need (timing: Yosys's bypass put an address
#: compare and a 256-bit multiplexer between the drain address and the block RAMs' output
#: registers). A read that did use such a row would read its old value in simulation and fail
#: the bit-exact tests.
_NO_RW_CHECK = {"no_rw_check": 1}


def _lanes_below(rem, count):
    """Per-lane flags ``lane < rem``."""
    return [rem > i for i in range(count)]


class MatmulEngine(wiring.Component):
    """Tiled int8/bf16 matrix multiply around a :class:`~hdl.systolic.SystolicArray`.

    Parameters
    ----------
    rows, cols : int
        Array size R (along K) and C (along N), 2..64 each.
    acc_depth : int
        Largest M of one command (accumulator rows per bank). Power of two, 2..65536.
    a_depth : int
        Activation buffer words (R lanes each); a command needs M·ceil(K/R) ≤ a_depth. 2..2**20.
    mul_stages, add_stages : int or None
        Pipeline depths of the PE cores (``None``: their defaults).
    dsp : str
        How the multipliers are built (:class:`hdl.dsp.RegisteredMultiplier`): ``"generic"``
        (plain HDL, any tool) or ``"ecp5"`` (Lattice ECP5 DSP blocks with their own registers;
        ``make fpga``). The cycle behaviour is the same.

    Members
    -------
    cmd : In(stream.Signature(command_layout()))
        Commands; accepted only while idle (see "Busy rule").
    a : In(stream.Signature(ArrayLayout(16, R)))
        Activations: beat ``j = kt·M + m`` carries ``A[m, kt·R + r]`` in lane r (int8 sign- or
        zero-extended to 16 bits, or bf16 bits). Lanes past K are ignored.
    w : In(stream.Signature(ArrayLayout(16, C)))
        Weight tiles in order ``for nt: for kt``. Row orientation: beats r = 0..kv−1 carry
        ``W[kt·R + r, nt·C + c]`` in lane c. Transposed: for columns c = 0..nv−1, ceil(R/C)
        beats each, chunk j carrying ``W[kt·R + j·C + l, nt·C + c]`` in lane l. kv, nv are the
        valid rows/columns of the tile; lanes past K or N are ignored.
    p : In(stream.Signature(param_layout(C)))
        One beat per N tile when ``has_bias`` or the format is INT8; otherwise unused.
    o : Out(stream.Signature(result_layout(C)))
        One beat per (N tile, row m), N-tile-major: lane c is column ``nt·C + c`` as int32, int8
        (sign-extended), fp32 bits or bf16 bits (low half). ``last`` marks a command's last beat.
    resp : Out(stream.Signature(response_layout()))
        One beat per command: ``code`` (:class:`Status`) and the counters (:data:`COUNTERS`).
    busy : Out(1)
        A command is being executed.

    Busy rule: ``cmd.ready`` is 1 only while idle, so a command sent while the engine is busy
    waits in the stream and starts after the current one has sent its response; operand beats
    of a command are accepted only while that command runs.

    Latency: the last result row of an N tile enters the output FIFO ``latency`` cycles after
    the last row of its last K tile entered the array. Throughput: R·C MACs per cycle while
    operands keep up (a weight tile takes max(kv, nv·ceil(R/C)) beats, which overlap the M
    cycles of the tile before).
    """

    def __init__(self, *, rows, cols, acc_depth, a_depth, mul_stages=None, add_stages=None, dsp="generic"):
        for name, value, lo, hi in (("rows", rows, 2, 64), ("cols", cols, 2, 64),
                                    ("acc_depth", acc_depth, 2, 65536), ("a_depth", a_depth, 2, 1 << 20)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be in {lo}..{hi}, not {value}")
        if acc_depth & (acc_depth - 1):
            raise ValueError(f"acc_depth must be a power of two, not {acc_depth}")
        self._rows, self._cols = rows, cols
        self._acc_depth, self._a_depth = acc_depth, a_depth
        self._acc_bits = ceil_log2(acc_depth)
        self._array = SystolicArray(rows=rows, cols=cols, tag_width=1 + self._acc_bits,
                                    mul_stages=mul_stages, add_stages=add_stages, dsp=dsp,
                                    out_copies=len(_OUT_COPIES))
        self._dsp = dsp
        self._cvt_latency = Fp32ToBf16Core.latency_for(_CVT_STAGES)
        # the output stage: every format goes through the requantizer (the others pass through)
        self._requant = Requantizer(lanes=cols, tag_width=1, dsp=dsp)
        self._out_stages = self._requant.latency
        self._fifo_depth = self._out_stages + 4
        super().__init__({
            "cmd": In(stream.Signature(command_layout())),
            "a": In(stream.Signature(data.ArrayLayout(16, rows))),
            "w": In(stream.Signature(data.ArrayLayout(16, cols))),
            "p": In(stream.Signature(param_layout(cols))),
            "o": Out(stream.Signature(result_layout(cols))),
            "resp": Out(stream.Signature(response_layout())),
            "busy": Out(1),
        })

    @classmethod
    def from_config(cls, config):
        """The engine of a :class:`~hdl.config.ChipConfig`: R×C = array.rows × array.cols,
        ``acc_depth`` = 32·R rounded up to a power of two, ``a_depth`` = 32·acc_depth."""
        acc_depth, a_depth = cls.buffer_sizes(config)
        return cls(rows=config.array.rows, cols=config.array.cols, acc_depth=acc_depth, a_depth=a_depth,
                   dsp=config.array.dsp)

    @staticmethod
    def buffer_sizes(config):
        """(acc_depth, a_depth) that :meth:`from_config` gives ``config``."""
        if not isinstance(config, ChipConfig):
            raise TypeError(f"config must be a ChipConfig, not {type(config).__name__}")
        acc_depth = 1 << ceil_log2(32 * config.array.rows)
        return acc_depth, 32 * acc_depth

    @property
    def rows(self):
        """R, the array rows (along K)."""
        return self._rows

    @property
    def cols(self):
        """C, the array columns (along N)."""
        return self._cols

    @property
    def acc_depth(self):
        """Largest M of one command."""
        return self._acc_depth

    @property
    def a_depth(self):
        """Activation buffer words (R lanes each)."""
        return self._a_depth

    @property
    def array(self):
        """The :class:`~hdl.systolic.SystolicArray`."""
        return self._array

    @property
    def latency(self):
        """Cycles from a row of the last K tile entering the array to its result entering the
        output FIFO (array, accumulator write and read, output stage), bf16 commands."""
        return self._array.latency + 3 + self._out_stages

    @property
    def int8_latency(self):
        """``latency`` of int8 commands (the array's partial sums spend 2 cycles per PE, not
        ``array.pe_latency``)."""
        return self._array.int8_latency + 3 + self._out_stages

    @property
    def throughput(self):
        """Peak MACs per cycle."""
        return self._rows * self._cols

    @property
    def w_beats_per_column(self):
        """Beats per W tile column in transposed orientation: ceil(R/C)."""
        return -(-self._rows // self._cols)

    def elaborate(self, platform):
        m = Module()
        R, C = self._rows, self._cols
        J = self.w_beats_per_column
        AB = self._acc_bits
        arr = m.submodules.array = self._array

        # ---------------------------------------------------------------- command & state
        cmd = Signal(command_layout())
        bf16 = cmd.dtype
        need_p = Signal()   # a register, set in SETUP1 (timing: the go tests it)
        m.d.comb += [arr.bf16.eq(bf16), arr.a_unsigned.eq(cmd.a_unsigned & ~bf16)]
        kt_count = Signal(16)
        words = Signal(range(self._a_depth + 1))
        code = Signal(4)
        counters = {name: Signal(_COUNTER_WIDTH, name=f"cnt_{name}") for name in COUNTERS}
        resp_payload = Signal(response_layout())
        m.d.comb += [self.cmd.ready.eq(0), self.resp.valid.eq(0), self.resp.payload.eq(resp_payload)]

        running = Signal()  # register: the RUN state
        # ``running`` has a copy per part of the engine that tests it (timing: one register
        # reached the stream readies across the die; KEEP_CHAINS "running_*"); all hold the same
        # value in every cycle
        runs = {part: Signal(name=f"running_{part}") for part in ("a", "p", "w", "d")}
        # The counters restart in the cycle after a command was accepted (SETUP1), each from a
        # clear register of its own, set at the accept (timing: the accept reached every counter
        # bit over one net; KEEP_CHAINS "cnt_clr_*"). ``cycles`` restarts at 1: SETUP1 counts.
        accept = Signal()
        cnt_clr = {name: Signal(name=f"cnt_clr_{name}") for name in COUNTERS}
        m.d.sync += [x.eq(accept) for x in cnt_clr.values()]
        start_set = Signal()    # the run starts: ``start`` is 1 in the next cycle
        # ``start`` is a register, one cycle before RUN: it initialises the run counters. Each
        # part of the engine has its own copy (timing: one register would reach the whole die;
        # KEEP_CHAINS "start_*"); they hold the same value in every cycle.
        starts = {part: Signal(name=f"start_{part}") for part in ("a", "pf", "p", "w", "i", "l", "d")}
        m.d.sync += [x.eq(start_set) for x in starts.values()]
        start_a, start_pf, start_p, start_w, start_i, start_l, start_d = starts.values()
        finish = Signal()   # one cycle: everything sent

        rmult, rshift = _reciprocal(R, 17)  # ceil(K / R) = (K + R − 1)·rmult >> rshift
        rshift_pow2 = R.bit_length() - 1    # for R a power of two, a shift
        k_pad = Signal(17)
        m_last = Signal(16)     # M − 1, a register (timing: the row counters compare with it)
        m_last2 = Signal(16)    # M − 2 (the row flags below)
        m_one = Signal()        # M = 1
        k_one = Signal()        # K ≤ R: one K tile
        n_one = Signal()        # N ≤ C: one N tile
        words_full = Signal(33)
        a_too_large = Signal()  # words_full > a_depth, a register (timing: start_set tests it)
        # M·kt_count, the activation words of the command, in a DSP block with its registers
        # (timing: a one-off product, but an unregistered one was a critical path on ECP5)
        words_mul = m.submodules.words_mul = RegisteredMultiplier(17, 17, dsp=self._dsp)
        m.d.comb += [words_mul.a.eq(cmd.m), words_mul.b.eq(kt_count)]

        # Setup is a chain of registered steps (each one adder, multiplier or comparison), and
        # ``start`` and ``running`` are flip-flops: they fan out to the whole loader, issue and
        # drain logic, including the clear of the weight staging register.
        with m.FSM(name="engine"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += cmd.eq(self.cmd.payload)
                    m.d.comb += accept.eq(1)
                    m.next = "SETUP1"
            with m.State("SETUP1"):
                m.d.sync += [k_pad.eq(cmd.k + (R - 1)), m_last.eq(cmd.m - 1), m_last2.eq(cmd.m - 2),
                             m_one.eq(cmd.m == 1), k_one.eq(cmd.k <= R), n_one.eq(cmd.n <= C),
                             need_p.eq(cmd.has_bias | (cmd.out_fmt == OutFormat.INT8))]
                with m.If((cmd.m == 0) | (cmd.k == 0) | (cmd.n == 0)):
                    m.d.sync += code.eq(Status.ZERO_DIM)
                    m.next = "RESP"
                with m.Elif(cmd.m > self._acc_depth):
                    m.d.sync += code.eq(Status.M_TOO_LARGE)
                    m.next = "RESP"
                with m.Elif(cmd.dtype != cmd.out_fmt[1]):
                    m.d.sync += code.eq(Status.BAD_FORMAT)
                    m.next = "RESP"
                with m.Else():
                    m.d.sync += code.eq(Status.OK)
                    m.next = "SETUP2"
            with m.State("SETUP2"):
                if R & (R - 1) == 0:
                    m.d.sync += kt_count.eq(k_pad >> rshift_pow2)
                else:
                    m.d.sync += kt_count.eq((k_pad * rmult) >> rshift)
                m.next = "SETUP3"
            with m.State("SETUP3"):
                # the product M·kt_count leaves the multiplier two cycles after its operands
                m.next = "SETUP3_MUL"
            with m.State("SETUP3_MUL"):
                m.next = "SETUP3_P"
            with m.State("SETUP3_P"):
                m.d.sync += words_full.eq(words_mul.p)
                m.next = "SETUP3_CHK"
            with m.State("SETUP3_CHK"):
                m.d.sync += a_too_large.eq(words_full > self._a_depth)
                m.next = "SETUP4"
            with m.State("SETUP4"):
                with m.If(a_too_large):
                    m.d.sync += code.eq(Status.A_TOO_LARGE)
                    m.next = "RESP"
                with m.Else():
                    m.d.sync += words.eq(words_full)
                    m.d.comb += start_set.eq(1)
                    m.next = "START"
            with m.State("START"):
                m.d.sync += [x.eq(1) for x in (running, *runs.values())]
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(finish):
                    m.d.sync += [x.eq(0) for x in (running, *runs.values())]
                    m.next = "RESP"
            with m.State("RESP"):
                m.d.comb += self.resp.valid.eq(1)
                with m.If(self.resp.ready):
                    m.next = "IDLE"
        # cycles: from the cycle after the command was accepted to the response (inclusive)
        with m.If(~self.cmd.ready & ~self.resp.valid):
            m.d.sync += counters["cycles"].eq(counters["cycles"] + 1)
        m.d.comb += self.busy.eq(~self.cmd.ready)
        m.d.comb += resp_payload.code.eq(code)
        for name, c in counters.items():
            m.d.comb += getattr(resp_payload, name).eq(c)

        # ---------------------------------------------------------------- issue flags
        # The issue decision ``go`` and the one-bit flags it tests exist in two copies, each
        # with its own registers and its own ``go``: "i" beside the issue counters (the copy the
        # rest of the engine reads), "l" beside the read-after-write count (``lag``). Both copies
        # take the same updates, so they hold the same values in every cycle. A path from a flag
        # through ``go`` to the state it updates stays inside its group; what crosses between
        # groups is state register to flag logic (timing: with one ``go``, the placer split that
        # loop between the two ends of the die; bench.fpga keeps the copies, KEEP_CHAINS "iss_*").
        #   active: an N tile is left to issue     w_full[b]: weight bank b holds a tile not yet
        #   fully issued    tw: the weight bank the issue reads    a_nz: the activation FIFO
        #   holds the next word (a_cnt != 0)    p_full[b]: parameter slot b is loaded    bank: the
        #   accumulator bank of the N tile    kt0: first K tile    first, end: row 0, row M − 1
        #   klast: last K tile    nlast: last N tile    free[b]: accumulator bank b is drained
        #   lag_ok: lag < M    w_ok, p_ok, fr_ok: w_full[tw], ~need_p | p_full[bank], free[bank]
        #   (each kept as a register of its own, updated with the vectors: the multiplexers by
        #   tw and bank are then not in front of go)
        #   a_cnt: words in the activation FIFO (below)
        flag_widths = dict(active=1, w_full=2, tw=1, a_nz=1, p_full=2, bank=1, kt0=1, first=1,
                           end=1, klast=1, nlast=1, free=2, lag_ok=1, w_ok=1, p_ok=1, fr_ok=1, go=1,
                           a_cnt=(A_FIFO_DEPTH + 1).bit_length())
        F = {g: SimpleNamespace(**{f: Signal(w, name=f"iss_{g}_{f}") for f, w in flag_widths.items()})
             for g in ("i", "l")}
        fi, fl = F["i"], F["l"]

        # ---------------------------------------------------------------- activation buffer
        # one memory per lane, each read at its own copy of the prefetch address ``li`` (below)
        a_wps, a_rps = [], []
        for r in range(R):
            abuf = m.submodules[f"abuf{r}"] = Memory(shape=16, depth=self._a_depth, init=[], attrs=_NO_RW_CHECK)
            a_wps.append(abuf.write_port())
            a_rps.append(abuf.read_port())
        a_wr = Signal(range(self._a_depth + 1))
        a_m = Signal(16)
        a_krem = Signal(17)  # K − k0 of the K tile being written
        # a_left = words − a_wr, a register, and a_more = (a_left != 0) as a flag beside it
        # (timing: a.ready and the buffer's write enables test it)
        a_left = Signal(range(self._a_depth + 1))
        a_more = Signal()
        # a_kval[r] = lane r < a_krem (lane r of this K tile is inside K), a register updated with
        # a_krem (timing: the compares of a_krem fed the write-data registers' resets)
        a_kval = Signal(R)
        # a_mend = (a_m == m_last), a flag updated with a_m (timing: the compare sat between the
        # beat's accept and the K-tile step of a_krem and a_kval)
        a_mend = Signal()
        with m.If(start_a):
            m.d.sync += [a_wr.eq(0), a_m.eq(0), a_mend.eq(m_one), a_krem.eq(cmd.k), a_left.eq(words),
                         a_more.eq(words != 0), a_kval.eq(Cat(*_lanes_below(cmd.k, R)))]
        a_take = Signal()
        a_in = Signal()     # a beat is written
        m.d.comb += [a_take.eq(runs["a"] & a_more), self.a.ready.eq(a_take),
                     a_in.eq(a_take & self.a.valid)]
        # A beat is written one cycle after it was taken, from registers of each lane's own
        # (address, enable, data) (timing: one address and enable net reached the block RAMs of
        # all lanes, spread over the die's block-RAM rows; KEEP_CHAINS "a_wp*"). ``a_in_q`` is
        # a_in one cycle late: the prefetch counts a word as written with it.
        a_in_q = Signal()
        m.d.sync += a_in_q.eq(a_in)
        for r in range(R):
            wa = Signal.like(a_wr, name=f"a_wp{r}_addr")
            we = Signal(name=f"a_wp{r}_en")
            wd = Signal(16, name=f"a_wp{r}_data", reset_less=True)
            m.d.sync += [wa.eq(a_wr), we.eq(a_in), wd.eq(Mux(a_kval[r], self.a.payload[r], 0))]
            m.d.comb += [a_wps[r].addr.eq(wa), a_wps[r].en.eq(we), a_wps[r].data.eq(wd)]
        with m.If(a_in):
            m.d.sync += [a_wr.eq(a_wr + 1), a_left.eq(a_left - 1), a_more.eq(a_left != 1)]
            with m.If(a_mend):
                # the next K tile's mask: lane r < a_krem − R, that is a_krem > r + R
                m.d.sync += [a_m.eq(0), a_mend.eq(m_one), a_krem.eq(a_krem - R),
                             a_kval.eq(Cat(*_lanes_below(a_krem, 2 * R)[R:]))]
            with m.Else():
                m.d.sync += [a_m.eq(a_m + 1), a_mend.eq(a_m == m_last2)]

        # ---------------------------------------------------------------- activation prefetch
        # The buffer is read ahead of the issue, in issue order (word kt·M + m of each N tile:
        # words 0 … words − 1, then again from 0 for the next N tile), into a FIFO of
        # A_FIFO_DEPTH words per lane. The issue tests only that the FIFO holds a word (its
        # a_nz flags); the reads have control of their own: ``pf`` reads word li when it has been
        # written (anz: words written − li != 0) and a FIFO place is free (room). A place is
        # counted free again one cycle after the issue took its word (go, registered), so occ never
        # undercounts; a place is taken from its read to that cycle, so five places carry one
        # word per cycle. (timing: the issue's ``go`` used to steer the read addresses of all lanes,
        # spread over the block-RAM rows, and the count of words written ahead of them in the
        # same cycle.) The memories' outputs are registered (a_mq*) before the FIFO (timing: a
        # block RAM's clock-to-output delay leaves no room for a route to the FIFO).
        # A word taken from ``a`` in cycle t can issue in cycle t + 5.
        # The control exists in R + 1 copies, which take the same inputs and hold the same values
        # in every cycle: one per lane, beside its memory, steering that lane's read address and
        # FIFO places, and one beside the issue, whose pf_q2 feeds the a_cnt (timing: one
        # ``pf`` steered the read addresses and FIFOs of all lanes, spread over the block-RAM
        # rows, and the write count beside it; KEEP_CHAINS "a_pf*", "start_*").
        def prefetch_control(prefix, start, written, go):
            """One copy; ``written``: a word is written into the buffer in this cycle; ``go``: a
            register, the issue took a word in the previous cycle. Returns (pf, pf_q2, pf_one)."""
            def sig(name, shape=1, **kwargs):
                return Signal(shape, name=f"{prefix}_{name}", **kwargs)
            pf = sig("rd")                                  # read word li in this cycle
            pf_q = sig("q")                                 # the word is on the memories' outputs
            pf_q2 = sig("q2")                               # ... and in the a_mq registers
            ahead = sig("ahead", range(self._a_depth + 1))  # words written − li
            anz = sig("anz")                                # ahead != 0
            left = sig("left", range(self._a_depth + 1))    # words − li
            one = sig("one")                                # left == 1: li is the last word
            occ = sig("occ", range(A_FIFO_DEPTH + 1))       # places taken (read, not yet freed)
            room = sig("room")                              # occ != A_FIFO_DEPTH
            m.d.comb += pf.eq(anz & room)
            m.d.sync += [pf_q.eq(pf & ~start), pf_q2.eq(pf_q & ~start)]
            with m.If(start):
                m.d.sync += [ahead.eq(0), anz.eq(0), left.eq(words), one.eq(m_one & k_one),
                             occ.eq(0), room.eq(1)]
            with m.Else():
                with m.If(pf):
                    with m.If(one):
                        m.d.sync += [left.eq(words), one.eq(m_one & k_one)]
                    with m.Else():
                        m.d.sync += [left.eq(left - 1), one.eq(left == 2)]
                # word words − 1 was written before it was read: at the wrap all words are written
                with m.If(pf & one):
                    m.d.sync += [ahead.eq(words), anz.eq(1)]
                with m.Elif(written & ~pf):
                    m.d.sync += [ahead.eq(ahead + 1), anz.eq(1)]
                with m.Elif(~written & pf):
                    m.d.sync += [ahead.eq(ahead - 1), anz.eq(ahead != 1)]
                with m.If(pf & ~go):
                    m.d.sync += [occ.eq(occ + 1), room.eq(occ != A_FIFO_DEPTH - 1)]
                with m.Elif(~pf & go):
                    m.d.sync += [occ.eq(occ - 1), room.eq(1)]
            return pf, pf_q2, one

        # the copy
        go_pf = Signal(name="a_pfi_go")     # go, one cycle late
        m.d.sync += go_pf.eq(fi.go)
        _, pf_q2, _ = prefetch_control("a_pfi", start_pf, a_in_q, go_pf)
        # each lane's copy: its read address li (the lane memory's own), its registered memory
        # output a_mq and its FIFO of registers, written at a one-hot place
        a_mq = [Signal(16, name=f"a_mq{r}", reset_less=True) for r in range(R)]
        a_fifo = [[Signal(16, name=f"a_fifo{r}_{i}", reset_less=True) for i in range(A_FIFO_DEPTH)]
                  for r in range(R)]
        for r in range(R):
            start_r = Signal(name=f"start_pf{r}")
            go_r = Signal(name=f"a_pf{r}_go")
            li = Signal(range(self._a_depth), name=f"a_pf{r}_li")
            wsel = Signal(A_FIFO_DEPTH, init=1, name=f"a_pf{r}_wsel")
            m.d.sync += [start_r.eq(start_set), go_r.eq(fl.go)]
            pf_r, pf_q2_r, one_r = prefetch_control(f"a_pf{r}", start_r, a_wps[r].en, go_r)
            m.d.comb += a_rps[r].addr.eq(li)
            m.d.sync += a_mq[r].eq(a_rps[r].data)
            with m.If(start_r):
                m.d.sync += [li.eq(0), wsel.eq(1)]
            with m.Else():
                with m.If(pf_r):
                    m.d.sync += li.eq(Mux(one_r, 0, li + 1))
                with m.If(pf_q2_r):
                    m.d.sync += wsel.eq(wsel.rotate_left(1))
            for i in range(A_FIFO_DEPTH):
                with m.If(pf_q2_r & wsel[i]):
                    m.d.sync += a_fifo[r][i].eq(a_mq[r])

        # ---------------------------------------------------------------- parameters
        p_bias = [Signal(data.ArrayLayout(32, C), name=f"p_bias{b}") for b in range(2)]
        p_mult = [Signal(data.ArrayLayout(32, C), name=f"p_mult{b}") for b in range(2)]
        p_shift = [Signal(data.ArrayLayout(8, C), name=f"p_shift{b}") for b in range(2)]
        p_slot = Signal()
        p_nrem = Signal(17)
        p_active = Signal()
        requant_err = Signal()
        with m.If(start_p):
            m.d.sync += [p_slot.eq(0), p_nrem.eq(cmd.n), p_active.eq(need_p)]
        p_take = Signal()
        m.d.comb += [p_take.eq(runs["p"] & p_active & ~fi.p_full.bit_select(p_slot, 1)),
                     self.p.ready.eq(p_take)]
        # A beat is copied into its slot one cycle after it was taken: every cycle p_in registers
        # the payload, and per-column load strobes (one register per slot and column) enable the
        # slot's registers (timing: one enable net would reach the 72·C flip-flops of a slot
        # across the die; bench.fpga keeps the copies apart, KEEP_CHAINS "p_ld*"). The slot is
        # marked full at once: its first reader, the bias select of a row issued from the next
        # cycle on, samples it two cycles after the issue.
        p_in = Signal(param_layout(C), reset_less=True)
        m.d.sync += p_in.eq(self.p.payload)
        # The int8 requantization's parameters are checked on p_in, one cycle after the take,
        # column by column, into a flag per column (p_err*) beside that column's slot registers,
        # and requant_err is their OR one cycle later (timing: one check of the stream's payload,
        # and then one of p_in, gathered the compares and tests of all C columns into one
        # flag across the die). p_nval[c] = lane c < p_nrem, a register updated with p_nrem;
        # p_inval[c] is lane c of a beat taken in the cycle before, for an int8 output only.
        # ``finish`` reads the flag long after.
        p_nval = Signal(C)
        p_inval = Signal(C)
        m.d.sync += p_inval.eq(Mux(p_take & self.p.valid & (cmd.out_fmt == OutFormat.INT8), p_nval, 0))
        with m.If(start_p):
            m.d.sync += p_nval.eq(Cat(*_lanes_below(cmd.n, C)))
        with m.Elif(p_take & self.p.valid):
            m.d.sync += p_nval.eq(Cat(*_lanes_below(p_nrem, 2 * C)[C:]))
        p_err = [Signal(name=f"p_err{c}") for c in range(C)]
        for c in range(C):
            with m.If(start_p):
                m.d.sync += p_err[c].eq(0)
            with m.Elif(p_inval[c] & requant_params_bad(p_in.multiplier[c], p_in.shift[c])):
                m.d.sync += p_err[c].eq(1)
        m.d.sync += requant_err.eq(Cat(*p_err).any())
        for b in range(2):
            for c in range(C):
                ld = Signal(name=f"p_ld{b}_{c}")
                m.d.sync += ld.eq(p_take & self.p.valid & (p_slot == b))
                with m.If(ld):
                    m.d.sync += [p_bias[b][c].eq(p_in.bias[c]), p_mult[b][c].eq(p_in.multiplier[c]),
                                 p_shift[b][c].eq(p_in.shift[c])]
        with m.If(p_take & self.p.valid):
            m.d.sync += [p_slot.eq(~p_slot), p_nrem.eq(p_nrem - C)]
            with m.If(p_nrem <= C):
                m.d.sync += p_active.eq(0)

        # ---------------------------------------------------------------- weight loader
        stg = Signal(data.ArrayLayout(16, R * C))
        staged = Signal()
        w_hold = [Signal(range(arr.weight_hold + 2), name=f"w_hold{b}") for b in range(2)]
        w_free = Signal(2, init=0b11)           # w_hold[b] == 0, a register (timing: gates commit)
        l_bank = Signal()
        l_krem = Signal(17)
        l_nrem = Signal(17)
        l_active = Signal()
        l_r = Signal(range(R + 1))                # row beat (row orientation)
        l_c = Signal(range(C + 1))                # column (transposed)
        l_j = Signal(range(J + 1))                # chunk of a column (transposed)
        with m.If(start_w):
            m.d.sync += [staged.eq(0), l_bank.eq(0), l_krem.eq(cmd.k), l_nrem.eq(cmd.n),
                         l_active.eq(1), l_r.eq(0), l_c.eq(0), l_j.eq(0), w_hold[0].eq(0), w_hold[1].eq(0),
                         w_free.eq(0b11)]
        # After a commit the array samples the staged tile for arr.load_cycles more cycles (its
        # control chain); the staging register is cleared in the last of them, and the loader
        # takes no beat until then.
        l_wait = Signal(range(arr.load_cycles + 1))
        l_idle = Signal(init=1)                 # l_wait == 0, a register
        with m.If(~l_idle):
            m.d.sync += [l_wait.eq(l_wait - 1), l_idle.eq(l_wait == 1)]
        # the clear and the orientation reach the staging register through one register per row
        # of it (timing: each would otherwise drive all R·C·16 bits; bench.fpga keeps the copies
        # apart, KEEP_CHAINS "stg_row*"); the clear comes in the last of those cycles
        stg_clr = [Signal(name=f"stg_row{r}_clr") for r in range(R)]
        stg_tr = [Signal(name=f"stg_row{r}_tr") for r in range(R)]
        for r in range(R):
            # (the clear also comes with ``start``: stg_clr is set from start_set)
            m.d.sync += [stg_clr[r].eq((l_wait == 2) | start_set), stg_tr[r].eq(cmd.w_transposed)]
            with m.If(stg_clr[r]):
                for c in range(C):
                    m.d.sync += stg[r * C + c].eq(0x8000)
        l_take = Signal()
        m.d.comb += [l_take.eq(runs["w"] & l_active & ~staged & l_idle), self.w.ready.eq(l_take)]
        lk_valid = _lanes_below(l_krem, R)
        ln_valid = _lanes_below(l_nrem, C)
        # A beat is written into the staging register one cycle after it was taken, from
        # registers: the beat and one write enable per staging word, (r, c) (timing: the staging
        # register spans the array; its enables must not start from the loader's logic, nor one
        # enable register reach a whole row or column of it; KEEP_CHAINS "wb_en*"). Row
        # orientation: the beat fills row l_r, the columns inside N. Transposed: it fills
        # column l_c, the rows of chunk l_j inside K.
        wb_data = Signal.like(self.w.payload, reset_less=True)
        m.d.sync += wb_data.eq(self.w.payload)
        for r in range(R):
            for c in range(C):
                wb_en = Signal(name=f"wb_en{r}_{c}")
                m.d.sync += wb_en.eq(l_take & self.w.valid
                                     & Mux(cmd.w_transposed, (l_c == c) & (l_j == r // C) & lk_valid[r],
                                           (l_r == r) & ln_valid[c]))
                with m.If(wb_en):
                    m.d.sync += stg[r * C + c].eq(Mux(stg_tr[r], wb_data[r % C], wb_data[c]))
        with m.If(l_take & self.w.valid):
            with m.If(cmd.w_transposed):
                with m.If(l_j == J - 1):
                    m.d.sync += [l_j.eq(0), l_c.eq(l_c + 1)]
                    with m.If((l_c == C - 1) | (l_c + 1 >= l_nrem)):
                        m.d.sync += [staged.eq(1), l_c.eq(0)]
                with m.Else():
                    m.d.sync += l_j.eq(l_j + 1)
            with m.Else():
                m.d.sync += l_r.eq(l_r + 1)
                with m.If((l_r == R - 1) | (l_r + 1 >= l_krem)):
                    m.d.sync += [staged.eq(1), l_r.eq(0)]
        commit = Signal()
        m.d.comb += commit.eq(runs["w"] & staged & ~fi.w_full.bit_select(l_bank, 1)
                              & w_free.bit_select(l_bank, 1))
        m.d.comb += [arr.w_tile.eq(stg), arr.w_load.eq(commit), arr.w_bank.eq(l_bank)]
        with m.If(commit):
            m.d.sync += [staged.eq(0), l_bank.eq(~l_bank),
                         l_wait.eq(arr.load_cycles), l_idle.eq(0)]
            with m.If(l_krem <= R):
                m.d.sync += [l_krem.eq(cmd.k), l_nrem.eq(l_nrem - C)]
                with m.If(l_nrem <= C):
                    m.d.sync += l_active.eq(0)
            with m.Else():
                m.d.sync += l_krem.eq(l_krem - R)

        # ---------------------------------------------------------------- accumulator banks
        acc = m.submodules.acc = Memory(shape=data.ArrayLayout(32, C), depth=2 << AB, init=[], attrs=_NO_RW_CHECK)
        acc_wp = acc.write_port()
        acc_rp = acc.read_port()        # issue: accumulator so far
        acc_dp = acc.read_port()        # drain: final values
        wr_cnt = [Signal(range(self._a_depth + 1), name=f"wr_cnt{b}") for b in range(2)]
        i_done = Signal(2)               # bank: all rows of its N tile issued

        # the array's output valid and tag in a register per user (_OUT_COPIES; timing: one
        # register reached the accumulator's block RAMs, the write counters and both copies of
        # the issue flags, up to 91 columns apart)
        o_valid = dict(zip(_OUT_COPIES, [arr.o_valid, *arr.o_valid_x], strict=True))
        o_tag = dict(zip(_OUT_COPIES, [arr.o_tag, *arr.o_tag_x], strict=True))
        m.d.comb += [acc_wp.addr.eq(o_tag["acc"][:AB + 1]), acc_wp.data.eq(arr.result),
                     acc_wp.en.eq(o_valid["acc"])]

        # ---------------------------------------------------------------- issue
        # aliases: the "i" copy of the flags (above)
        i_active, i_first, i_end, i_klast = fi.active, fi.first, fi.end, fi.klast
        i_kt0, i_bank, i_tw, go = fi.kt0, fi.bank, fi.tw, fi.go
        i_m = Signal(16)
        i_krem = Signal(17)
        i_nrem = Signal(17)
        with m.If(start_i):
            m.d.sync += [i_m.eq(0), i_krem.eq(cmd.k), i_nrem.eq(cmd.n), i_done.eq(0)]
            for f in F.values():
                m.d.sync += [f.first.eq(1), f.end.eq(m_one), f.klast.eq(k_one), f.nlast.eq(n_one),
                             f.active.eq(1), f.kt0.eq(1), f.bank.eq(0), f.tw.eq(0)]
        # read after write: a pass over K tile kt ≥ 1 reads accumulator row m, which the pass over
        # kt − 1 wrote. Row li of the N tile may issue once wr_cnt[bank] + M > li. The engine
        # keeps lag = li − wr_cnt[bank] in a register instead (+1 per issued row, −1 per row
        # written to the bank; 0 from an N tile's end, while its next first pass ignores it), so
        # the test is one comparison with a register (timing: this gates the issue of every row).
        # lag < M is itself a flag (lag_ok): lag moves by one per cycle, so its next value's test
        # is chosen from three compares of the current one.
        lag = Signal(range(self._a_depth + 1))
        # i_active implies running (both begin after ``start``; i_active ends before the drain,
        # and running only when the drain has finished), so go does not test running
        wr_cur = {}
        for g, f in F.items():
            wr_cur[g] = Signal(name=f"iss_{g}_wr_cur")
            m.d.comb += [
                wr_cur[g].eq(o_valid[g] & (o_tag[g][AB] == f.bank)),
                f.go.eq(f.active & f.w_ok & f.a_nz & f.p_ok & (~(f.kt0 & f.first) | f.fr_ok)
                        & (f.kt0 | f.lag_ok)),
            ]
        # the issue conditions of the "i" copy, for the stall causes
        c_w = fi.w_ok
        c_a = fi.a_nz
        c_p = fi.p_ok
        c_bank = ~(i_kt0 & i_first) | fi.fr_ok
        m.d.comb += [acc_rp.addr.eq(Cat(i_m[:AB], i_bank))]

        # the MAC count of an issued row is added four cycles later (timing: the tile's K and N
        # extents, zero for a cycle without an issue, then their product in a DSP block with its
        # own operand and product registers, then the 48-bit add, one register apart)
        kv_q, nv_q, mg_q = Signal(8), Signal(8), Signal()
        m.d.sync += [kv_q.eq(Mux(go, Mux(i_krem >= R, R, i_krem[:7]), 0)),
                     nv_q.eq(Mux(go, Mux(i_nrem >= C, C, i_nrem[:7]), 0)), mg_q.eq(go)]
        mac_mul = m.submodules.mac_mul = RegisteredMultiplier(8, 8, dsp=self._dsp)
        macs_q = Signal(14)
        m.d.comb += [mac_mul.a.eq(kv_q.as_signed()), mac_mul.b.eq(nv_q.as_signed())]
        m.d.sync += macs_q.eq(mac_mul.p[:14])
        with m.If(macs_q.any()):    # never in the cycle that clears the counters
            m.d.sync += counters["macs"].eq(counters["macs"] + macs_q)
        # busy and stall cycles are counted one cycle late too, from registered causes (timing:
        # the causes are the issue conditions; the counters are 48-bit adders)
        st_q = Signal(data.StructLayout({"weight": 1, "input": 1, "output": 1, "dependency": 1}))
        m.d.sync += st_q.eq(0)
        with m.If(mg_q):
            m.d.sync += counters["busy"].eq(counters["busy"] + 1)
        for name in ("weight", "input", "output", "dependency"):
            with m.If(getattr(st_q, name)):
                m.d.sync += counters[f"stall_{name}"].eq(counters[f"stall_{name}"] + 1)

        s1_valid = Signal()
        s1_kt0 = Signal()
        s1_bank = Signal()
        s1_tw = Signal()
        s1_m = Signal(AB)
        m.d.sync += [s1_valid.eq(go), s1_kt0.eq(i_kt0), s1_bank.eq(i_bank), s1_tw.eq(i_tw),
                     s1_m.eq(i_m[:AB])]
        # s2 registers the memories' outputs (a block RAM's clock-to-output delay leaves no
        # room for the bias multiplexer); a row enters the array two cycles after it was issued
        s2_valid, s2_bank, s2_tw = Signal(), Signal(), Signal()
        s2_m = Signal(AB)
        a_q = Signal(data.ArrayLayout(16, R), reset_less=True)
        acc_q = Signal.like(acc_rp.data, reset_less=True)
        m.d.sync += [s2_valid.eq(s1_valid), s2_bank.eq(s1_bank), s2_tw.eq(s1_tw),
                     s2_m.eq(s1_m), acc_q.eq(acc_rp.data)]
        # the issue takes the FIFO's words in order at a_rp (one-hot); a_q reads the word a
        # cycle later through a copy of the place per lane (a_rd*: the entry is not written
        # again before the registered go has freed it). One-hot, the read is an AND-OR of the
        # words (timing: a binary place put its decode before a net across the lanes' rows).
        a_rp = Signal(A_FIFO_DEPTH, init=1)
        with m.If(start_i):
            m.d.sync += a_rp.eq(1)
        with m.Elif(go):
            m.d.sync += a_rp.eq(a_rp.rotate_left(1))
        for r in range(R):
            rd = Signal(A_FIFO_DEPTH, init=1, name=f"a_rd{r}")
            word = reduce(operator.or_, (a_fifo[r][i] & rd[i].replicate(16) for i in range(A_FIFO_DEPTH)))
            m.d.sync += [rd.eq(a_rp), a_q[r].eq(word)]
        # The partial sums entering the array: the bias of the row's bank or zero (first K tile),
        # else the accumulator so far. Each column has its own three select registers, set from
        # the s1 values (timing: one select net would reach all 32·C multiplexers across the
        # array's width; bench.fpga keeps the copies apart, KEEP_CHAINS "psum_sel*").
        for n in range(C):
            sel_acc, sel_b0, sel_b1 = (Signal(name=f"psum_sel{n}_{what}") for what in ("acc", "b0", "b1"))
            m.d.sync += [sel_acc.eq(~s1_kt0), sel_b0.eq(s1_kt0 & cmd.has_bias & ~s1_bank),
                         sel_b1.eq(s1_kt0 & cmd.has_bias & s1_bank)]
            m.d.comb += arr.psum[n].eq((acc_q[n] & sel_acc.replicate(32)) | (p_bias[0][n] & sel_b0.replicate(32))
                                       | (p_bias[1][n] & sel_b1.replicate(32)))
        m.d.comb += [arr.valid.eq(s2_valid), arr.a.eq(a_q),
                     arr.bank.eq(s2_tw), arr.tag.eq(Cat(s2_m, s2_bank))]

        with m.If(start_l | (fl.go & fl.end & fl.klast)):
            m.d.sync += lag.eq(0)
        with m.Elif(fl.go & ~wr_cur["l"]):
            m.d.sync += lag.eq(lag + 1)
        with m.Elif(~fl.go & wr_cur["l"]):
            m.d.sync += lag.eq(lag - 1)
        for g, f in F.items():
            with m.If(starts[g]):
                m.d.sync += [f.a_nz.eq(0), f.a_cnt.eq(0)]
            with m.Elif(pf_q2 & ~f.go):
                m.d.sync += [f.a_nz.eq(1), f.a_cnt.eq(f.a_cnt + 1)]
            with m.Elif(~pf_q2 & f.go):
                m.d.sync += [f.a_nz.eq(f.a_cnt != 1), f.a_cnt.eq(f.a_cnt - 1)]
            with m.If(starts[g] | (f.go & f.end & f.klast)):
                m.d.sync += f.lag_ok.eq(1)      # 0 < M
            with m.Elif(f.go & ~wr_cur[g]):
                m.d.sync += f.lag_ok.eq(lag < m_last)                       # lag + 1 < M
            with m.Elif(~f.go & wr_cur[g]):
                m.d.sync += f.lag_ok.eq((lag != 0) & (lag <= cmd.m))        # lag − 1 < M

        for b in range(2):
            with m.If(~w_free[b]):
                m.d.sync += [w_hold[b].eq(w_hold[b] - 1), w_free[b].eq(w_hold[b] == 1)]
        for f in F.values():
            with m.If(f.go):
                with m.If(f.end):
                    m.d.sync += [f.tw.eq(~f.tw), f.first.eq(1),
                                 f.end.eq(m_one)]
                    with m.If(f.klast):
                        m.d.sync += [f.klast.eq(k_one), f.kt0.eq(1), f.bank.eq(~f.bank),
                                     f.nlast.eq(i_nrem <= 2 * C)]
                        with m.If(f.nlast):
                            m.d.sync += f.active.eq(0)
                    with m.Else():
                        m.d.sync += [f.kt0.eq(0), f.klast.eq(i_krem <= 2 * R)]
                with m.Else():
                    m.d.sync += [f.first.eq(0), f.end.eq(i_m == m_last2)]
        with m.If(go):
            with m.If(i_end):
                m.d.sync += i_m.eq(0)
                for b in range(2):
                    with m.If(i_tw == b):
                        m.d.sync += [w_hold[b].eq(Mux(bf16, arr.weight_hold, arr.int8_weight_hold) + 1),
                                     w_free[b].eq(0)]      # + 1: the s2 register
                with m.If(i_klast):
                    m.d.sync += [i_done.bit_select(i_bank, 1).eq(1), i_krem.eq(cmd.k), i_nrem.eq(i_nrem - C)]
                with m.Else():
                    m.d.sync += i_krem.eq(i_krem - R)
            with m.Else():
                m.d.sync += i_m.eq(i_m + 1)
        with m.Elif(i_active):
            with m.If(~c_w):
                m.d.sync += st_q.weight.eq(1)
            with m.Elif(~c_a | ~c_p):
                m.d.sync += st_q.input.eq(1)
            with m.Elif(~c_bank):
                m.d.sync += st_q.output.eq(1)
            with m.Else():
                m.d.sync += st_q.dependency.eq(1)
        # write counts (the first row of an N tile clears its bank's count: no write to that
        # bank can be in flight then, its previous N tile has been drained)
        # wr_done[b] = (wr_cnt[b] == words), kept as a register (timing: it gates the drain)
        wr_done = Signal(2)
        with m.If(start_i):
            m.d.sync += wr_done.eq(0)
        for b in range(2):
            with m.If(go & i_kt0 & i_first & (i_bank == b)):
                m.d.sync += [wr_cnt[b].eq(0), wr_done[b].eq(0)]
            with m.Elif(o_valid["cnt"] & (o_tag["cnt"][AB] == b)):
                m.d.sync += [wr_cnt[b].eq(wr_cnt[b] + 1), wr_done[b].eq(wr_cnt[b] + 1 == words)]

        # ---------------------------------------------------------------- drain
        d_active = Signal()
        d_bank = Signal()
        d_m = Signal(16)
        d_nrem = Signal(17)
        pending = Signal(range(self._fifo_depth + 1))
        with m.If(start_d):
            m.d.sync += [d_active.eq(1), d_bank.eq(0), d_m.eq(0), d_nrem.eq(cmd.n)]
        d_ready = Signal()
        m.d.comb += d_ready.eq(i_done.bit_select(d_bank, 1) & wr_done.bit_select(d_bank, 1))
        d_go = Signal()
        m.d.comb += d_go.eq(runs["d"] & d_active & d_ready & (pending < self._fifo_depth))
        m.d.comb += acc_dp.addr.eq(Cat(d_m[:AB], d_bank))
        d_last = Signal()
        d_end = Signal()    # d_m == M − 1, a register
        d_free = Signal()   # one cycle: bank d_bank is drained (free, its parameter slot empty)
        m.d.comb += [d_last.eq(d_end & (d_nrem <= C)), d_free.eq(d_go & d_end)]
        with m.If(start_d):
            m.d.sync += d_end.eq(m_one)
        with m.If(d_go):
            with m.If(d_end):
                m.d.sync += [d_m.eq(0), d_end.eq(m_one), i_done.bit_select(d_bank, 1).eq(0),
                             d_bank.eq(~d_bank), d_nrem.eq(d_nrem - C)]
                with m.If(d_nrem <= C):
                    m.d.sync += d_active.eq(0)
            with m.Else():
                m.d.sync += [d_m.eq(d_m + 1), d_end.eq(d_m == m_last2)]
        with m.Elif(runs["d"] & ~i_active & d_active & d_ready):
            m.d.sync += st_q.output.eq(1)

        # the vectors w_full, p_full, free and the issue flags w_ok, p_ok, fr_ok, their bits at
        # the next tw or bank, from one next value each. w_full[b]: set by a commit to b, cleared
        # by the end of a K tile issued from b. p_full[b]: set by a parameter beat into slot b,
        # cleared when bank b is drained. free[b]: cleared by the first row of an N tile issued
        # into b, set when b is drained. (A set and a clear never meet in one bit.)
        for g, f in F.items():
            tile_end = f.go & f.end
            ntile_end = tile_end & f.klast
            w_next = [(f.w_full[b] | (commit & (l_bank == b))) & ~(tile_end & (f.tw == b)) for b in range(2)]
            p_next = [(f.p_full[b] | (p_take & self.p.valid & (p_slot == b))) & ~(d_free & (d_bank == b))
                      for b in range(2)]
            fr_next = [(f.free[b] & ~(f.go & f.kt0 & f.first & (f.bank == b))) | (d_free & (d_bank == b))
                       for b in range(2)]
            tw_next, bank_next = f.tw ^ tile_end, f.bank ^ ntile_end
            with m.If(starts[g]):
                m.d.sync += [f.w_full.eq(0), f.p_full.eq(0), f.free.eq(0b11),
                             f.w_ok.eq(0), f.p_ok.eq(~need_p), f.fr_ok.eq(1)]
            with m.Else():
                m.d.sync += [f.w_full.eq(Cat(*w_next)), f.p_full.eq(Cat(*p_next)), f.free.eq(Cat(*fr_next)),
                             f.w_ok.eq(Mux(tw_next, w_next[1], w_next[0])),
                             f.p_ok.eq(~need_p | Mux(bank_next, p_next[1], p_next[0])),
                             f.fr_ok.eq(Mux(bank_next, fr_next[1], fr_next[0]))]

        # output stage: d1 (memory data) → stage 0 → the requantization's stages → FIFO
        d1_valid, d1_last, d1_slot = Signal(), Signal(), Signal()
        m.d.sync += [d1_valid.eq(d_go), d1_last.eq(d_last), d1_slot.eq(d_bank)]
        # The output format: each column has its own three select registers, set from the
        # command's format (timing: one command register reached the 32·C output multiplexers
        # across the die; KEEP_CHAINS "out_sel*"). They follow ``cmd`` one cycle late; the
        # command register changes only at an accept, after the previous command's last row.
        sels = []
        for c in range(C):
            sel_q, sel_bf, sel_raw = (Signal(name=f"out_sel{c}_{what}") for what in ("q", "bf", "raw"))
            m.d.sync += [sel_q.eq(cmd.out_fmt == OutFormat.INT8), sel_bf.eq(cmd.out_fmt == OutFormat.BF16),
                         sel_raw.eq((cmd.out_fmt != OutFormat.INT8) & (cmd.out_fmt != OutFormat.BF16))]
            sels.append((sel_q, sel_bf, sel_raw))
        # stage 0 registers the accumulator memory's output (a block RAM's clock-to-output
        # delay leaves no room for logic after it) with the row's parameters: the requantizer's
        # input. The other formats pass the accumulators through it unchanged, with multiplier
        # 256 and shift 8: int32/fp32 results come from its pass-through register and the bf16
        # conversion reads its early pass-through (hdl.requant).
        rq = m.submodules.requant = self._requant
        rq_in = Signal(requant_input_layout(C, 1), reset_less=True)
        s0_valid = Signal()
        m.d.sync += [rq_in.acc.eq(acc_dp.data), rq_in.tag.eq(d1_last), s0_valid.eq(d1_valid)]
        for c in range(C):
            sel_q = sels[c][0]
            m.d.sync += [rq_in.multiplier[c].eq(Mux(sel_q, Mux(d1_slot, p_mult[1][c], p_mult[0][c]), PASS_MULTIPLIER)),
                         rq_in.shift[c].eq(Mux(sel_q, Mux(d1_slot, p_shift[1][c], p_shift[0][c]), PASS_SHIFT))]
        m.d.comb += [rq.i.payload.eq(rq_in), rq.i.valid.eq(s0_valid)]
        assert rq.early_lead == self._cvt_latency
        out = Signal(result_layout(C))
        for c in range(C):
            core = m.submodules[f"to_bf16_{c}"] = Fp32ToBf16Core(stages=_CVT_STAGES)
            m.d.comb += [core.en.eq(1), core.a.eq(rq.early[c])]
            sel_q, sel_bf, sel_raw = sels[c]
            q_ext = Signal(32, name=f"out_q{c}")
            m.d.comb += [q_ext.eq(rq.o.payload.q[c]),
                         out.data[c].eq((q_ext & sel_q.replicate(32)) | (core.y & sel_bf.replicate(16))
                                        | (rq.o.payload.passthrough[c] & sel_raw.replicate(32)))]
        m.d.comb += out.last.eq(rq.o.payload.tag)
        q_valid = rq.o.valid

        fifo = m.submodules.out_fifo = SyncFIFOBuffered(width=len(out.as_value()), depth=self._fifo_depth)
        m.d.comb += [fifo.w_data.eq(out), fifo.w_en.eq(q_valid),
                     self.o.valid.eq(fifo.r_rdy), self.o.payload.eq(fifo.r_data), fifo.r_en.eq(self.o.ready)]
        o_fire = Signal()
        m.d.comb += o_fire.eq(self.o.valid & self.o.ready)
        with m.If(start_d):
            m.d.sync += pending.eq(0)
        with m.Elif(d_go & ~o_fire):
            m.d.sync += pending.eq(pending + 1)
        with m.Elif(~d_go & o_fire):
            m.d.sync += pending.eq(pending - 1)

        m.d.comb += finish.eq(running & ~d_active & (pending == 0))
        with m.If(finish & requant_err):
            m.d.sync += code.eq(Status.BAD_REQUANT)
        # last, so that the counters' clear overrides their increments (none happens in SETUP1
        # but ``cycles``'s, which the 1 accounts for)
        for name, c in counters.items():
            with m.If(cnt_clr[name]):
                m.d.sync += c.eq(1 if name == "cycles" else 0)
        return m
