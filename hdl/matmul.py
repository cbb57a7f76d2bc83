"""Matmul engine: ``C = A·W (+ bias)`` for any M, K, N on one R×C int8/bf16 systolic array.

The full description (ports, command format, stream orders, latencies, counters, error codes)
is docs/matmul.md. The engine is wiring of its parts, each a component with its own unit tests:

* :class:`~hdl.matmul_seq.CommandSequencer`: ``cmd`` → checks, sizes, start → ``resp``;
* :class:`~hdl.matmul_abuf.ActivationBuffer`: ``a`` → lane memories → prefetch FIFO;
* :class:`~hdl.matmul_wload.WeightLoader`: ``w`` → the weight slots of the array's PEs;
* :class:`~hdl.matmul_params.ParamSlots`: ``p`` → two slots of bias / multiplier / shift;
* :class:`~hdl.matmul_issue.IssueControl`: the issue decision and the rows into the array;
* :class:`~hdl.systolic.SystolicArray`;
* :class:`~hdl.matmul_acc.AccumulatorDrain`: accumulator banks, drain, output stage
  (:class:`~hdl.requant.Requantizer`, fp32 → bf16) → ``o``.
"""

from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .config import ChipConfig
from .matmul_abuf import ActivationBuffer
from .matmul_acc import AccumulatorDrain
from .matmul_common import (
    MAX_INTERLEAVE,
    command_layout,
    engine_events_layout,
    param_layout,
    response_layout,
    result_layout,
)
from .matmul_issue import IssueControl
from .matmul_params import ParamSlots
from .matmul_seq import CommandSequencer
from .matmul_wload import WeightLoader
from .pipeline import check_ints
from .systolic import SystolicArray

__all__ = ["MatmulEngine", "command_layout", "param_layout", "result_layout", "response_layout",
           "engine_events_layout"]

# users of the array's output valid and tag, one register copy each: the accumulator's write
# port, the issue flags' two copies ("i", "l") and the accumulator banks' in-flight counts
_OUT_COPIES = ("acc", "i", "l", "cnt")


class MatmulEngine(wiring.Component):
    """Tiled int8/bf16 matrix multiply around a :class:`~hdl.systolic.SystolicArray`.

    Parameters
    ----------
    rows, cols : int
        Array size R (along K) and C (along N), 2..64 each.
    acc_depth : int
        Accumulator rows per bank: the largest M of one command, and of G·M with G = interleave
        + 1. Power of two, 2..65536.
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
        Weight tiles in order ``for group: for kt: for nt in group`` (groups of G = interleave +
        1 N tiles; ``for nt: for kt`` with interleave 0). Row orientation: beats r = 0..kv−1 carry
        ``W[kt·R + r, nt·C + c]`` in lane c; wide (``w_wide``, int8): beat j carries rows
        2j and 2j + 1 in the low and high bytes of the lanes. Transposed: for columns
        c = 0..nv−1, ceil(R/C) beats each, chunk j carrying ``W[kt·R + j·C + l, nt·C + c]`` in
        lane l. kv, nv are the valid rows/columns of the tile; lanes past K or N are ignored.
    p : In(stream.Signature(param_layout(C)))
        One beat per N tile when ``has_bias`` or the format is INT8; otherwise unused.
    o : Out(stream.Signature(result_layout(C)))
        One beat per (N tile, row m), N-tile-major: lane c is column ``nt·C + c`` as int32, int8
        (sign-extended), fp32 bits or bf16 bits (low half). ``last`` marks a command's last beat.
    resp : Out(stream.Signature(response_layout()))
        One beat per command: ``code`` (:class:`spec.codes.MatmulStatus`) and ``cycles``.
    busy : Out(1)
        A command is being executed.
    events : Out(engine_events_layout(R, C))
        What the engine does in each cycle (docs/conventions.md "Counters"; count them with
        :class:`hdl.counters.EventCounters`; docs/matmul.md lists the events).

    Busy rule: ``cmd.ready`` is 1 only while idle, so a command sent while the engine is busy
    waits in the stream and starts after the current one has sent its response; operand beats
    of a command are accepted only while that command runs.

    Latency: the last result row of a group of N tiles enters the output FIFO ``latency``
    cycles after the last row of its last K tile entered the array. Throughput: R·C MACs per
    cycle while operands keep up (a weight tile takes kv, ⌈kv/2⌉ or nv·ceil(R/C) beats, one per
    cycle, which overlap the M cycles of the tiles before), and at most one weight beat per
    cycle for M smaller than a tile's beats, when the interleave covers ``dependency_latency``
    (docs/matmul.md, "Schedule").
    """

    def __init__(self, *, rows, cols, acc_depth, a_depth, mul_stages=None, add_stages=None, dsp="generic"):
        check_ints(rows=(rows, 2, 64), cols=(cols, 2, 64), acc_depth=(acc_depth, 2, 65536),
                   a_depth=(a_depth, 2, 1 << 20))
        if acc_depth & (acc_depth - 1):
            raise ValueError(f"acc_depth must be a power of two, not {acc_depth}")
        self._rows, self._cols = rows, cols
        self._acc_depth, self._a_depth = acc_depth, a_depth
        self._acc_bits = ceil_log2(acc_depth)
        self._array = SystolicArray(rows=rows, cols=cols, tag_width=1 + self._acc_bits,
                                    mul_stages=mul_stages, add_stages=add_stages, dsp=dsp,
                                    out_copies=len(_OUT_COPIES))
        self._dsp = dsp
        self._seq = CommandSequencer(rows=rows, cols=cols, acc_depth=acc_depth, a_depth=a_depth, dsp=dsp)
        self._acc = AccumulatorDrain(rows=rows, cols=cols, acc_bits=self._acc_bits, a_depth=a_depth, dsp=dsp)
        super().__init__({
            "cmd": In(stream.Signature(command_layout())),
            "a": In(stream.Signature(data.ArrayLayout(16, rows))),
            "w": In(stream.Signature(data.ArrayLayout(16, cols))),
            "p": In(stream.Signature(param_layout(cols))),
            "o": Out(stream.Signature(result_layout(cols))),
            "resp": Out(stream.Signature(response_layout())),
            "busy": Out(1),
            "events": Out(engine_events_layout(rows, cols)),
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
        return self._array.latency + self._acc.output_latency

    @property
    def int8_latency(self):
        """``latency`` of int8 commands (the array's partial sums spend 2 cycles per PE, not
        ``array.pe_latency``)."""
        return self._array.int8_latency + self._acc.output_latency

    @property
    def throughput(self):
        """Peak MACs per cycle."""
        return self._rows * self._cols

    @property
    def dependency_latency(self):
        """Cycles from the issue of a row to the earliest issue of the row that adds to its
        accumulator row (the next K tile's), bf16 commands: two cycles into the array, the
        array, the accumulator write."""
        return 2 + self._array.latency + 1

    @property
    def int8_dependency_latency(self):
        """``dependency_latency`` of int8 commands."""
        return 2 + self._array.int8_latency + 1

    @classmethod
    def interleave_for(cls, config, m, k, n, *, bf16, tile_beats):
        """The ``interleave`` (G − 1) that keeps a command of M rows busy on the engine of
        ``config`` (:meth:`from_config`; nothing is built). A group's pass over one K tile takes
        about max(Gv·T, ``dependency_latency``) cycles, with Gv its N tiles and T = max(M,
        ``tile_beats``) the cycles of one tile (``tile_beats``: R in rows, ⌈R/2⌉ wide, C·⌈R/C⌉
        transposed): the next K tile's pass waits for the partial sums. Returns the smallest G
        (at most 16, the N tiles there are and ``acc_depth`` // M) with the fewest cycles over
        all groups, the last one included; 0 when K fits one K tile (no wait)."""
        for name, v in (("m", m), ("k", k), ("n", n), ("tile_beats", tile_beats)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, not {v!r}")
        acc_depth, _ = cls.buffer_sizes(config)
        R, C = config.array.rows, config.array.cols
        if k <= R:
            return 0
        dep = 2 + SystolicArray.latency_for(R, C, bf16=bf16) + 1
        t = max(m, tile_beats)
        n_tiles = -(-n // C)
        top = max(1, min(MAX_INTERLEAVE, n_tiles, acc_depth // m))

        def cycles(g):
            full, rest = divmod(n_tiles, g)
            return full * max(g * t, dep) + (max(rest * t, dep) if rest else 0)
        return min(range(1, top + 1), key=lambda g: (cycles(g), g)) - 1

    @property
    def w_beats_per_column(self):
        """Beats per W tile column in transposed orientation: ceil(R/C)."""
        return -(-self._rows // self._cols)

    def elaborate(self, platform):
        m = Module()
        R, C, AB = self._rows, self._cols, self._acc_bits
        arr = m.submodules.array = self._array
        seq = m.submodules.seq = self._seq
        abuf = m.submodules.abuf = ActivationBuffer(rows=R, cols=C, a_depth=self._a_depth)
        wl = m.submodules.wload = WeightLoader(rows=R, cols=C, slots=arr.slots, weight_hold=arr.weight_hold,
                                               int8_weight_hold=arr.int8_weight_hold)
        ps = m.submodules.params = ParamSlots(cols=C)
        iss = m.submodules.issue = IssueControl(rows=R, cols=C, acc_bits=AB, slots=arr.slots, a_depth=self._a_depth,
                                                dsp=self._dsp)
        acc = m.submodules.acc_drain = self._acc

        wiring.connect(m, wiring.flipped(self.cmd), seq.cmd)
        wiring.connect(m, seq.resp, wiring.flipped(self.resp))
        wiring.connect(m, wiring.flipped(self.a), abuf.a)
        wiring.connect(m, wiring.flipped(self.w), wl.w)
        wiring.connect(m, wiring.flipped(self.p), ps.p)
        wiring.connect(m, acc.o, wiring.flipped(self.o))
        cmd, shape = seq.command, seq.shape
        for part in (abuf, wl, ps, acc):
            m.d.comb += [part.start.eq(seq.start), part.stop.eq(seq.stop)]
        m.d.comb += [
            self.busy.eq(seq.busy), seq.done.eq(acc.idle), seq.requant_err.eq(ps.requant_err),
            iss.start.eq(seq.start), iss.command.eq(cmd), iss.shape.eq(shape),
            abuf.k.eq(cmd.k), abuf.n.eq(cmd.n), abuf.interleave.eq(cmd.interleave), abuf.shape.eq(shape),
            wl.command.eq(cmd), ps.command.eq(cmd),
            ps.need_p.eq(shape.need_p), acc.command.eq(cmd), acc.shape.eq(shape),
            # the array: data type, rows from the issue, weights from the loader
            arr.bf16.eq(cmd.dtype), arr.a_unsigned.eq(cmd.a_unsigned & ~cmd.dtype),
            arr.valid.eq(iss.valid), arr.a.eq(iss.a), arr.psum.eq(iss.psum), arr.slot.eq(iss.slot),
            arr.tag.eq(iss.tag), arr.w_data.eq(wl.w_data), arr.w_en.eq(wl.w_en), arr.w_slot.eq(wl.w_slot),
            # the issue's inputs and outputs
            abuf.take.eq(iss.take), abuf.take_lanes.eq(iss.take_lanes), iss.word_in.eq(abuf.word_in),
            iss.word.eq(abuf.word), wl.release.eq(iss.release), iss.w_loaded.eq(wl.loaded),
            iss.p_loaded.eq(ps.loaded), ps.bias_addr.eq(iss.bias_addr), iss.bias.eq(ps.bias),
            ps.tile_drained.eq(acc.tile_drained), iss.drained.eq(acc.drained), iss.drained_bank.eq(acc.drained_bank),
            iss.psum_data.eq(acc.psum_data), acc.psum_addr.eq(iss.psum_addr),
            acc.issued.eq(iss.take), acc.group_issued.eq(iss.group_issued), acc.bank.eq(iss.bank),
            acc.issue_active.eq(iss.active), ps.rq_addr.eq(acc.rq_addr), acc.multiplier.eq(ps.multiplier),
            acc.shift.eq(ps.shift), acc.result.eq(arr.result),
        ]
        # the array's output valid and tag in a register per user (_OUT_COPIES; timing: one
        # register reached the accumulator's block RAMs, the write counters and both copies of
        # the issue flags, up to 91 columns apart)
        o_valid = dict(zip(_OUT_COPIES, [arr.o_valid, *arr.o_valid_x], strict=True))
        o_tag = dict(zip(_OUT_COPIES, [arr.o_tag, *arr.o_tag_x], strict=True))
        for i, (part, user) in enumerate([(acc, "acc"), (acc, "cnt"), (iss, "i"), (iss, "l")]):
            m.d.comb += [part.res_valid[i % 2].eq(o_valid[user]), part.res_tag[i % 2].eq(o_tag[user])]
        self._connect_events(m, seq, abuf, wl, ps, iss, acc)
        return m

    def _connect_events(self, m, seq, abuf, wl, ps, iss, acc):
        ev, iev, bf16 = self.events, iss.events, seq.command.dtype
        m.d.comb += [
            ev.busy.eq(seq.busy), ev.rows.eq(iev.rows),
            ev.stall_input.eq(iev.stall_input), ev.stall_weight.eq(iev.stall_weight),
            ev.stall_dependency.eq(iev.stall_dependency), ev.stall_output.eq(iev.stall_output | acc.stall),
            ev.macs_int8.eq(iev.macs & ~bf16.replicate(len(iev.macs))),
            ev.macs_bf16.eq(iev.macs & bf16.replicate(len(iev.macs))),
            ev.abuf_reads.eq(abuf.reads), ev.abuf_writes.eq(abuf.writes),
            ev.acc_reads.eq(iev.acc_read + acc.reads), ev.acc_writes.eq(acc.writes),
            ev.weight_loads.eq(wl.loaded),
            ev.a_beats.eq(self.a.valid & self.a.ready), ev.w_beats.eq(self.w.valid & self.w.ready),
            ev.p_beats.eq(self.p.valid & self.p.ready), ev.o_beats.eq(self.o.valid & self.o.ready),
        ]
