"""cocotb testbench of the softmax unit (hdl/softmax.py).

``softmax_stream`` drives the commands and score beats it is given (``inputs.npz``: ``cmds`` as
per-field integer arrays, ``beats`` (n_beats, P) uint32) with optional random valid gaps
(``stall``) and ready backpressure (``backpressure``), collects every output beat and saves
``out`` (n_out, P) uint16, ``last`` (n_out,), the cycle each input beat was taken
(``in_cycle``) and each output beat leaves (``out_cycle``), the ``error`` pulse cycles and the
performance counters. Every wait has a cycle timeout, so a hang fails the test.
"""

import cocotb
import numpy as np

from sim.tb.common import (
    StreamSink,
    StreamSource,
    Tap,
    load_inputs,
    random_pause,
    rng,
    save_outputs,
    start_clock_and_reset,
)

CMD_FIELDS = ("length", "valid_len", "causal_pos", "dtype", "scale", "shift")
COUNTERS = ("cycles", "busy_cycles", "rows_accepted", "rows_rejected", "rows_done",
            "beats_in", "beats_out", "in_stall_cycles", "out_stall_cycles", "ring_full_cycles")


def cmd_widths(lw):
    return {"length": lw, "valid_len": lw, "causal_pos": lw, "dtype": 1, "scale": 32, "shift": 6}


def pack_cmd(fields, lw):
    """One command payload (StructLayout: fields packed from bit 0 in declaration order)."""
    value, pos = 0, 0
    for name, width in cmd_widths(lw).items():
        value |= (int(fields[name]) & ((1 << width) - 1)) << pos
        pos += width
    return value


@cocotb.test()
async def softmax_stream(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    lanes, lw = int(meta["lanes"]), int(meta["lw"])
    stall, backpressure = float(meta.get("stall", 0.0)), float(meta.get("backpressure", 0.0))
    timeout = int(meta.get("timeout_cycles", 20000))
    cmds = [pack_cmd({f: arrays[f"cmd_{f}"][i] for f in CMD_FIELDS}, lw)
            for i in range(len(arrays["cmd_length"]))]
    beats = arrays["beats"]
    payloads = [sum(int(v) << (32 * j) for j, v in enumerate(row)) for row in beats.tolist()]
    n_out = int(meta["n_out"])

    await start_clock_and_reset(dut)
    cmd = StreamSource(dut, "cmd", pause=random_pause(stall, rand.random()))
    beats_in = StreamSource(dut, "i", pause=random_pause(stall, rand.random()))
    out = StreamSink(dut, "o", pause=random_pause(backpressure, rand.random()))
    errors = Tap(dut, "error", "error")
    cmd.send_nowait(cmds)
    beats_in.send_nowait(payloads)
    words = await out.receive(n_out, timeout_cycles=timeout)
    await cmd.wait(timeout_cycles=timeout)
    await beats_in.wait(timeout_cycles=timeout)
    # nothing more may come out
    await out.loop.cycles(int(meta.get("drain_cycles", 40)))
    assert len(out.beats) == n_out, f"{len(out.beats) - n_out} output beats beyond the expected count"
    mask16 = (1 << 16) - 1
    rows = [[(v >> (16 * j)) & mask16 for j in range(lanes)] for v in words]
    last = [(v >> (16 * lanes)) & 1 for v in words]
    raw = int(dut.counters.value)
    counters = [(raw >> (32 * j)) & 0xFFFFFFFF for j in range(len(COUNTERS))]
    save_outputs(out=np.array(rows, dtype=np.uint16).reshape(-1, lanes),
                 last=np.array(last, dtype=np.uint8), in_cycle=np.array(beats_in.accepted_at, dtype=np.int64),
                 cmd_cycle=np.array(cmd.accepted_at, dtype=np.int64),
                 out_cycle=np.array(out.accepted_at, dtype=np.int64), errors=np.array(errors.cycles, dtype=np.int64),
                 counters=np.array(counters, dtype=np.int64))
