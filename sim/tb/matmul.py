"""cocotb testbench of hdl.matmul.MatmulEngine, driven by sim.matmul_api.

Inputs (see :func:`sim.matmul_api.run_jobs`): the command payloads (``meta["cmds"]``) and the
beats of the ``a``, ``w`` and ``p`` streams as little-endian byte rows (one row per beat, the
jobs one after the other). The testbench drives all four input streams at once, with random
valid gaps (``stall``), and accepts ``o`` and ``resp`` with random backpressure
(``backpressure``), all from the logged seed. One coroutine handles every stream, with one
simulator callback per clock cycle: at the falling edge it reads ``ready``/``valid`` and writes the
next beats, which the rising edge then samples. That relies on the engine's rule that its
``ready`` and ``valid`` outputs depend on registered state only (docs/matmul.md).

Outputs: ``o`` (byte rows of the result beats), ``resp`` (byte rows of the responses),
``counts`` (byte rows: the design's event counts one cycle after each response, which include
every event of that command and none of the next), ``cmd_accept`` (cycle at which each command
was accepted) and ``cycles``.
"""

import cocotb
from cocotb.triggers import FallingEdge

from sim.tb.common import load_inputs, rng, save_outputs, start_clock_and_reset


def _rows_to_ints(rows):
    return [int.from_bytes(row.tobytes(), "little") for row in rows]


class _Source:
    """One input stream: presents beats in order, with a random gap before each."""

    def __init__(self, dut, prefix, beats):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.beats = beats
        self.index = 0
        self.up = False
        self.valid_now = False
        self.valid.value = 0
        self.accepted_at = []

    @property
    def done(self):
        return self.index >= len(self.beats)


class _Sink:
    def __init__(self, dut, prefix, count):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.count = count
        self.items = []
        self.ready_now = False
        self.ready.value = 0

    @property
    def done(self):
        return len(self.items) >= self.count


@cocotb.test()
async def matmul_run(dut):
    """Run every job of the inputs through the engine and save what comes out."""
    arrays, meta = load_inputs()
    rand = rng(meta)
    stall = float(meta.get("stall", 0.0))
    backpressure = float(meta.get("backpressure", 0.0))
    idle_limit = int(meta.get("idle_timeout", 20_000))
    sources = [
        _Source(dut, "cmd", [int(c) for c in meta["cmds"]]),
        _Source(dut, "a", _rows_to_ints(arrays["a"])),
        _Source(dut, "w", _rows_to_ints(arrays["w"])),
        _Source(dut, "p", _rows_to_ints(arrays["p"])),
    ]
    names = ("cmd", "a", "w", "p")
    o_sink = _Sink(dut, "o", int(meta["o_beats"]))
    r_sink = _Sink(dut, "resp", len(meta["cmds"]))
    sinks = [o_sink, r_sink]
    await start_clock_and_reset(dut)
    clk = dut.clk

    cycle = 0
    idle = 0
    counts, sample = [], False
    while not (o_sink.done and r_sink.done):
        await FallingEdge(clk)
        if sample:      # one cycle after a response's handshake
            counts.append(int(dut.counts.value))
            sample = False
        # drive: once valid is up it stays up, payload held, until the beat is taken
        for s in sources:
            if not s.up:
                if not s.done and not (stall and rand.random() < stall):
                    s.payload.value = s.beats[s.index]
                    if not s.valid_now:
                        s.valid.value = 1
                        s.valid_now = True
                    s.up = True
                elif s.valid_now:
                    s.valid.value = 0
                    s.valid_now = False
        for k in sinks:
            ready = not k.done and not (backpressure and rand.random() < backpressure)
            if ready != k.ready_now:
                k.ready.value = int(ready)
                k.ready_now = ready
        # the handshakes of the coming rising edge (writes above are not visible yet: the
        # engine's ready and valid outputs depend on registered state only)
        progress = False
        for s in sources:
            if s.up and s.ready.value:
                s.accepted_at.append(cycle)
                s.index += 1
                s.up = False
                progress = True
        for k in sinks:
            if k.ready_now and k.valid.value:
                k.items.append(int(k.payload.value))
                progress = True
                sample = sample or k is r_sink
        idle = 0 if progress else idle + 1
        if idle > idle_limit:
            raise TimeoutError(
                f"no handshake for {idle_limit} cycles at cycle {cycle}: "
                + ", ".join(f"{p} {s.index}/{len(s.beats)}" for p, s in zip(names, sources, strict=True))
                + f", o {len(o_sink.items)}/{o_sink.count}, resp {len(r_sink.items)}/{r_sink.count}")
        cycle += 1

    await FallingEdge(clk)
    if sample:
        counts.append(int(dut.counts.value))
    leftover = [p for p, s in zip(("cmd", "a", "w", "p"), sources, strict=True) if not s.done]
    if leftover:
        raise AssertionError(f"streams not fully consumed: {', '.join(leftover)}")
    import numpy as np
    o_bytes = int(meta["o_bytes"])
    r_bytes = int(meta["resp_bytes"])
    o = np.frombuffer(b"".join(v.to_bytes(o_bytes, "little") for v in o_sink.items), dtype=np.uint8)
    r = np.frombuffer(b"".join(v.to_bytes(r_bytes, "little") for v in r_sink.items), dtype=np.uint8)
    c_bytes = int(meta["counts_bytes"])
    c = np.frombuffer(b"".join(v.to_bytes(c_bytes, "little") for v in counts), dtype=np.uint8)
    save_outputs(o=o.reshape(len(o_sink.items), o_bytes), resp=r.reshape(len(r_sink.items), r_bytes),
                 counts=c.reshape(len(counts), c_bytes),
                 cmd_accept=np.array(sources[0].accepted_at, dtype=np.int64),
                 cycles=np.array(cycle, dtype=np.int64))
