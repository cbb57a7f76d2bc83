"""cocotb testbench of the scratchpad harness (sim/spad_api.py ``SpadHarness``).

``spad_traffic`` plays every mover's descriptors and words at once (``inputs.npz``:
``w<j>_desc``/``w<j>_after``/``w<j>_data``/``w<j>_mask``, ``r<i>_desc``/``r<i>_after``), with
random valid gaps (``stall``) on the descriptor and write-data streams and ready backpressure
(``backpressure``) on the read-data streams, from pause generators of the testbench kit
(:mod:`sim.tb.common`) seeded from the logged seed (the harness holds a descriptor with
``after = n`` until the writers have given n done pulses). It saves every read word and its
flags, the cycle of every handshake and done pulse (counted from the first rising edge after
reset release), and the scratchpad's event counts. A run fails when no stream makes a handshake
for ``timeout_cycles`` cycles.
"""

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from .common import ClockLoop, StreamSink, StreamSource, Tap, load_inputs, random_pause, rng, save_outputs


def _pack(fields, values):
    word = 0
    for (name, offset, width) in fields:
        if name in values:
            word |= (int(values[name]) & ((1 << width) - 1)) << offset
    return word


def _words(rows):
    return [sum(int(x) << (32 * k) for k, x in enumerate(row)) for row in rows]


_DESC_NAMES = ("base", "count0", "count1", "count2", "stride0", "stride1", "stride2")


def _descs(rows, after, fields):
    """The descriptor beats (the harness holds each until its ``after`` done pulses)."""
    return [_pack(fields, {**dict(zip(_DESC_NAMES, row, strict=True)), "after": need})
            for row, need in zip(rows, after, strict=True)]


@cocotb.test()
async def spad_traffic(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    R, W, L = int(meta["readers"]), int(meta["writers"]), int(meta["lanes"])
    timeout = int(meta["timeout_cycles"])
    stall, bp = float(meta["stall"]), float(meta["backpressure"])
    for i in range(R):
        getattr(dut, f"rd{i}_desc__valid").value = 0
        getattr(dut, f"rd{i}_data__ready").value = 0
    for j in range(W):
        getattr(dut, f"wr{j}_desc__valid").value = 0
        getattr(dut, f"wr{j}_data__valid").value = 0
    dut.clear.value = 0
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    # the agents start after reset: cycle 0 is the first rising edge after its release
    loop = ClockLoop.of(dut.clk)

    def pause(p):
        return random_pause(p, rand.getrandbits(32))

    done_taps = [Tap(dut, f"wr{j}_done", f"wr{j}_done") for j in range(W)]
    sources, sinks, counts_wanted, n_descs = {}, {}, {}, 0
    for j in range(W):
        if f"w{j}_desc" not in arrays:
            continue
        n_descs += len(arrays[f"w{j}_desc"])
        sources[f"w{j}_desc"] = StreamSource(dut, f"wr{j}_desc", pause=pause(stall))
        sources[f"w{j}_desc"].send_nowait(_descs(arrays[f"w{j}_desc"], arrays[f"w{j}_after"], meta["desc_fields"]))
        sources[f"w{j}"] = StreamSource(dut, f"wr{j}_data", pause=pause(stall))
        sources[f"w{j}"].send_nowait([_pack(meta["wdata_fields"], {"data": d, "mask": m})
                                      for d, m in zip(_words(arrays[f"w{j}_data"]), arrays[f"w{j}_mask"],
                                                      strict=True)])
    for i in range(R):
        if f"r{i}_desc" not in arrays:
            continue
        rows = arrays[f"r{i}_desc"]
        sources[f"r{i}_desc"] = StreamSource(dut, f"rd{i}_desc", pause=pause(stall))
        sources[f"r{i}_desc"].send_nowait(_descs(rows, arrays[f"r{i}_after"], meta["desc_fields"]))
        sinks[i] = StreamSink(dut, f"rd{i}_data", pause=pause(bp))
        counts_wanted[i] = int(sum(int(np.prod(r[1:4])) for r in rows))

    def done():
        return (all(s.idle() for s in sources.values())
                and all(len(sinks[i].beats) >= n for i, n in counts_wanted.items())
                and sum(len(t.cycles) for t in done_taps) >= n_descs)

    await loop.until(done, timeout_cycles=timeout, what="spad_traffic")
    got = {i: sink.beats[:counts_wanted[i]] for i, sink in sinks.items()}
    stamps = {name: [] for name in [*(f"r{i}{s}" for i in range(R) for s in ("", "_desc")),
                                    *(f"w{j}{s}" for j in range(W) for s in ("", "_desc", "_done"))]}
    for name, source in sources.items():
        stamps[name] = source.accepted_at
    for i, sink in sinks.items():
        stamps[f"r{i}"] = sink.accepted_at[:counts_wanted[i]]
    for j, tap in enumerate(done_taps):
        stamps[f"w{j}_done"] = tap.cycles
    end = max([loop.cycle] + [s[-1] for s in stamps.values() if s])
    await RisingEdge(dut.clk)
    await ReadOnly()
    counts = int(dut.counts.value)
    cw = int(meta["counter_width"])
    out = {"counts": np.array([(counts >> (cw * k)) & ((1 << cw) - 1)
                               for k in range(len(meta["counter_names"]))], np.int64),
           "cycles": np.array(end + 1, np.int64)}
    fields = {name: (offset, width) for name, offset, width in meta["rdata_fields"]}
    for i, words in got.items():
        off = fields["data"][0]
        out[f"r{i}_data"] = np.array([[(w >> (off + 32 * k)) & 0xFFFFFFFF for k in range(L)] for w in words],
                                     np.uint32).reshape(-1, L)
        out[f"r{i}_flags"] = np.array([[(w >> fields[f][0]) & 1 for f in ("last0", "last1", "last")]
                                       for w in words], np.uint8).reshape(-1, 3)
    for name, values in stamps.items():
        out[f"{name}_cycles"] = np.array(values, np.int64)
    save_outputs(**out)
