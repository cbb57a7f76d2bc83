"""Testbench of the KV-cache controller: plays a command list with its APPEND data, collects
every response and read-data beat, and models the external K/V memory.

One coroutine drives all five interfaces cycle by cycle (command and append-data streams with
random valid gaps, response and read-data streams with random ready backpressure, the
synchronous memory port), so a run of tens of thousands of commands stays fast. Inputs come
from :func:`sim.kvcache_api.run_kvcache` (see there for the array formats).
"""

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from .common import load_inputs, rng, save_outputs, start_clock_and_reset


def _ints(rows):
    """uint8 rows (little-endian words) → Python ints."""
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


@cocotb.test()
async def kvcache_stream(dut):
    arrays, meta = load_inputs()
    rand = rng(meta)
    cmds = _ints(arrays["cmd"])
    wbeats = _ints(arrays["wdata"])
    cmd_rbeats = [int(x) for x in arrays["cmd_rbeats"]]
    n_cmd, n_w = len(cmds), len(wbeats)
    cmd_stall = float(meta["cmd_stall"])
    data_stall = float(meta["data_stall"])
    resp_bp = float(meta["resp_backpressure"])
    read_bp = float(meta["read_backpressure"])
    timeout = int(meta["timeout_cycles"])
    tail = int(meta["tail_cycles"])
    sentinel = int(meta["sentinel"])
    status_mask = (1 << int(meta["status_bits"])) - 1

    clk = dut.clk
    cmd_valid, cmd_ready, cmd_payload = dut.cmd__valid, dut.cmd__ready, dut.cmd__payload
    w_valid, w_ready, w_payload = dut.wdata__valid, dut.wdata__ready, dut.wdata__payload
    resp_valid, resp_ready, resp_payload = dut.resp__valid, dut.resp__ready, dut.resp__payload
    rd_valid, rd_ready, rd_payload = dut.rdata__valid, dut.rdata__ready, dut.rdata__payload
    mem_raddr, mem_ren, mem_rdata = dut.mem__raddr, dut.mem__ren, dut.mem__rdata
    mem_waddr, mem_wen, mem_wdata = dut.mem__waddr, dut.mem__wen, dut.mem__wdata

    for sig in (cmd_valid, w_valid, resp_ready, rd_ready):
        sig.value = 0
    mem_rdata.value = 0
    await start_clock_and_reset(dut)

    mem = {}
    resps, resp_cycles, rbeats, rcycles, wcycles, ccycles = [], [], [], [], [], []
    ci = wi = 0
    cv = wv = False       # a beat is presented on cmd / wdata
    rr_now = rd_now = 0   # the ready values currently driven
    expected_r = 0
    cycle = idle = 0
    done_at = None
    while True:
        if not cv and ci < n_cmd and not (cmd_stall and rand.random() < cmd_stall):
            cmd_payload.value = cmds[ci]
            cmd_valid.value = 1
            cv = True
        if not wv and wi < n_w and not (data_stall and rand.random() < data_stall):
            w_payload.value = wbeats[wi]
            w_valid.value = 1
            wv = True
        rr = 0 if (resp_bp and rand.random() < resp_bp) else 1
        if rr != rr_now:
            resp_ready.value = rr_now = rr
        rd = 0 if (read_bp and rand.random() < read_bp) else 1
        if rd != rd_now:
            rd_ready.value = rd_now = rd

        await ReadOnly()
        progress = False
        took_cmd = cv and bool(cmd_ready.value)
        took_w = wv and bool(w_ready.value)
        if rr and resp_valid.value:
            word = int(resp_payload.value)
            if len(resps) < n_cmd and (word & status_mask) == 0:
                expected_r += cmd_rbeats[len(resps)]
            resps.append(word)
            resp_cycles.append(cycle)
            progress = True
        if rd and rd_valid.value:
            rbeats.append(int(rd_payload.value))
            rcycles.append(cycle)
            progress = True
        read_word = None
        if mem_ren.value:
            read_word = mem.get(int(mem_raddr.value), sentinel)
        if mem_wen.value:
            mem[int(mem_waddr.value)] = int(mem_wdata.value)
        await RisingEdge(clk)

        if read_word is not None:
            mem_rdata.value = read_word
        if took_cmd:
            ccycles.append(cycle)
            ci += 1
            cv = False
            progress = True
            if ci == n_cmd or cmd_stall:
                cmd_valid.value = 0
        if took_w:
            wcycles.append(cycle)
            wi += 1
            wv = False
            progress = True
            if wi == n_w or data_stall:
                w_valid.value = 0
        cycle += 1
        idle = 0 if progress else idle + 1
        if done_at is None:
            if ci == n_cmd and wi == n_w and len(resps) == n_cmd and len(rbeats) >= expected_r:
                done_at = cycle
            elif idle > timeout:
                raise TimeoutError(
                    f"no handshake for {timeout} cycles at cycle {cycle}: {ci}/{n_cmd} commands "
                    f"and {wi}/{n_w} append beats accepted, {len(resps)} responses and "
                    f"{len(rbeats)}/{expected_r} read beats received")
        elif cycle - done_at >= tail:
            break

    dut._log.info("%d commands, %d responses, %d read beats, %d append beats in %d cycles",
                  n_cmd, len(resps), len(rbeats), n_w, done_at)
    save_outputs(
        resp=np.array([r.to_bytes(16, "little") for r in resps], dtype="S16").view(np.uint8)
        .reshape(len(resps), 16) if resps else np.zeros((0, 16), np.uint8),
        rdata=np.array([r.to_bytes(int(meta["rdata_bytes"]), "little") for r in rbeats],
                       dtype=f"S{meta['rdata_bytes']}").view(np.uint8)
        .reshape(len(rbeats), int(meta["rdata_bytes"])) if rbeats
        else np.zeros((0, int(meta["rdata_bytes"])), np.uint8),
        resp_cycles=np.array(resp_cycles, np.int64), read_cycles=np.array(rcycles, np.int64),
        append_cycles=np.array(wcycles, np.int64), cmd_cycles=np.array(ccycles, np.int64),
        cycles=np.array(done_at, np.int64), expected_read_beats=np.array(expected_r, np.int64),
    )
