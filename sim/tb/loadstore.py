"""cocotb side of the LOAD/STORE test (sim.tb.loadstore_top.LoadStoreTestTop).

Phase 1 sends the LOAD descriptors (``load_cmds``, packed, one row of bytes each) and collects
their responses; phase 2 the STORE descriptors (``store_cmds``), from the cycle after the last
LOAD response. The plain read client ``rd`` reads ``rd_req`` all along, so its bursts interleave
with the LOAD's. Valid gaps (``stall``) and backpressure (``backpressure``) come from pause
generators of the testbench kit (:mod:`sim.tb.common`) seeded from the logged seed. Outputs: the
statuses, the client's beats, the memory afterwards, the event counts and the cycles of each
phase (from reset release through the phase's last response).
"""

import time

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge
from cocotb.utils import get_sim_time

from .common import ClockLoop, StreamSink, StreamSource, load_inputs, random_pause, rng, save_outputs
from .dma import start


def _ints(rows):
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


def _after(done, pause):
    """A pause generator: pause while ``done()`` is false, then as ``pause`` says (``None``:
    never). Checked in the cycle after the one that made ``done()`` true, so a phase starts in
    the cycle after the last response of the one before."""
    while not done():
        yield True
    if pause is None:
        while True:
            yield False
    yield from pause


@cocotb.test()
async def loadstore(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    clk = dut.clk
    nb = int(meta["data_bytes"])
    stall, backpressure = float(meta["stall"]), float(meta["backpressure"])
    mem = await start(dut, meta, arrays, rand)
    rd_req = arrays["rd_req"]
    await ClockCycles(clk, 3)
    dut.rst.value = 0
    # the agents start after reset: cycle 0 is the first rising edge after its release

    def pause(p):
        return random_pause(p, rand.getrandbits(32))

    aw = int(meta["addr_width"])
    rd_src = StreamSource(dut, "rd__req", clk, pause=pause(stall))
    rd_sink = StreamSink(dut, "rd__data", clk, pause=pause(backpressure))
    n_rd = int(rd_req[:, 1].sum()) if len(rd_req) else 0
    rd_src.send_nowait([int(a) | int(b) << aw for a, b in rd_req])
    cmds = {name: _ints(arrays[f"{name}_cmds"]) for name in ("load", "store")}
    resp = {name: StreamSink(dut, f"{name}_resp", clk, pause=pause(backpressure)) for name in cmds}
    load_done = lambda: len(resp["load"].beats) >= len(cmds["load"])   # noqa: E731
    # phase 1 the LOADs; phase 2 the STOREs, from the cycle after the last LOAD response
    src = {"load": StreamSource(dut, "load_cmd", clk, pause=pause(stall)),
           "store": StreamSource(dut, "store_cmd", clk, pause=_after(load_done, pause(stall)))}
    for name, source in src.items():
        source.send_nowait(cmds[name])
    loop = ClockLoop.of(clk)
    t0 = time.perf_counter()
    load_status = await resp["load"].receive(len(cmds["load"]), timeout_cycles=200_000)
    store_status = await resp["store"].receive(len(cmds["store"]), timeout_cycles=200_000)
    rd_beats = await rd_sink.receive(n_rd, timeout_cycles=200_000)
    await loop.until(lambda: all(s.idle() for s in (rd_src, *src.values())), timeout_cycles=200_000,
                     what="loadstore")
    wall = time.perf_counter() - t0

    def end(agents, default=0):
        """Cycles from reset release through the last handshake of ``agents``."""
        return max([a.accepted_at[-1] + 1 for a in agents if a.accepted_at] or [default])

    load_cycles = end([resp["load"]])
    store_cycles = end([resp["store"]], load_cycles) - load_cycles
    cycles = end([rd_src, rd_sink, *src.values(), *resp.values()])
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
