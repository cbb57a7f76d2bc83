"""Expected cycles of each instruction: a first-order model of the units, for the schedule dump
(:meth:`compiler.asm.Asm.dump`) and to compare with what the RTL's counters measure.

It is deliberately simple — streaming rates and fixed latencies from the blocks' docs — and not
a promise: the RTL's counters are the figures (docs/chip.md).
"""

from spec import isa
from spec.codes import Dtype
from spec.vector import VectorOp

__all__ = ["TimingModel"]


def _ceil(a, b):
    return -(-int(a) // int(b))


class TimingModel:
    """``model(instr) → cycles`` for a :class:`hdl.config.ChipConfig`."""

    #: Fixed costs (cycles) per instruction: dispatch and start-up of each unit.
    OVERHEAD = {isa.Unit.LOAD: 40, isa.Unit.STORE: 40, isa.Unit.MATMUL: 60, isa.Unit.VECTOR: 20,
                isa.Unit.SOFTMAX: 45, isa.Unit.KV: 10}

    def __init__(self, config):
        self.c = config
        self.L = config.memory.spad_lanes
        self.bus = config.memory.axi_data_bits // 8
        self.R, self.C = config.array.rows, config.array.cols

    def __call__(self, ins):
        f, u = ins.fields, ins.unit
        over = self.OVERHEAD.get(u, 1)
        if u in (isa.Unit.LOAD, isa.Unit.STORE):
            eb = 1 << f.get("elem_bytes", 0)
            per_row = max(_ceil(f["elems"] * eb, self.bus), _ceil(f["elems"], self.L))
            return over + f["rows"] * per_row
        if u == isa.Unit.MATMUL:
            m, k, n = f["m"], f["k"], f["n"]
            kt, nt = _ceil(k, self.R), _ceil(n, self.C)
            w_beats = self.R // 2 if f.get("w_wide") else self.R
            if f.get("w_src", 0) in (isa.WSource.EXT, isa.WSource.EXT_T):
                eb = 2 if f.get("dtype", 0) == Dtype.BF16 else 1
                dram = _ceil(kt * nt * self.R * self.C * eb, self.bus)
            else:
                dram = 0
            # small M: a K tile's pass waits for the previous pass's partial sums (docs/timing.md,
            # "Throughput at small M"); fitted to bench.matmul's 1×576×576 on 8×8 and 16×16. With
            # ``interleave`` (G − 1) a group's G N tiles share that wait: a group's pass over one K
            # tile takes max(Gv·max(M, beats), dep) (hdl.matmul.MatmulEngine.interleave_for)
            dep = 8 * self.R + 7 if f.get("dtype", 0) == Dtype.BF16 else 3 * self.R + 8
            dep = dep if kt > 1 else 0
            g = f.get("interleave", 0) + 1
            t = max(m, w_beats)
            full, rest = divmod(nt, g)
            passes = full * max(g * t, dep) + (max(rest * t, dep) if rest else 0)
            return over + max(kt * passes, dram)
        if u == isa.Unit.VECTOR:
            # RMSNORM sums a group's rows at one element per cycle before its first result;
            # QUANT_TOKEN takes one row in first (docs/vector.md, "Latency and throughput")
            beats = _ceil(f["length"], self.L)
            first = {VectorOp.RMSNORM: f["length"], VectorOp.QUANT_TOKEN: beats}.get(f.get("op"), 0)
            return over + f["rows"] * beats + first
        if u == isa.Unit.SOFTMAX:
            return over + 3 * _ceil(f["length"], self.c.softmax.lanes) + (f["rows"] - 1) * _ceil(
                f["length"], self.c.softmax.lanes)
        if u == isa.Unit.KV:
            words = 2 * self.c.kvcache.heads * self.c.kvcache.head_dim // self.c.kvcache.beat_elems
            return over + f.get("rows", 0) * words
        return 1
