"""The AXI read and write engines in Verilator against cocotbext-axi's AxiRam: several clients
interleaving random requests (4 KiB crossings, bursts longer than max_burst, one-beat
requests), random latency and backpressure on every AXI channel and every client stream,
SLVERR/DECERR windows, reads answered out of order between IDs, event counts, and the
full-rate streaming of a long request."""

import os
import random

import numpy as np
import pytest

from hdl.counters import COUNTER_WIDTH
from hdl.dma import read_events_layout, write_events_layout
from sim.runner import run
from sim.tb.dma_top import engines_design


def new_seed():
    """A random seed, or ``TFA_DMA_SEED`` to repeat a run; printed."""
    seed = int(os.environ.get("TFA_DMA_SEED") or random.randrange(1 << 30))
    print("seed", seed, "(repeat with TFA_DMA_SEED)")
    return seed


SLVERR, DECERR = 2, 3
MEM = 1 << 16

SMALL = dict(addr_width=32, data_width=32, read_clients=3, write_clients=2, max_burst=8,
             max_outstanding=4, fifo_depth=16)
WIDE = dict(addr_width=32, data_width=128, read_clients=3, write_clients=2, max_burst=64,
            max_outstanding=8, fifo_depth=128)

STALLS = {
    "no_stalls": dict(stall=0.0, backpressure=0.0),
    "random_stalls": dict(stall=0.3, backpressure=0.4),
}


def bursts(addr, beats, nb, max_burst):
    out = 0
    while beats:
        n = min(beats, max_burst, (4096 - addr % 4096) // nb)
        beats -= n
        addr += n * nb
        out += 1
    return out


def decode_counts(params, name, raw):
    """The counts of ``EventCounters`` (one COUNTER_WIDTH field per event, in layout order)."""
    layout = (read_events_layout if name == "rd" else write_events_layout)(params["data_width"])
    word = int.from_bytes(bytes(raw), "little")
    return {n: (word >> (i * COUNTER_WIDTH)) & ((1 << COUNTER_WIDTH) - 1) for i, (n, _) in enumerate(layout)}


def random_requests(rand, lo, hi, nb, max_burst, n):
    """``n`` requests inside ``[lo, hi)``: single beats, exactly max_burst, a beat more, long
    ones, and ones that start just before a 4 KiB boundary."""
    reqs = []
    for _ in range(n):
        kind = rand.random()
        if kind < 0.2:
            beats = 1
        elif kind < 0.4:
            beats = rand.choice([max_burst, max_burst + 1, 2 * max_burst + 3])
        else:
            beats = rand.randrange(1, 6 * max_burst)
        span = beats * nb
        if rand.random() < 0.3:
            page = rand.randrange(lo // 4096 + 1, hi // 4096)
            addr = page * 4096 - nb * rand.randrange(1, min(beats, 8) + 1)
        else:
            addr = rand.randrange(lo, hi - span, nb)
        addr = max(lo, min(addr, hi - span))
        reqs.append((addr, beats))
    return np.array(reqs, np.int64)


def make_scenario(params, seed, *, errors=True, n_req=12):
    rand = random.Random(seed)
    nb = params["data_width"] // 8
    mb = params["max_burst"]
    mem = np.frombuffer(rand.randbytes(MEM), np.uint8).copy()
    data = {"mem": mem}
    region = MEM // 8
    windows = []
    if errors:
        windows = [(1 * region + 3 * nb * 7, 1 * region + 3 * nb * 7 + nb, SLVERR),
                   (2 * region + 40 * nb, 2 * region + 44 * nb, DECERR),
                   (5 * region + 8 * nb, 5 * region + 9 * nb, SLVERR),
                   (6 * region + 16 * nb, 6 * region + 20 * nb, DECERR)]
    for c in range(params["read_clients"]):
        data[f"rd{c}_req"] = random_requests(rand, c * region, (c + 1) * region, nb, mb, n_req)
        if errors and c in (1, 2):   # hit the windows surely once
            lo = windows[c - 1][0]
            data[f"rd{c}_req"][3] = (lo - lo % nb - nb, 3)
    for c in range(params["write_clients"]):
        lo = (5 + c) * region
        reqs = random_requests(rand, lo, lo + region, nb, mb, n_req)
        if errors:
            reqs[2] = (windows[2 + c][0] - 2 * nb, 4)
        beats = int(reqs[:, 1].sum())
        data[f"wr{c}_req"] = reqs
        data[f"wr{c}_data"] = np.frombuffer(rand.randbytes(beats * nb), np.uint8).reshape(beats, nb).copy()
        strb = np.array([[rand.random() < 0.8 for _ in range(nb)] for _ in range(beats)], np.uint8)
        strb[rand.randrange(beats)] = 0          # a beat that writes nothing
        strb[: beats // 2] = 1
        data[f"wr{c}_strb"] = strb
    return data, windows


def window_resp(windows, addr, length):
    for lo, hi, resp in windows:
        if addr < hi and addr + length > lo:
            return resp
    return 0


def expected(params, data, windows):
    nb = params["data_width"] // 8
    want = {}
    for c in range(params["read_clients"]):
        beats, last, err = [], [], []
        for addr, n in data[f"rd{c}_req"]:
            bad = False
            for i in range(n):
                a = addr + i * nb
                e = window_resp(windows, a, nb)
                bad |= bool(e)
                beats.append(np.zeros(nb, np.uint8) if e else data["mem"][a:a + nb])
                last.append(i == n - 1)
                err.append(bad and i == n - 1)
        want[f"rd{c}"] = (np.array(beats, np.uint8).reshape(-1, nb), np.array(last, np.uint8),
                          np.array(err, np.uint8))
    mem = data["mem"].copy()
    for c in range(params["write_clients"]):
        k = 0
        done = []
        for addr, n in data[f"wr{c}_req"]:
            bad = False
            for i in range(n):
                a = addr + i * nb
                strb = data[f"wr{c}_strb"][k].astype(bool)
                if strb.any() and window_resp(windows, a, nb):
                    bad = True
                else:
                    mem[a:a + nb][strb] = data[f"wr{c}_data"][k][strb]
                k += 1
            done.append(bad)
        want[f"wr{c}"] = np.array(done, np.uint8)
    return want, mem


def run_engines(params, data, windows, *, seed, stall, backpressure, interleave=False, memory="axiram",
                **overrides):
    design = engines_design(memory=memory, mem_bytes=MEM, **params)
    meta = dict(seed=seed, memory=memory, **overrides, data_bytes=params["data_width"] // 8,
                addr_width=params["addr_width"],
                read_clients=params["read_clients"], write_clients=params["write_clients"],
                mem_size=MEM, stall=stall, backpressure=backpressure, interleave=interleave,
                errors=[list(w) for w in windows])
    return run(design, "sim.tb.dma", testcase="engines", data={**data, **meta})


def check(params, data, windows, out):
    want, mem = expected(params, data, windows)
    for c in range(params["read_clients"]):
        beats, last, err = want[f"rd{c}"]
        assert np.array_equal(out[f"rd{c}_data"], beats), f"read client {c}: data"
        assert np.array_equal(out[f"rd{c}_last"], last), f"read client {c}: last"
        assert np.array_equal(out[f"rd{c}_error"], err), f"read client {c}: error"
    for c in range(params["write_clients"]):
        assert np.array_equal(out[f"wr{c}_done"], want[f"wr{c}"]), f"write client {c}: done"
    diff = np.flatnonzero(out["mem"] != mem)
    assert diff.size == 0, f"memory differs at {diff[:8]} (of {diff.size})"
    nb = params["data_width"] // 8
    rd = decode_counts(params, "rd", out["rd_counts"])
    wr = decode_counts(params, "wr", out["wr_counts"])
    reads = [r for c in range(params["read_clients"]) for r in data[f"rd{c}_req"]]
    writes = [r for c in range(params["write_clients"]) for r in data[f"wr{c}_req"]]
    assert rd["read_bursts"] == sum(bursts(a, n, nb, params["max_burst"]) for a, n in reads)
    assert rd["read_bytes"] == nb * sum(n for _, n in reads)
    assert wr["write_bursts"] == sum(bursts(a, n, nb, params["max_burst"]) for a, n in writes)
    assert wr["write_bytes"] == sum(int(data[f"wr{c}_strb"].sum()) for c in range(params["write_clients"]))
    assert rd["bad_id"] == 0 and wr["bad_id"] == 0
    return rd, wr


@pytest.mark.cocotb
@pytest.mark.xdist_group("dma_small")
@pytest.mark.parametrize("memory", ["axiram", "hdl"])
@pytest.mark.parametrize("stalls", STALLS)
def test_three_readers_and_two_writers_interleave_with_errors_and_get_exact_data(stalls, memory):
    """Against cocotbext-axi's AxiRam and against the Verilog memory model (which must agree)."""
    seed = new_seed()
    data, windows = make_scenario(SMALL, seed)
    out = run_engines(SMALL, data, windows, seed=seed, memory=memory, **STALLS[stalls])
    rd, wr = check(SMALL, data, windows, out)
    if stalls == "random_stalls":
        assert rd["stall_ar"] > 0 and wr["stall_aw"] > 0 and wr["stall_w"] > 0


@pytest.mark.cocotb
@pytest.mark.xdist_group("dma_small")
def test_reads_answered_interleaved_between_ids_reach_the_right_clients_in_order():
    seed = new_seed()
    data, windows = make_scenario(SMALL, seed)
    out = run_engines(SMALL, data, windows, seed=seed, stall=0.2, backpressure=0.3, interleave=True)
    check(SMALL, data, windows, out)


@pytest.mark.cocotb
@pytest.mark.xdist_group("dma_wide")
def test_wide_bus_random_traffic_with_stalls_matches_the_memory_model():
    seed = new_seed()
    data, windows = make_scenario(WIDE, seed, n_req=6)
    out = run_engines(WIDE, data, windows, seed=seed, stall=0.2, backpressure=0.2)
    check(WIDE, data, windows, out)


def idle(params, nb):
    """Inputs of a run where no client does anything (tests fill in the clients they use)."""
    data = {f"rd{c}_req": np.zeros((0, 2), np.int64) for c in range(params["read_clients"])}
    for c in range(params["write_clients"]):
        data.update({f"wr{c}_req": np.zeros((0, 2), np.int64), f"wr{c}_data": np.zeros((0, nb), np.uint8),
                     f"wr{c}_strb": np.zeros((0, nb), np.uint8)})
    return data


@pytest.mark.cocotb
@pytest.mark.xdist_group("dma_wide")
@pytest.mark.parametrize("direction", ["read", "write"])
def test_a_long_transfer_streams_one_beat_per_cycle(direction):
    """A 512-beat (8 KiB) transfer with no stalls (AxiRam) takes at most beats + 30 cycles to
    read, and beats + max_burst + 30 to write (a write burst leaves once its data is all
    buffered)."""
    nb, beats = 16, 512
    rand = random.Random(1)
    data = {**idle(WIDE, nb), "mem": np.frombuffer(rand.randbytes(MEM), np.uint8).copy()}
    if direction == "read":
        data["rd0_req"] = np.array([(4096, beats)], np.int64)
    else:
        data["wr0_req"] = np.array([(32768, beats)], np.int64)
        data["wr0_data"] = np.frombuffer(rand.randbytes(beats * nb), np.uint8).reshape(beats, nb).copy()
        data["wr0_strb"] = np.ones((beats, nb), np.uint8)
    out = run_engines(WIDE, data, [], seed=1, stall=0.0, backpressure=0.0)
    check(WIDE, data, [], out)
    print("cycles", int(out["cycles"]), "wall", float(out["wall"]))
    assert int(out["cycles"]) <= beats + 30 + (WIDE["max_burst"] if direction == "write" else 0)


@pytest.mark.cocotb
@pytest.mark.xdist_group("dma_wide")
def test_a_slow_reader_does_not_hold_up_the_other_readers():
    """Client 0 takes a beat in 1 cycle of 20; clients 1 and 2 read 1024 beats each at once and
    finish within 2500 cycles (2048 beats and client 0's few), long before client 0 (credits: no R
    beat ever waits)."""
    params = WIDE
    rand = random.Random(2)
    data = {**idle(params, 16), "mem": np.frombuffer(rand.randbytes(MEM), np.uint8).copy(),
            "rd0_req": np.array([(0, 1024)], np.int64), "rd1_req": np.array([(16384, 1024)], np.int64),
            "rd2_req": np.array([(32768, 1024)], np.int64)}
    out = run_engines(params, data, [], seed=2, stall=0.0, backpressure=0.0, memory="hdl",
                      rd_backpressure=[0.95, 0.0, 0.0])
    check(params, data, [], out)
    print({c: int(out[f"rd{c}_finished"]) for c in range(3)})
    assert int(out["rd1_finished"]) <= 2500 and int(out["rd2_finished"]) <= 2500
    assert int(out["rd0_finished"]) > 10_000


@pytest.mark.cocotb
@pytest.mark.xdist_group("dma_wide")
def test_a_slow_writer_does_not_hold_up_the_other_writer():
    """Client 0 gives a data beat in 1 cycle of 20; client 1 writes 1024 beats at once and
    finishes within 1300 cycles (a burst is issued only once its data is all buffered)."""
    params = WIDE
    nb = 16
    rand = random.Random(3)
    data = {**idle(params, nb), "mem": np.frombuffer(rand.randbytes(MEM), np.uint8).copy()}
    for c in range(2):
        data[f"wr{c}_req"] = np.array([(16384 * (c + 1), 1024)], np.int64)
        data[f"wr{c}_data"] = np.frombuffer(rand.randbytes(1024 * nb), np.uint8).reshape(1024, nb).copy()
        data[f"wr{c}_strb"] = np.ones((1024, nb), np.uint8)
    out = run_engines(params, data, [], seed=3, stall=0.0, backpressure=0.0, memory="hdl",
                      wr_data_stall=[0.95, 0.0])
    check(params, data, [], out)
    print({c: int(out[f"wr{c}_finished"]) for c in range(2)})
    assert int(out["wr1_finished"]) <= 1300
    assert int(out["wr0_finished"]) > 10_000
