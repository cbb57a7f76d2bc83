"""cocotb side of the DMA engine tests (sim.tb.dma_top.EngineTestTop).

Read clients send their requests (``rd<c>_req``: rows of ``addr, beats``) and collect their
beats; write clients send their requests, their data (``wr<c>_data``, ``wr<c>_strb``) and
collect their ``done`` beats; the external memory is an :class:`sim.tb.axi.ExternalMemory`.
Every stream gets random valid gaps (``stall``) or ready backpressure (``backpressure``), from
pause generators of the testbench kit (:mod:`sim.tb.common`) seeded from the logged seed, and
every AXI channel too. The outputs are the beats each client got, the memory afterwards, the
engines' event counts and the cycles (counted from the first rising edge after reset release;
``<client>_finished``: through the client's last beat; ``cycles``: through the last handshake).
"""

import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from .axi import ExternalMemory, HdlMemory
from .common import ClockLoop, StreamSink, StreamSource, load_inputs, random_pause, rng, save_outputs


def _bytes(value, n):
    return np.frombuffer(int(value).to_bytes(n, "little"), np.uint8)


async def start(dut, meta, arrays, rand):
    """Clock, memory (filled with ``arrays["mem"]``), reset held; returns the memory: an
    :class:`ExternalMemory` (cocotbext-axi) or, with ``meta["memory"] == "hdl"``, the top's
    Verilog model (:class:`HdlMemory`)."""
    clk = dut.clk
    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    dut.rst.value = 1
    common = dict(size=int(meta["mem_size"]), rand=rand, stall=float(meta["stall"]),
                  backpressure=float(meta["backpressure"]), errors=[tuple(w) for w in meta.get("errors", [])])
    if meta.get("memory", "axiram") == "hdl":
        mem = HdlMemory(dut, clk, data_bytes=int(meta["data_bytes"]), **common)
    else:
        mem = ExternalMemory(dut, "m_axi_", clk, dut.rst, interleave=bool(meta.get("interleave", False)),
                             **common)
    mem.write(0, arrays["mem"].tobytes())
    await RisingEdge(clk)
    await mem.fill()
    return mem


@cocotb.test()
async def engines(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    clk = dut.clk
    nb = int(meta["data_bytes"])
    aw = int(meta["addr_width"])
    stall, backpressure = float(meta["stall"]), float(meta["backpressure"])
    mem = await start(dut, meta, arrays, rand)
    # per-client overrides: a slow reader (ready rarely high) or a slow writer (data rarely valid)
    rd_bp = meta.get("rd_backpressure") or [backpressure] * int(meta["read_clients"])
    wr_stall = meta.get("wr_data_stall") or [stall] * int(meta["write_clients"])
    await ClockCycles(clk, 3)
    dut.rst.value = 0
    # the agents start after reset: cycle 0 is the first rising edge after its release
    sources, sinks, expect = [], {}, {}
    for c in range(int(meta["read_clients"])):
        reqs = arrays[f"rd{c}_req"]
        req = StreamSource(dut, f"rd__{c}__req", clk, pause=random_pause(stall, rand.getrandbits(32)))
        req.send_nowait([int(a) | int(b) << aw for a, b in reqs])
        sources.append(req)
        sinks[f"rd{c}"] = StreamSink(dut, f"rd__{c}__data", clk,
                                     pause=random_pause(float(rd_bp[c]), rand.getrandbits(32)))
        expect[f"rd{c}"] = int(reqs[:, 1].sum())
    for c in range(int(meta["write_clients"])):
        reqs = arrays[f"wr{c}_req"]
        strb = np.packbits(arrays[f"wr{c}_strb"], axis=1, bitorder="little")
        beats = [int.from_bytes(d.tobytes(), "little") | int.from_bytes(s.tobytes(), "little") << (8 * nb)
                 for d, s in zip(arrays[f"wr{c}_data"], strb, strict=True)]
        req = StreamSource(dut, f"wr__{c}__req", clk, pause=random_pause(stall, rand.getrandbits(32)))
        req.send_nowait([int(a) | int(b) << aw for a, b in reqs])
        data = StreamSource(dut, f"wr__{c}__data", clk,
                            pause=random_pause(float(wr_stall[c]), rand.getrandbits(32)))
        data.send_nowait(beats)
        sources += [req, data]
        sinks[f"wr{c}"] = StreamSink(dut, f"wr__{c}__done", clk,
                                     pause=random_pause(backpressure, rand.getrandbits(32)))
        expect[f"wr{c}"] = len(reqs)
    loop = ClockLoop.of(clk)
    t0 = time.perf_counter()
    await loop.until(lambda: all(s.idle() for s in sources)
                     and all(len(sinks[k].beats) >= n for k, n in expect.items()),
                     timeout_cycles=100_000, what="engines")
    wall = time.perf_counter() - t0
    out = {}
    for name, sink in sinks.items():
        result = sink.beats[:expect[name]]
        # cycles from reset release until the client's last beat, inclusive
        stamps = sink.accepted_at[:expect[name]]
        out[f"{name}_finished"] = np.array(stamps[-1] + 1 if stamps else 0)
        if name.startswith("rd"):
            out[f"{name}_data"] = np.array([_bytes(v & ((1 << 8 * nb) - 1), nb) for v in result],
                                           np.uint8).reshape(-1, nb)
            out[f"{name}_last"] = np.array([(v >> 8 * nb) & 1 for v in result], np.uint8)
            out[f"{name}_error"] = np.array([(v >> (8 * nb + 1)) & 1 for v in result], np.uint8)
        else:
            out[f"{name}_done"] = np.array([v & 1 for v in result], np.uint8)
    # cycles from reset release until the last handshake of any client stream, inclusive
    cycles = max([a.accepted_at[-1] for a in [*sources, *sinks.values()] if a.accepted_at] or [-1]) + 1
    await ClockCycles(clk, 4)   # the last events reach the counters
    cocotb.log.info("%d cycles in %.2f s: %.0f cycles/s", cycles, wall, cycles / max(wall, 1e-9))
    save_outputs(mem=np.frombuffer(await mem.contents(), np.uint8)[:int(meta["mem_size"])],
                 rd_counts=_bytes(dut.rd_counts.value, (len(dut.rd_counts) + 7) // 8),
                 wr_counts=_bytes(dut.wr_counts.value, (len(dut.wr_counts) + 7) // 8),
                 cycles=np.array(cycles), wall=np.array(wall), **out)
