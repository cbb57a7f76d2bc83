"""cocotb testbench of the scratchpad harness (sim/spad_api.py ``SpadHarness``).

``spad_traffic`` plays every mover's descriptors and words at once (``inputs.npz``:
``w<j>_desc``/``w<j>_after``/``w<j>_data``/``w<j>_mask``, ``r<i>_desc``/``r<i>_after``), with
random valid gaps (``stall``) on the descriptor and write-data streams and ready backpressure
(``backpressure``) on the read-data streams (the harness holds a descriptor with ``after = n``
until the writers have given n done pulses). It saves every read word and its flags, the cycle of every handshake and
done pulse, and the scratchpad's event counts. Every wait has a cycle timeout.
"""

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from .common import StreamDriver, load_inputs, rng, save_outputs


class _Cycles:
    def __init__(self):
        self.now = 0


async def _count(dut, cycles):
    while True:
        await RisingEdge(dut.clk)
        cycles.now += 1


def _pack(fields, values):
    word = 0
    for (name, offset, width) in fields:
        if name in values:
            word |= (int(values[name]) & ((1 << width) - 1)) << offset
    return word


def _words(rows):
    return [sum(int(x) << (32 * k) for k, x in enumerate(row)) for row in rows]


async def _send_descs(dut, prefix, rows, after, fields, cycles, stall, rand, stamps, timeout):
    """Send the descriptors (the harness holds each until its ``after`` done pulses)."""
    names = ("base", "count0", "count1", "count2", "stride0", "stride1", "stride2")
    beats = [_pack(fields, {**dict(zip(names, row, strict=True)), "after": need})
             for row, need in zip(rows, after, strict=True)]
    drv = StreamDriver(dut, prefix, dut.clk, stall=stall, rand=rand)
    await drv.send(beats, timeout_cycles=timeout, now=lambda: cycles.now, accepted_at=stamps)


async def _receive(dut, prefix, count, *, backpressure, rand, cycles, stamps, timeout):
    valid, ready = getattr(dut, f"{prefix}__valid"), getattr(dut, f"{prefix}__ready")
    payload = getattr(dut, f"{prefix}__payload")
    out, idle = [], 0
    while len(out) < count:
        take = not (backpressure and rand.random() < backpressure)
        ready.value = int(take)
        await ReadOnly()
        if take and valid.value:
            out.append(int(payload.value))
            stamps.append(cycles.now)
            idle = 0
        else:
            idle += 1
            if idle > timeout:
                raise TimeoutError(f"{prefix}: no word for {timeout} cycles ({len(out)} of {count})")
        await RisingEdge(dut.clk)
    ready.value = 0
    return out


async def _watch_done(dut, writers, state, cycles, stamps):
    """Record the cycle of every done pulse."""
    pins = [getattr(dut, f"wr{j}_done") for j in range(writers)]
    while True:
        await ReadOnly()
        for j, pin in enumerate(pins):
            if pin.value:
                stamps[j].append(cycles.now)
                state["done"] += 1
        await RisingEdge(dut.clk)


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
    cycles = _Cycles()
    cocotb.start_soon(_count(dut, cycles))
    state = {"done": 0}
    stamps = {name: [] for name in [*(f"r{i}{s}" for i in range(R) for s in ("", "_desc")),
                                    *(f"w{j}{s}" for j in range(W) for s in ("", "_desc", "_done"))]}
    done_stamps = [stamps[f"w{j}_done"] for j in range(W)]
    cocotb.start_soon(_watch_done(dut, W, state, cycles, done_stamps))
    tasks, readers, n_descs = [], {}, 0
    for j in range(W):
        if f"w{j}_desc" not in arrays:
            continue
        n_descs += len(arrays[f"w{j}_desc"])
        tasks.append(cocotb.start_soon(_send_descs(
            dut, f"wr{j}_desc", arrays[f"w{j}_desc"], arrays[f"w{j}_after"], meta["desc_fields"],
            cycles, stall, rand, stamps[f"w{j}_desc"], timeout)))
        beats = [_pack(meta["wdata_fields"], {"data": d, "mask": m})
                 for d, m in zip(_words(arrays[f"w{j}_data"]), arrays[f"w{j}_mask"], strict=True)]
        drv = StreamDriver(dut, f"wr{j}_data", dut.clk, stall=stall, rand=rand)
        tasks.append(cocotb.start_soon(drv.send(beats, timeout_cycles=timeout, now=lambda: cycles.now,
                                                accepted_at=stamps[f"w{j}"])))
    for i in range(R):
        if f"r{i}_desc" not in arrays:
            continue
        rows = arrays[f"r{i}_desc"]
        tasks.append(cocotb.start_soon(_send_descs(
            dut, f"rd{i}_desc", rows, arrays[f"r{i}_after"], meta["desc_fields"], cycles,
            stall, rand, stamps[f"r{i}_desc"], timeout)))
        count = int(sum(int(np.prod(r[1:4])) for r in rows))
        readers[i] = cocotb.start_soon(_receive(dut, f"rd{i}_data", count, backpressure=bp, rand=rand,
                                                cycles=cycles, stamps=stamps[f"r{i}"], timeout=timeout))
    for task in tasks:
        await task
    got = {i: await task for i, task in readers.items()}
    waited = 0
    while state["done"] < n_descs:
        await RisingEdge(dut.clk)
        waited += 1
        assert waited < timeout, f"{state['done']} of {n_descs} writer descriptors done"
    end = max([cycles.now] + [s[-1] for s in stamps.values() if s])
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
