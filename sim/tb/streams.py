"""The stream testbench: drives and collects any set of streams of a design, built from the kit
(:mod:`sim.tb.common`). Started by :func:`sim.streams.run_streams`, which documents the inputs and
outputs; a block's ``sim.run_*`` API packs its operation into payload words, and this testbench
needs nothing block-specific.

One cocotb test, ``streams``:

1. clock and reset; a :class:`StreamSource` per input stream (valid gaps with probability
   ``stall``), a :class:`StreamSink` per output stream (ready low with probability
   ``backpressure``), a :class:`Tap` per requested signal; every random source seeded from the
   logged seed;
2. waits until every source has delivered its beats, every sink with an expected count has that
   many beats, and every other sink's ``valid`` has been low for ``tail_cycles`` cycles in a row;
   a wait fails when no stream makes a handshake for ``timeout_cycles`` cycles or the run takes
   more than ``max_cycles`` cycles;
3. keeps every sink ready for ``tail_cycles`` more cycles (so a beat too many is recorded), then
   reads the ``counts`` port (the event counters of ``hdl.standalone.Standalone``) if asked to;
4. saves every sink's beats, every stream's accept cycles, the taps and the counts.
"""

import time

import cocotb
import numpy as np

from sim.packing import rows_to_words, words_to_rows
from sim.tb.common import (
    ClockLoop,
    StreamSink,
    StreamSource,
    Tap,
    load_inputs,
    random_pause,
    rng,
    save_outputs,
    start_clock_and_reset,
)


@cocotb.test()
async def streams(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    stall, backpressure = float(meta.get("stall", 0.0)), float(meta.get("backpressure", 0.0))
    timeout, tail = int(meta["timeout_cycles"]), int(meta["tail_cycles"])
    await start_clock_and_reset(dut)
    loop = ClockLoop.of(dut.clk, registered_outputs=bool(meta.get("registered_outputs", False)))
    sources = {}
    for name in meta["sources"]:
        sources[name] = StreamSource(dut, name, pause=random_pause(stall, rand.random()))
        sources[name].send_nowait(rows_to_words(arrays[f"in_{name}"]))
    sinks = {name: StreamSink(dut, name, pause=random_pause(backpressure, rand.random()))
             for name in meta["sinks"]}
    taps = {name: Tap(dut, value, when) for name, (value, when) in meta.get("taps", {}).items()}
    expect = {name: n for name, n in meta["sinks"].items() if n is not None}

    def done():
        return (all(s.idle() for s in sources.values())
                and all(len(sinks[k].beats) >= n for k, n in expect.items())
                and all(sinks[k].quiet_cycles >= tail for k in sinks if k not in expect))

    t0 = time.perf_counter()
    await loop.until(done, timeout_cycles=timeout, max_cycles=meta.get("max_cycles"), what="streams")
    seconds = time.perf_counter() - t0
    await loop.cycles(tail)
    out = {"sim_seconds": np.array(seconds), "loop_cycles": np.array(loop.cycle)}
    for name, sink in sinks.items():
        out[f"out_{name}"] = words_to_rows(sink.beats, (sink.width + 7) // 8)
        out[f"cyc_{name}"] = np.array(sink.accepted_at, np.int64)
    for name, source in sources.items():
        out[f"cyc_{name}"] = np.array(source.accepted_at, np.int64)
    for name, tap in taps.items():
        out[f"tap_{name}"] = words_to_rows(tap.values, (tap.width + 7) // 8)
        out[f"tapcyc_{name}"] = np.array(tap.cycles, np.int64)
    counters = meta.get("counters")
    if counters:
        word, width = int(dut.counts.value), int(meta["counter_width"])
        out["counts"] = np.array([(word >> (width * k)) & ((1 << width) - 1) for k in range(len(counters))],
                                 np.int64)
    save_outputs(**out)
