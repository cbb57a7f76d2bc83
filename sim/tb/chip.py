"""cocotb testbench of the chip top (hdl/chip.py): external memory (cocotbext-axi AxiRam, random
latency and backpressure on every channel), CSRs through an AxiLiteMaster, one or more programs
run to their interrupt, then the status, the error registers, every counter and the requested
memory regions are read back. Driven by :class:`sim.chip_api.ChipSim`. The persistent session's
testbench (``sim/tb/chip_session.py``) runs programs with the same helpers: :func:`bring_up`
(:func:`make_memory`, :func:`make_csrs`), :func:`start_program`, :func:`finish_program`,
:func:`acknowledge`.

Inputs (run folder): ``segments_addr`` and ``seg<i>`` (the memory image: the address and the
bytes of each segment), meta ``memory`` (``"hdl"``: the Verilog model of the wrapper top,
``"axiram"``: cocotbext-axi), ``data_bytes``, ``runs`` (per run: ``prog_addr``, ``prog_len``,
``ext_size``, ``watchdog``, ``read_back``: list of [name, addr, nbytes], ``clear_after``),
``registers`` (name → offset), ``counters`` (names), ``mem_size``, ``stall``, ``backpressure``,
``errors`` (windows [lo, hi, resp]), ``timeout_cycles``, ``reset_at`` (cycle of a reset in the
middle of run 0, optional), ``traces`` (names of trace outputs ``<name>__valid`` / ``<name>__data``
to record in every cycle, optional: outputs ``trace_<name>_cycle``, ``_run``, ``_data``).
"""

import os
import sys
import time

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotb.utils import get_sim_time

from sim.tb.axi import ExternalMemory, HdlMemory, lite_master
from sim.tb.common import ClockLoop, Tap, load_inputs, rng, save_outputs, start_clock_and_reset

CLOCK_NS = 10
#: Cycles between two looks at a running program (progress lines, the timeout): the testbench
#: does no Python work in the cycles between (the interrupt wakes it).
POLL_CYCLES = 50_000


def _now():
    """The number of the clock cycle the simulation is in."""
    return int(get_sim_time("ns")) // CLOCK_NS


def _progress(text):
    """A progress line in the log, and appended to ``TFA_PROGRESS_FILE`` when it is set (the
    driver's process shows it: ``ChipSim.run(progress=...)``)."""
    print(text, file=sys.stderr, flush=True)
    path = os.environ.get("TFA_PROGRESS_FILE")
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")


class Csrs:
    def __init__(self, master, registers):
        self.m, self.regs = master, registers

    async def write(self, name, value, width=32):
        off = self.regs[name]
        await self.m.write_dword(off, value & 0xFFFFFFFF)
        if width > 32:
            await self.m.write_dword(off + 4, value >> 32)

    async def read(self, name, width=32):
        off = self.regs[name]
        lo = await self.m.read_dword(off)
        if width <= 32:
            return lo
        return lo | (await self.m.read_dword(off + 4)) << 32


def make_memory(dut, meta, rand):
    """The external memory of ``meta`` (``memory``, ``mem_size``, ``data_bytes``, ``stall``,
    ``backpressure``, ``errors``)."""
    if meta.get("memory", "axiram") == "hdl":
        return HdlMemory(dut, dut.clk, size=int(meta["mem_size"]), data_bytes=int(meta["data_bytes"]), rand=rand,
                         stall=meta["stall"], backpressure=meta["backpressure"], errors=meta.get("errors", ()))
    return ExternalMemory(dut, "m_axi_", dut.clk, dut.rst, size=int(meta["mem_size"]), rand=rand,
                          stall=meta["stall"], backpressure=meta["backpressure"], errors=meta.get("errors", ()))


def make_csrs(dut, meta, rand):
    """The CSR master (an AxiLiteMaster with the stalls of ``meta``) over ``meta["registers"]``."""
    return Csrs(lite_master(dut, "s_axil_", dut.clk, dut.rst, rand=rand, stall=meta["stall"],
                            backpressure=meta["backpressure"]), meta["registers"])


async def start_program(csr, run):
    """Program the registers of ``run`` (``prog_addr``, ``prog_len``, ``ext_size``, ``watchdog``),
    clear the counters and START; returns the cycle of the START."""
    await csr.write("PROG_ADDR", run["prog_addr"], 64)
    await csr.write("PROG_LEN", run["prog_len"])
    await csr.write("EXT_SIZE", run.get("ext_size", 0), 64)
    if run.get("watchdog") is not None:
        await csr.write("WATCHDOG", run["watchdog"])
    await csr.write("COUNTERS_CLEAR", 1)
    t0 = _now()
    await csr.write("START", 1)
    return t0


async def finish_program(dut, csr, t0, *, limit, counters, label, progress=_progress):
    """Wait for the interrupt of the program started at cycle ``t0`` (``TimeoutError`` after
    ``limit`` cycles; a ``progress`` line about every 10 s, ``label`` first), then read the
    status, the error registers and ``counters``. Returns a dict: ``wall_cycles``, ``status``,
    ``error_code``, ``error_detail``, ``error_index``, ``irq_status``, ``counters``."""
    wall = last = time.monotonic()
    while not dut.irq.value:
        await First(RisingEdge(dut.irq), Timer(POLL_CYCLES * CLOCK_NS, "ns"))
        if _now() - t0 > limit:
            raise TimeoutError(f"{label}: no interrupt in {limit} cycles")
        if not dut.irq.value and time.monotonic() - last > 10:
            last = time.monotonic()
            done = await csr.read("CNT_PROC_RETIRED", 48) if "proc_retired" in counters else None
            rate = (_now() - t0) / max(last - wall, 1e-9)
            progress(f"  {label}: cycle {_now() - t0:,}"
                     + (f", {done} instructions retired" if done is not None else "")
                     + f", {rate:,.0f} cycles/s")
    out = {"wall_cycles": np.array(_now() - t0)}
    for name in ("STATUS", "ERROR_CODE", "ERROR_DETAIL", "ERROR_INDEX", "IRQ_STATUS"):
        out[name.lower()] = np.array(await csr.read(name))
    out["counters"] = np.array([await csr.read(f"CNT_{c.upper()}", 48) for c in counters], np.uint64)
    return out


async def acknowledge(csr, *, clear=True):
    """Acknowledge the interrupt and (``clear``) return the chip to IDLE."""
    await csr.write("IRQ_STATUS", 3)
    if clear:
        await csr.write("CLEAR", 1)


async def bring_up(dut, *, sparse=False):
    """Clock and reset, the external memory model loaded with the run folder's image (``sparse``:
    only the image's words) and the CSR master: ``(meta, memory, csrs)``."""
    arrays, meta = load_inputs()
    rand = rng(meta)
    await start_clock_and_reset(dut)
    mem = make_memory(dut, meta, rand)
    for i, addr in enumerate(arrays["segments_addr"]):
        mem.write(int(addr), arrays[f"seg{i}"].tobytes())
    await mem.fill(sparse=sparse)
    return meta, mem, make_csrs(dut, meta, rand)


@cocotb.test()
async def chip(dut):
    meta, mem, csr = await bring_up(dut)
    out = {}
    taps = {name: Tap(dut, f"{name}__data", f"{name}__valid") for name in meta.get("traces", ())}
    run_starts = []
    for r, run in enumerate(meta["runs"]):
        if taps:
            run_starts.append(ClockLoop.of(dut.clk).cycle)
        t0 = await start_program(csr, run)
        if r == 0 and meta.get("reset_at") is not None:
            await ClockCycles(dut.clk, int(meta["reset_at"]))
            dut.rst.value = 1
            await RisingEdge(dut.clk)
            await RisingEdge(dut.clk)
            dut.rst.value = 0
            await RisingEdge(dut.clk)
            out[f"run{r}_reset"] = np.array(1)
            continue
        res = await finish_program(dut, csr, t0, limit=int(meta["timeout_cycles"]), counters=meta["counters"],
                                   label=f"run {r + 1}/{len(meta['runs'])}")
        out.update({f"run{r}_{k}": v for k, v in res.items()})
        if run.get("read_back"):
            image = await mem.contents()
            for name, addr, nbytes in run["read_back"]:
                out[f"run{r}_{name}"] = np.frombuffer(image[int(addr):int(addr) + int(nbytes)], np.uint8).copy()
        await acknowledge(csr, clear=run.get("clear_after", True))
    for name, tap in taps.items():
        nbytes = (len(getattr(dut, f"{name}__data")) + 7) // 8
        out[f"trace_{name}_cycle"] = np.array(tap.cycles, np.int64)
        out[f"trace_{name}_run"] = np.searchsorted(run_starts, tap.cycles, side="right").astype(np.int64) - 1
        out[f"trace_{name}_data"] = np.array([list(v.to_bytes(nbytes, "little")) for v in tap.values],
                                             np.uint8).reshape(len(tap.values), nbytes)
    save_outputs(**out)
