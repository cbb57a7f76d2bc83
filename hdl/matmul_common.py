"""What the matmul engine's parts share: the stream payloads, the engine's ``events`` layout,
the run-control copies every part keeps, and small helpers (docs/matmul.md)."""

from amaranth.hdl import Signal
from amaranth.lib import data

from .counters import events_layout
from .pipeline import KEEP

__all__ = ["command_layout", "param_layout", "result_layout", "response_layout", "shape_layout",
           "engine_events_layout", "lanes_below", "run_control", "NO_RW_CHECK", "KEEP", "MAX_INTERLEAVE",
           "PARAM_ENTRIES"]

#: Most N tiles a command may interleave (G = ``interleave`` + 1 ≤ 16, the field's 4 bits).
MAX_INTERLEAVE = 16

#: Parameter entries the engine holds (docs/matmul.md, "Parameters"): those of the group being
#: issued and of the group being drained.
PARAM_ENTRIES = 2 * MAX_INTERLEAVE


#: Attribute of the engine's memories: no read uses data from a row written in the same cycle
#: (the prefetch reads an activation word from the cycle after its write; the issue reads an
#: accumulator row once its write has been counted, and the drain once the whole bank has
#: been), so a synthesis tool need not build the read-before-write bypass that a simultaneous
#: read and write of one row would otherwise need (timing: Yosys's bypass put an address
#: compare and a 256-bit multiplexer between the drain address and the block RAMs' output
#: registers). A read that did use such a row would read its old value in simulation and fail
#: the bit-exact tests.
NO_RW_CHECK = {"no_rw_check": 1}


def command_layout():
    """Payload of the ``cmd`` stream (the first field at the least significant bit)."""
    return data.StructLayout({
        "m": 16, "k": 16, "n": 16,
        "dtype": 1,          # 0 int8, 1 bf16
        "out_fmt": 2,        # OutFormat
        "w_transposed": 1,   # 0: a beat is a row of a W tile; 1: a beat is (part of) a column
        "a_unsigned": 1,     # int8 mode: activations are unsigned 8-bit
        "has_bias": 1,
        "w_wide": 1,       # int8 mode, rows: a beat carries two W rows, two int8 per lane
        "interleave": 4,   # G − 1: N tiles issued together, K tile by K tile (docs/matmul.md)
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


#: Width of the response's cycle count.
CYCLES_WIDTH = 48


def response_layout():
    """Payload of the ``resp`` stream: the status and the command's cycle count (from the cycle
    after the command was accepted to the response, inclusive)."""
    return data.StructLayout({"code": 4, "cycles": CYCLES_WIDTH})


def shape_layout(a_depth):
    """The sizes the command sequencer derives from an accepted command, registers valid from
    ``start`` on: M − 1, M − 2, M = 1, K ≤ R (one K tile), N ≤ C (one N tile), G = 1 (no
    interleave), the command needs parameter beats, and its activation words M·⌈K/R⌉."""
    return data.StructLayout({"m_last": 16, "m_last2": 16, "m_one": 1, "k_one": 1, "n_one": 1, "g_one": 1,
                              "need_p": 1, "words": range(a_depth + 1)})


def engine_events_layout(rows, cols):
    """The engine's ``events`` (docs/conventions.md "Counters"; docs/matmul.md lists them)."""
    macs = (rows * cols).bit_length()
    return events_layout({
        "busy": 1, "rows": 1,
        "stall_input": 1, "stall_output": 1, "stall_weight": 1, "stall_dependency": 1,
        "macs_int8": macs, "macs_bf16": macs,
        "abuf_reads": 1, "abuf_writes": 1, "acc_reads": 2, "acc_writes": 1, "weight_loads": 1,
        "a_beats": 1, "w_beats": 1, "p_beats": 1, "o_beats": 1,
    })


def lanes_below(rem, count):
    """Per-lane flags ``lane < rem``."""
    return [rem > i for i in range(count)]


def run_control(m, start, stop, name):
    """A part's own copies of the run control: ``start_<name>``, ``start`` one cycle late (the
    cycle before the run: it initialises the part's counters), and ``running_<name>``, 1 from
    the cycle after it until the cycle after ``stop``. Both are registers of the part's own
    (timing: one register would reach the whole die; they hold the same values in every part)."""
    start_q = Signal(name=f"start_{name}", attrs=KEEP)
    running = Signal(name=f"running_{name}", attrs=KEEP)
    m.d.sync += start_q.eq(start)
    with m.If(start_q):
        m.d.sync += running.eq(1)
    with m.Elif(stop):
        m.d.sync += running.eq(0)
    return start_q, running
