"""cocotb side of the LOAD/STORE test (sim.tb.loadstore_top.LoadStoreTestTop).

Phase 1 sends the LOAD descriptors (``load_cmds``, packed, one row of bytes each) and collects
their responses; phase 2 the STORE descriptors (``store_cmds``). The plain read client ``rd``
reads ``rd_req`` all along, so its bursts interleave with the LOAD's. Outputs: the statuses,
the client's beats, the memory afterwards, the event counts and the cycles of each phase.
"""

import time

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge
from cocotb.utils import get_sim_time

from .common import StreamDriver, StreamMonitor, load_inputs, rng, save_outputs
from .dma import CycleCounter, start


def _ints(rows):
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


async def phase(dut, name, cmds, *, stall, backpressure, rand):
    drv = StreamDriver(dut, f"{name}_cmd", dut.clk, stall=stall, rand=rand)
    mon = StreamMonitor(dut, f"{name}_resp", dut.clk, backpressure=backpressure, rand=rand)
    sender = cocotb.start_soon(drv.send(cmds, timeout_cycles=200_000))
    statuses = await mon.receive(len(cmds), timeout_cycles=200_000)
    await sender
    return statuses


@cocotb.test()
async def loadstore(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    clk = dut.clk
    nb = int(meta["data_bytes"])
    stall, backpressure = float(meta["stall"]), float(meta["backpressure"])
    mem = await start(dut, meta, arrays, rand)
    rd_req = arrays["rd_req"]
    rd_drv = StreamDriver(dut, "rd__req", clk, stall=stall, rand=rand)
    rd_mon = StreamMonitor(dut, "rd__data", clk, backpressure=backpressure, rand=rand)
    for name in ("load", "store"):
        StreamDriver(dut, f"{name}_cmd", clk)
        StreamMonitor(dut, f"{name}_resp", clk)
    await ClockCycles(clk, 3)
    dut.rst.value = 0
    counter = CycleCounter(clk)
    t0 = time.perf_counter()
    aw = int(meta["addr_width"])
    rd_send = cocotb.start_soon(rd_drv.send([int(a) | int(b) << aw for a, b in rd_req]))
    rd_recv = cocotb.start_soon(rd_mon.receive(int(rd_req[:, 1].sum()) if len(rd_req) else 0,
                                               timeout_cycles=200_000))
    load_status = await phase(dut, "load", _ints(arrays["load_cmds"]), stall=stall,
                              backpressure=backpressure, rand=rand)
    load_cycles = counter.count
    store_status = await phase(dut, "store", _ints(arrays["store_cmds"]), stall=stall,
                               backpressure=backpressure, rand=rand)
    store_cycles = counter.count - load_cycles
    await rd_send
    rd_beats = await rd_recv
    wall = time.perf_counter() - t0
    cycles = counter.count
    await ClockCycles(clk, 4)
    cocotb.log.info("LOAD %d cycles, STORE %d cycles; %d cycles in %.2f s: %.0f cycles/s",
                    load_cycles, store_cycles, cycles, wall, cycles / max(wall, 1e-9))
    mask = (1 << 8 * nb) - 1
    save_outputs(mem=np.frombuffer(await mem.contents(), np.uint8)[:int(meta["mem_size"])],
                 load_status=np.array(load_status, np.int64), store_status=np.array(store_status, np.int64),
                 rd_data=np.array([np.frombuffer((v & mask).to_bytes(nb, "little"), np.uint8) for v in rd_beats],
                                  np.uint8).reshape(-1, nb),
                 counts=np.frombuffer(int(dut.counts.value).to_bytes((len(dut.counts) + 7) // 8, "little"), np.uint8),
                 load_cycles=np.array(load_cycles), store_cycles=np.array(store_cycles),
                 cycles=np.array(cycles), wall=np.array(wall))


async def _one_command(dut, name, cmd):
    """Send one descriptor and wait for its response with edge triggers only (no Python in the
    cycles between): the benchmark measures the memory model, not the testbench."""
    clk = dut.clk
    valid, ready = getattr(dut, f"{name}_cmd__valid"), getattr(dut, f"{name}_cmd__ready")
    getattr(dut, f"{name}_cmd__payload").value = cmd
    valid.value = 1
    while True:
        await RisingEdge(clk)
        if ready.value:
            break
    valid.value = 0
    resp_valid = getattr(dut, f"{name}_resp__valid")
    getattr(dut, f"{name}_resp__ready").value = 1
    if not resp_valid.value:
        await RisingEdge(resp_valid)
    await RisingEdge(clk)
    status = int(getattr(dut, f"{name}_resp__payload").value)
    getattr(dut, f"{name}_resp__ready").value = 0
    return status


@cocotb.test()
async def loadstore_bench(dut):
    """The descriptors of ``load_cmds`` then of ``store_cmds``, one at a time; the cycles and
    wall time of each phase."""
    arrays, meta = load_inputs()
    rand = rng(meta)
    clk = dut.clk
    await start(dut, meta, arrays, rand)
    dut.rd__req__valid.value = 0
    dut.rd__data__ready.value = 1
    await ClockCycles(clk, 3)
    dut.rst.value = 0
    out = {}
    for name in ("load", "store"):
        t0, c0 = time.perf_counter(), get_sim_time("ns")
        statuses = [await _one_command(dut, name, cmd) for cmd in _ints(arrays[f"{name}_cmds"])]
        out[f"{name}_status"] = np.array(statuses, np.int64)
        out[f"{name}_cycles"] = np.array(int((get_sim_time("ns") - c0) // 10))
        out[f"{name}_wall"] = np.array(time.perf_counter() - t0)
        cocotb.log.info("%s: %d cycles in %.2f s", name, int(out[f"{name}_cycles"]), float(out[f"{name}_wall"]))
    save_outputs(**out)
