"""LOAD and STORE with the AXI engines in Verilator against cocotbext-axi's AxiRam
(sim/tb/loadstore.py): random descriptors of every element size (and bad ones) against
golden.loadstore, a third read client interleaving with LOAD, SLVERR/DECERR windows, random
latency and backpressure on every AXI channel and stream; the rates of long transfers."""

import os
import random

import numpy as np
import pytest
from test_loadstore_amaranth import random_descriptors

from golden.loadstore import Descriptor, check, elem_code, load, store
from hdl.counters import COUNTER_WIDTH
from hdl.loadstore import default_spad_addr_width, load_desc_layout, store_desc_layout
from sim.runner import run
from sim.tb.loadstore_top import counter_layout, loadstore_design
from spec.codes import LoadStoreStatus


def new_seed():
    """A random seed, or ``TFA_DMA_SEED`` to repeat a run; printed."""
    seed = int(os.environ.get("TFA_DMA_SEED") or random.randrange(1 << 30))
    print("seed", seed, "(repeat with TFA_DMA_SEED)")
    return seed


AW = 32
MEM = 1 << 18
SPAD_WORDS = 1024
LOAD_REGION, TRAFFIC_REGION, STORE_REGION, DUMP_REGION = 0, 1 << 16, 2 << 16, 3 << 16
SLVERR, DECERR = 2, 3
GEOMETRIES = {"tiny": (32, 2), "default": (128, 8)}


def top_params(data_width, lanes):
    return dict(data_width=data_width, lanes=lanes, spad_words=SPAD_WORDS, addr_width=AW)


def packed(layout, descs, signed):
    nbytes = (layout.size + 7) // 8
    rows = []
    for d in descs:
        fields = dict(ext_addr=d.ext_addr, ext_stride=d.ext_stride, rows=d.rows, elems=d.elems,
                      elem_bytes=elem_code(d.elem_bytes), spad_addr=d.spad_addr, spad_stride=d.spad_stride)
        if signed:
            fields["signed"] = int(d.signed)
        word = sum((int(v) & ((1 << layout[k].width) - 1)) << layout[k].offset for k, v in fields.items())
        rows.append(np.frombuffer(word.to_bytes(nbytes, "little"), np.uint8))
    return np.array(rows, np.uint8).reshape(len(descs), nbytes)


def rows_hit(d, windows, n_bytes_of_row):
    return any(lo < d.ext_addr + r * d.ext_stride + n_bytes_of_row and d.ext_addr + r * d.ext_stride < hi
               for r in range(d.rows) for lo, hi, _ in windows)


def shifted(d, base):
    return Descriptor(d.ext_addr + base, d.ext_stride, d.rows, d.elems, d.elem_bytes, d.spad_addr,
                      d.spad_stride, d.signed)


def within(d, nb, size=1 << 16):
    """``d`` stays in its 64 KiB region (the amaranth tests' EXT_RANGE case does not, on a
    32-bit bus: it would reach the next region)."""
    end = d.ext_addr % size + max(d.rows - 1, 0) * d.ext_stride + -(-d.elems * d.elem_bytes // nb) * nb
    return end <= size


def scenario(data_width, lanes, seed, n=12):
    rand = random.Random(seed)
    nb = data_width // 8
    mem = np.frombuffer(rand.randbytes(MEM), np.uint8).copy()
    loads = [d for d in random_descriptors(rand, nb, lanes, SPAD_WORDS, n) if within(d, nb)]
    loads.append(Descriptor((1 << AW) - nb, nb, 2, 1, 1, 0, 1))                     # EXT_RANGE
    stores = [shifted(d, STORE_REGION) for d in random_descriptors(rand, nb, lanes, SPAD_WORDS, n)
              if within(d, nb)]
    stores.append(Descriptor(DUMP_REGION, max(4 * lanes, nb), SPAD_WORDS, lanes, 4, 0, 1))  # the whole spad
    good_load = [d for d in loads if check(d, data_bytes=nb, lanes=lanes, spad_words=SPAD_WORDS,
                                           addr_width=AW) == 0]
    good_store = [d for d in stores[:-1] if check(d, data_bytes=nb, lanes=lanes, spad_words=SPAD_WORDS,
                                                  addr_width=AW) == 0]
    windows = []
    for pick, resp in ((good_load[0], SLVERR), (good_load[1], DECERR), (good_store[0], SLVERR)):
        lo = pick.ext_addr + (pick.rows - 1) * pick.ext_stride
        windows.append((lo, lo + nb, resp))
    traffic = []
    for _ in range(8):
        beats = rand.choice([1, 7, 40])
        traffic.append((TRAFFIC_REGION + nb * rand.randrange(0, 4096 // nb), beats))
    return mem, loads, stores, windows, np.array(traffic, np.int64)


def expected(data_width, lanes, mem, loads, stores, windows):
    nb = data_width // 8
    seen = mem.copy()                       # what a read returns: zeros in an error window
    for lo, hi, _ in windows:
        seen[lo:hi] = 0
    spad = np.zeros((SPAD_WORDS, lanes), np.uint32)
    out = mem.copy()
    statuses = []
    for d in loads:
        st = check(d, data_bytes=nb, lanes=lanes, spad_words=SPAD_WORDS, addr_width=AW)
        if st == 0:
            load(seen, spad, d)
            nbytes = -(-d.elems * d.elem_bytes // nb) * nb
            st = LoadStoreStatus.AXI_ERROR if rows_hit(d, windows, nbytes) else st
        statuses.append(int(st))
    store_statuses = []
    for d in stores:
        st = check(d, data_bytes=nb, lanes=lanes, spad_words=SPAD_WORDS, addr_width=AW)
        if st == 0:
            before = out.copy()
            store(spad, out, d)
            for lo, hi, _ in windows:
                out[lo:hi] = before[lo:hi]
            st = LoadStoreStatus.AXI_ERROR if rows_hit(d, windows, d.elems * d.elem_bytes) else st
        store_statuses.append(int(st))
    return statuses, store_statuses, out, spad


def run_loadstore(data_width, lanes, mem, loads, stores, windows, traffic, *, seed, stall, backpressure,
                  memory="axiram"):
    params = top_params(data_width, lanes)
    design = loadstore_design(memory=memory, mem_bytes=MEM, **params)
    spad_aw = default_spad_addr_width(SPAD_WORDS)
    data = {"mem": mem, "load_cmds": packed(load_desc_layout(AW, spad_aw), loads, True),
            "store_cmds": packed(store_desc_layout(AW, spad_aw), stores, False), "rd_req": traffic,
            "seed": seed, "data_bytes": data_width // 8, "addr_width": AW, "mem_size": MEM, "stall": stall,
            "backpressure": backpressure, "errors": [list(w) for w in windows], "memory": memory}
    return run(design, "sim.tb.loadstore", testcase="loadstore", data=data)


def counts(data_width, lanes, raw):
    names = [name for name, _ in counter_layout(data_width)]
    word = int.from_bytes(bytes(raw), "little")
    return {n: (word >> (i * COUNTER_WIDTH)) & ((1 << COUNTER_WIDTH) - 1) for i, n in enumerate(names)}


@pytest.mark.cocotb
@pytest.mark.parametrize("config, memory", [
    pytest.param(c, m, marks=pytest.mark.xdist_group(f"loadstore_{c}_{m}"))
    for c, m in [("tiny", "hdl"), ("default", "axiram"), ("default", "hdl")]])
@pytest.mark.parametrize("stalls", [dict(stall=0.0, backpressure=0.0), dict(stall=0.3, backpressure=0.4)],
                         ids=["no_stalls", "random_stalls"])
def test_random_loads_and_stores_match_golden_with_errors_and_interleaved_reads(config, stalls, memory):
    """``memory``: cocotbext-axi's AxiRam or the Verilog model (one build each: the model is
    checked against AxiRam on the default geometry, the tiny one runs on the model)."""
    seed = new_seed()
    data_width, lanes = GEOMETRIES[config]
    mem, loads, stores, windows, traffic = scenario(data_width, lanes, seed)
    want_load, want_store, want_mem, want_spad = expected(data_width, lanes, mem, loads, stores, windows)
    assert LoadStoreStatus.AXI_ERROR in want_load and LoadStoreStatus.AXI_ERROR in want_store
    out = run_loadstore(data_width, lanes, mem, loads, stores, windows, traffic, seed=seed, memory=memory,
                        **stalls)
    assert list(out["load_status"]) == want_load
    assert list(out["store_status"]) == want_store
    nb = data_width // 8
    want_rd = np.concatenate([mem[a + i * nb:a + (i + 1) * nb] for a, n in traffic for i in range(n)])
    assert np.array_equal(out["rd_data"].reshape(-1), want_rd)
    dump = out["mem"][DUMP_REGION:DUMP_REGION + SPAD_WORDS * max(4 * lanes, nb)]
    got_spad = dump.reshape(SPAD_WORDS, -1)[:, :4 * lanes].copy().view("<u4")
    bad = np.flatnonzero((got_spad != want_spad).any(axis=1))
    assert bad.size == 0, f"scratchpad words {bad[:8]} differ"
    diff = np.flatnonzero(out["mem"] != want_mem)
    assert diff.size == 0, f"memory differs at {diff[:8]} (of {diff.size})"
    # a bad descriptor moves nothing: the bytes on the bus are the good descriptors' only
    c = counts(data_width, lanes, out["counts"])
    ran_loads = [d for d, st in zip(loads, want_load, strict=True) if st in (0, 1)]
    ran_stores = [d for d, st in zip(stores, want_store, strict=True) if st in (0, 1)]
    assert c["load_spad_writes"] == sum(d.rows * -(-d.elems // lanes) for d in ran_loads)
    assert c["reader_read_bytes"] == nb * (sum(d.rows * -(-d.elems * d.elem_bytes // nb) for d in ran_loads)
                                           + int(traffic[:, 1].sum()))
    assert c["writer_write_bytes"] == sum(d.rows * d.elems * d.elem_bytes for d in ran_stores)
    assert c["store_spad_reads"] == sum(d.rows * -(-d.elems // lanes) for d in ran_stores)
    assert c["writer_bad_id"] == 0 and c["reader_bad_id"] == 0


@pytest.mark.cocotb
@pytest.mark.xdist_group("loadstore_default_axiram")
@pytest.mark.parametrize("elem_bytes", [1, 2, 4])
def test_long_load_and_store_move_min_of_bus_elements_and_lanes_per_cycle(elem_bytes):
    """default geometry (128-bit bus, 8 lanes), no stalls: 32 rows of 256 elements each way
    (the stand-in scratchpad's 1024 words); each phase within 10 % (plus 60 cycles) of
    elements / elements_per_cycle."""
    data_width, lanes = GEOMETRIES["default"]
    nb = data_width // 8
    elems, rows = 256, 32
    words = elems // lanes
    rand = random.Random(elem_bytes)
    mem = np.frombuffer(rand.randbytes(MEM), np.uint8).copy()
    loads = [Descriptor(LOAD_REGION, elems * elem_bytes, rows, elems, elem_bytes, 0, words, True)]
    stores = [Descriptor(STORE_REGION, elems * elem_bytes, rows, elems, elem_bytes, 0, words)]
    want_load, want_store, want_mem, _ = expected(data_width, lanes, mem, loads, stores, [])
    out = run_loadstore(data_width, lanes, mem, loads, stores, [], np.zeros((0, 2), np.int64), seed=1,
                        stall=0.0, backpressure=0.0)
    assert list(out["load_status"]) == want_load == [0] and list(out["store_status"]) == want_store == [0]
    assert np.array_equal(out["mem"], want_mem)
    ideal = rows * elems / min(nb // elem_bytes, lanes)
    print(f"elem_bytes {elem_bytes}: ideal {ideal:.0f}, LOAD {int(out['load_cycles'])}, "
          f"STORE {int(out['store_cycles'])} cycles; {float(out['cycles']) / float(out['wall']):.0f} cycles/s")
    assert int(out["load_cycles"]) <= 1.1 * ideal + 60
    assert int(out["store_cycles"]) <= 1.1 * ideal + 60
