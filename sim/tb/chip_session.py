"""cocotb testbench of a persistent chip simulation, driven by
:class:`sim.chip_session.ChipSession`: the chip top (hdl/chip.py) with its external memory
(the Verilog model or cocotbext-axi, random latency and backpressure as in ``sim/tb/chip.py``),
loaded once with the initial image, then a loop over requests that arrive on a Unix-domain socket
(``meta["socket"]``, :mod:`sim.session_wire`):

``{"op": "run", "segments": {addr: bytes}, "run": {prog_addr, prog_len, ext_size, watchdog},
"read_back": [(name, addr, nbytes)], "timeout_cycles": n}``
    write the segments into the running memory (every other word keeps its contents, the KV
    cache and every other state of the chip stay as the last program left them), run the
    program to its interrupt, read the status, error registers and counters and the regions,
    acknowledge the interrupt, CLEAR; answer ``{"result": {...}}``. While the program runs, a
    ``{"progress": line}`` message about every 10 s.
``{"op": "close"}`` (or the driver closing the socket)
    end the test.

A request that fails (a timeout, a bad segment) is answered ``{"error": text}`` and ends the
simulation: the chip's state is then unknown.

Inputs (run folder): ``segments_addr``, ``seg<i>`` (the initial image) and the meta of
``sim/tb/chip.py`` (``memory``, ``data_bytes``, ``registers``, ``counters``, ``mem_size``,
``stall``, ``backpressure``, ``errors``), plus ``socket`` (its path).
"""

import socket
import traceback

import cocotb
import numpy as np

from sim.session_wire import recv_message, send_message
from sim.tb.chip import acknowledge, bring_up, finish_program, start_program
from sim.tb.common import save_outputs


@cocotb.test()
async def chip_session(dut):
    meta, mem, csr = await bring_up(dut, sparse=True)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(meta["socket"])
    served = 0
    try:
        while True:
            try:
                req = recv_message(conn)
            except EOFError:
                break
            if req.get("op") == "close":
                break
            try:
                result = await _serve(dut, csr, mem, meta, req, conn, served)
            except Exception:
                send_message(conn, {"error": traceback.format_exc()})
                raise
            send_message(conn, {"result": result})
            served += 1
    finally:
        conn.close()
    save_outputs(requests=np.array(served))


async def _serve(dut, csr, mem, meta, req, conn, index):
    if req.get("op") != "run":
        raise ValueError(f"unknown request {req.get('op')!r}")
    await mem.update(req.get("segments", {}))
    run = req["run"]
    t0 = await start_program(csr, run)
    res = await finish_program(dut, csr, t0, limit=int(req["timeout_cycles"]), counters=meta["counters"],
                               label=f"request {index + 1}",
                               progress=lambda line: send_message(conn, {"progress": line}))
    spans = [(a, n) for _, a, n in req.get("read_back", ())]
    for (name, _, _), data in zip(req.get("read_back", ()), await mem.regions(spans), strict=True):
        res[name] = np.frombuffer(data, np.uint8).copy()
    await acknowledge(csr)
    return res
