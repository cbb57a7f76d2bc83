"""DMA benchmark: LOAD and STORE of long transfers through the AXI engines on the Verilated RTL
against an external-memory model; writes build/bench/dma.json.

For each memory model (``axiram``: cocotbext-axi's AxiRam, Python per beat; ``hdl``: the Verilog
model sim/models/tfa_axi_mem.v, no Python per beat) and element size:

* **rate**: elements moved per cycle, against ``min(data_bytes / elem_bytes, lanes)``;
* **simulation speed**: simulated cycles per host second of the phase (the testbench has no
  Python in the cycles between a descriptor and its response, so this is the memory model's
  cost). Host rates are noisy on a shared machine: compare medians.

``python -m bench.dma [--rows N] [--config NAME]``.
"""

import argparse
import sys

import numpy as np

from bench import write_json
from golden.loadstore import Descriptor, elem_code
from hdl.config import get_config
from hdl.loadstore import default_spad_addr_width, load_desc_layout, store_desc_layout
from sim.runner import run
from sim.tb.loadstore_top import loadstore_design

SPAD_WORDS = 1024
AW = 32


def _packed(layout, d, signed):
    fields = dict(ext_addr=d.ext_addr, ext_stride=d.ext_stride, rows=d.rows, elems=d.elems,
                  elem_bytes=elem_code(d.elem_bytes), spad_addr=d.spad_addr, spad_stride=d.spad_stride)
    if signed:
        fields["signed"] = int(d.signed)
    word = sum(int(v) << layout[k].offset for k, v in fields.items())
    nbytes = (layout.size + 7) // 8
    return np.frombuffer(word.to_bytes(nbytes, "little"), np.uint8).reshape(1, nbytes)


def measure(config, elem_bytes, rows, elems=256, memory="axiram"):
    mem_cfg = get_config(config).memory
    nb, lanes = mem_cfg.axi_data_bits // 8, mem_cfg.spad_lanes
    params = dict(data_width=mem_cfg.axi_data_bits, lanes=lanes, spad_words=SPAD_WORDS, addr_width=AW)
    row_bytes = elems * elem_bytes
    stride = -(-row_bytes // nb) * nb
    size = 1 << (2 * rows * -(-elems * 4 // nb) * nb - 1).bit_length()   # one build for every size
    design = loadstore_design(memory=memory, mem_bytes=size, **params)
    words = -(-elems // lanes)
    spad_aw = default_spad_addr_width(SPAD_WORDS)
    load = Descriptor(0, stride, rows, elems, elem_bytes, 0, 0, True)   # every row to the same words
    store = Descriptor(rows * stride, stride, rows, elems, elem_bytes, 0, 0)
    data = {"mem": np.zeros(size, np.uint8), "load_cmds": _packed(load_desc_layout(AW, spad_aw), load, True),
            "store_cmds": _packed(store_desc_layout(AW, spad_aw), store, False), "rd_req": np.zeros((0, 2), np.int64),
            "seed": 1, "data_bytes": nb, "addr_width": AW, "mem_size": size, "stall": 0.0, "backpressure": 0.0,
            "memory": memory}
    out = run(design, "sim.tb.loadstore", testcase="loadstore_bench", data=data)
    ideal = rows * elems / min(nb // elem_bytes, lanes)
    result = {"config": config, "memory": memory, "elem_bytes": elem_bytes, "rows": rows, "elems": elems,
              "words_per_row": words, "ideal_cycles": ideal}
    for phase in ("load", "store"):
        cycles, wall = int(out[f"{phase}_cycles"]), float(out[f"{phase}_wall"])
        assert list(out[f"{phase}_status"]) == [0], f"{phase} answered {out[f'{phase}_status']}"
        result[phase] = {"cycles": cycles, "efficiency": round(ideal / cycles, 3),
                         "cycles_per_second": round(cycles / wall)}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--memory", action="append", help="axiram and/or hdl (default: both available)")
    args = parser.parse_args(argv)
    memories = args.memory or ["axiram", "hdl"]
    results = []
    for memory in memories:
        for eb in (1, 2, 4):
            r = measure(args.config, eb, args.rows, memory=memory)
            results.append(r)
            print(f"{memory:7s} elem_bytes {eb}: LOAD {r['load']['cycles']} cycles (ideal {r['ideal_cycles']:.0f}, "
                  f"{r['load']['cycles_per_second']} cycles/s), STORE {r['store']['cycles']} cycles "
                  f"({r['store']['cycles_per_second']} cycles/s)", flush=True)
    write_json("dma", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
