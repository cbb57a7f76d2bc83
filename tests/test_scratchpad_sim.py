# amaranth: UnusedElaboratable=no
"""Scratchpad in amaranth.sim (small sizes): parameter checks; read and write latency and one
word per cycle per port without conflicts; random multi-port traffic with bank conflicts, bad
addresses, valid gaps and backpressure, every read checked against a model of the memory
given the cycle each write became visible; program-ordered traffic gives identical results
with and without stalls; round-robin fairness; a reader that stops taking responses does not
hold its bank; a read and a write of one address in one cycle; the event counts."""

import random

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.sim import Simulator
from spad_streams import Edges, drive, seed_of, take, watch

from hdl.config import get_config
from hdl.scratchpad import READ_LATENCY, WRITE_LATENCY, RoundRobin, Scratchpad, write_request_layout

SMALL = dict(lanes=2, words=8, banks=3, read_ports=3, write_ports=2)


# -- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(lanes=3), "lanes must be a power of two"),
    (dict(lanes=128), "lanes must be in 1..64"),
    (dict(words=1), "words must be in 2..1048576"),
    (dict(words=12), "words must be a power of two"),
    (dict(banks=0), "banks must be in 1..16"),
    (dict(banks=2.0), "banks must be an int"),
    (dict(read_ports=17), "read_ports must be in 1..16"),
    (dict(write_ports=0), "write_ports must be in 1..16"),
    (dict(resp_depth=0), "resp_depth must be in 1..64"),
    (dict(verilog="yes"), "verilog must be None, True or False"),
])
def test_bad_parameters_raise_naming_the_parameter(change, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Scratchpad(**{**SMALL, **change})
    with pytest.raises(TypeError):
        Scratchpad(2, 8, 3, 3, 2)   # keyword-only
    with pytest.raises(ValueError, match="count must be in 1..64"):
        RoundRobin(count=0)


def test_derived_constants_and_from_config():
    dut = Scratchpad(**SMALL)
    assert dut.addr_width == 6 and dut.capacity == 24        # 3 banks of 8: one guard bit
    assert dut.read_latency == dut.latency == READ_LATENCY == 3
    assert dut.write_latency == WRITE_LATENCY == 2
    assert dut.resp_depth == 4 and dut.throughput == 1
    assert Scratchpad(**SMALL, resp_depth=2).throughput == 0.5
    assert (dut.max_read_wait, dut.max_write_wait) == (2, 1)
    with pytest.raises(AttributeError):
        dut.lanes = 4
    spad = Scratchpad.from_config(get_config("default"), read_ports=2, write_ports=1)
    assert (spad.lanes, spad.words, spad.banks, spad.addr_width) == (8, 8192, 4, 16)
    payload = spad.signature.members["r"].signature.members["resp"].signature.members["payload"]
    assert Shape.cast(payload.shape).width == 8 * 32
    text = verilog.convert(spad, name="spad", emit_src=False)   # banks of 2 Mbit: Verilog RAMs
    assert text.count("tfa_sync_ram #(") == 4 and len(text) < 400_000


# -- a testbench of the whole port set ---------------------------------------------------------

def _pack_write(dut, addr, lanes, mask):
    lay = write_request_layout(dut.addr_width, dut.lanes)
    word = sum(int(v) << (32 * k) for k, v in enumerate(lanes))
    return addr | word << lay["data"].offset | mask << lay["mask"].offset


def _lanes(dut, value):
    return tuple((value >> (32 * k)) & 0xFFFFFFFF for k in range(dut.lanes))


def _events(dut, value):
    return {name: (value >> f.offset) & ((1 << Shape.cast(f.shape).width) - 1)
            for name, f in dut.events_layout}


def simulate(dut, *, reads, writes, seed, stall=0.0, backpressure=0.0, hold=None, tail=8):
    """Run read requests ``reads[i]`` (addresses) on ``r[i]`` and write requests ``writes[j]``
    (``(addr, lanes, mask)``) on ``w[j]``, all ports at once. ``hold``: read ports whose
    responses are never taken. Returns the edges of every handshake, the response values, the
    ``done`` edges and the events of every cycle."""
    rng = random.Random(seed)
    seeds = [rng.randrange(1 << 30) for _ in range(2 * len(reads) + len(writes))]
    hold = set(hold or ())
    out = {"r_acc": [[] for _ in reads], "r_resp": [[] for _ in reads], "r_data": [None] * len(reads),
           "w_acc": [[] for _ in writes], "w_done": [[] for _ in writes], "events": []}
    left = {"n": len(reads) + len(writes) + len(reads)}

    def reader(i):
        async def bench(ctx):
            try:
                await drive(Edges(ctx), dut.r[i].req, reads[i], rng=random.Random(seeds[2 * i]),
                            stall=stall, stamps=out["r_acc"][i], timeout=200 if i in hold else 2000)
            except TimeoutError:
                if i not in hold:
                    raise
            left["n"] -= 1
        return bench

    def responder(i):
        async def bench(ctx):
            if i not in hold:
                out["r_data"][i] = await take(Edges(ctx), dut.r[i].resp, len(reads[i]),
                                              rng=random.Random(seeds[2 * i + 1]),
                                              backpressure=backpressure, stamps=out["r_resp"][i])
            left["n"] -= 1
        return bench

    def writer(j):
        async def bench(ctx):
            beats = [_pack_write(dut, *w) for w in writes[j]]
            await drive(Edges(ctx), dut.w[j].req, beats, rng=random.Random(seeds[2 * len(reads) + j]),
                        stall=stall, stamps=out["w_acc"][j])
            left["n"] -= 1
        return bench

    async def observer(ctx):
        edges = Edges(ctx)
        idle = 0
        while idle < tail:
            done_and_events = await edges.tick(*(w.done for w in dut.w), dut.events.as_value())
            for j, d in enumerate(done_and_events[:-1]):
                if d:
                    out["w_done"][j].append(edges.count)
            out["events"].append(_events(dut, done_and_events[-1]))
            idle = idle + 1 if left["n"] == 0 else 0
            assert edges.count < 20000, "the traffic did not finish"
        out["cycles"] = edges.count

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for i in range(len(reads)):
        sim.add_testbench(reader(i))
        sim.add_testbench(responder(i))
    for j in range(len(writes)):
        sim.add_testbench(writer(j))
    sim.add_testbench(observer)
    sim.run()
    out["r_data"] = [None if d is None else [_lanes(dut, v) for v in d] for d in out["r_data"]]
    return out


# -- latency and throughput ----------------------------------------------------------------------

def test_each_port_moves_one_word_per_cycle_at_the_documented_latencies_without_conflicts():
    """Reader i reads bank i, writer j writes bank j (read and write ports of a bank are
    separate): every port one word per cycle; response READ_LATENCY and done WRITE_LATENCY
    edges after acceptance."""
    dut = Scratchpad(**SMALL)
    n = 24
    reads = [[8 * i + k % 8 for k in range(n)] for i in range(3)]
    writes = [[(8 * j + k % 8, (k, j), 0b11) for k in range(n)] for j in range(2)]
    out = simulate(dut, reads=reads, writes=writes, seed=1)
    for i in range(3):
        acc, resp = np.array(out["r_acc"][i]), np.array(out["r_resp"][i])
        assert np.all(np.diff(acc) == 1) and np.all(np.diff(resp) == 1)
        assert np.all(resp - acc == dut.read_latency)
    for j in range(2):
        acc, done = np.array(out["w_acc"][j]), np.array(out["w_done"][j])
        assert np.all(np.diff(acc) == 1) and np.all(done - acc == dut.write_latency)
    assert not any(e[f"r{i}_wait"] or e.get(f"w{i}_wait") for e in out["events"] for i in range(2))


# -- the memory model -----------------------------------------------------------------------------

def visible_values(dut, writes, done, addr, edges):
    """The set of words a read of ``addr`` granted at one of ``edges`` may return: the word
    after every write whose ``done`` edge is ≤ the grant edge (unwritten lanes are 0)."""
    history = sorted((done[j][k], w) for j in range(len(writes))
                     for k, w in enumerate(writes[j]) if w[0] == addr)
    values = set()
    for g in edges:
        word = [0] * dut.lanes
        for e, (_, lanes, mask) in history:
            if e <= g:
                word = [lanes[k] if mask >> k & 1 else word[k] for k in range(dut.lanes)]
        values.add(tuple(word) if addr < dut.capacity else (0,) * dut.lanes)
    return values


def random_traffic(dut, rng, n):
    """``n`` requests per port over a few hot words in every bank (conflicts) and a few
    addresses past the last bank; unique write data."""
    hot = [b * dut.words + o for b in range(dut.banks) for o in (0, 3, dut.words - 1)]
    bad = [dut.capacity, (1 << dut.addr_width) - 1]

    def addr():
        return int(rng.choice(bad)) if rng.random() < 0.05 else int(rng.choice(hot))
    counter = iter(range(1, 1 << 30))
    reads = [[addr() for _ in range(n)] for _ in range(dut.read_ports)]
    writes = [[(addr(), tuple(next(counter) for _ in range(dut.lanes)),
                int(rng.integers(0, 1 << dut.lanes))) for _ in range(n)]
              for _ in range(dut.write_ports)]
    return reads, writes


@pytest.mark.parametrize("stall, backpressure", [(0.0, 0.0), (0.3, 0.4)])
def test_random_multiport_traffic_reads_what_the_memory_model_allows(stall, backpressure):
    """Every read returns the word the memory holds at a cycle its grant can fall in: after
    acceptance, within the fairness bound, and 2 cycles before its response. Most reads have
    only one possible word (checked, so the test cannot pass by accepting anything). Also:
    waits stay within the bound, and the events count every access."""
    seed = seed_of(11)
    dut = Scratchpad(**SMALL)
    rng = np.random.default_rng(seed)
    reads, writes = random_traffic(dut, rng, 60)
    out = simulate(dut, reads=reads, writes=writes, seed=seed, stall=stall, backpressure=backpressure)
    unambiguous = 0
    for i in range(dut.read_ports):
        lo = hi = -1      # bounds of the previous request's grant edge
        for k, addr in enumerate(reads[i]):
            acc, resp = out["r_acc"][i][k], out["r_resp"][i][k]
            # the request reaches the head of the port's queue after acceptance and after
            # the previous request's grant, then waits at most max_read_wait cycles; its
            # response is valid 2 edges after the grant at the earliest
            lo = max(acc + 1, lo + 1)
            hi = min(resp - 2, max(acc + 1, hi + 1) + dut.max_read_wait)
            assert lo <= hi
            window = range(lo, hi + 1)
            allowed = visible_values(dut, writes, out["w_done"], addr, window)
            assert out["r_data"][i][k] in allowed, (i, k, addr, window, allowed)
            unambiguous += len(allowed) == 1
    assert unambiguous > 0.6 * dut.read_ports * 60
    ev = out["events"]
    for name, bound in [*((f"r{i}_wait", dut.max_read_wait) for i in range(dut.read_ports)),
                        *((f"w{j}_wait", dut.max_write_wait) for j in range(dut.write_ports))]:
        run = longest = 0
        for e in ev:
            run = run + 1 if e[name] else 0
            longest = max(longest, run)
        assert longest <= bound, name
    everything = [a for r in reads for a in r] + [w[0] for ws in writes for w in ws]
    assert sum(e["bad_addr"] for e in ev) == sum(a >= dut.capacity for a in everything)
    for b in range(dut.banks):
        in_bank = [a // dut.words == b for a in (x for r in reads for x in r)]
        assert sum(e[f"bank{b}_reads"] for e in ev) == sum(in_bank)
        wr = [w for ws in writes for w in ws if w[0] // dut.words == b and w[2]]
        assert sum(e[f"bank{b}_writes"] for e in ev) == len(wr)


def test_program_ordered_traffic_gives_identical_results_with_and_without_stalls():
    """Writes from both ports with conflicts and masks, then (after every done) reads from
    all ports of every address: the memory's final words, whatever the stalls."""
    seed = seed_of(12)
    rng = np.random.default_rng(seed)
    dut = Scratchpad(**SMALL)
    _, writes = random_traffic(dut, rng, 40)
    # a port's own writes land in order; writes of one address by two ports are not ordered
    # by the scratchpad: give each port its own half of every bank
    writes = [[(a - a % dut.words + (a % dut.words) % 4 + 4 * j if a < dut.capacity else a, d, m)
               for a, d, m in writes[j]] for j in range(2)]
    model = {}
    for j in range(2):
        for a, lanes, mask in writes[j]:
            if a < dut.capacity:
                old = model.get(a, (0,) * dut.lanes)
                model[a] = tuple(lanes[k] if mask >> k & 1 else old[k] for k in range(dut.lanes))
    every = list(range(dut.capacity)) + [dut.capacity + 5]
    reads = [list(rng.permutation(every)) for _ in range(dut.read_ports)]
    results = []
    for stall, bp in [(0.0, 0.0), (0.4, 0.5)]:
        results.append(_writes_then_reads(writes, reads, seed, stall, bp))
    for got in results:
        for i in range(3):
            want = [model.get(a, (0,) * dut.lanes) for a in reads[i]]
            assert got[i] == want
    assert results[0] == results[1]


def _writes_then_reads(writes, reads, seed, stall, backpressure):
    """One simulation: the writes on the write ports, then, once all are done, the reads."""
    dut = Scratchpad(**SMALL)
    rng = random.Random(seed)
    state = {"writes_left": sum(len(w) for w in writes)}
    got = [None] * len(reads)

    def writer(j):
        async def bench(ctx):
            await drive(Edges(ctx), dut.w[j].req, [_pack_write(dut, *w) for w in writes[j]],
                        rng=random.Random(rng.random()), stall=stall)
        return bench

    async def counter(ctx):
        edges = Edges(ctx)
        while state["writes_left"]:
            for d in await edges.tick(*(w.done for w in dut.w)):
                state["writes_left"] -= d

    def reader(i):
        async def bench(ctx):
            edges = Edges(ctx)
            while state["writes_left"]:
                await edges.tick()
            await drive(edges, dut.r[i].req, reads[i], rng=random.Random(rng.random()), stall=stall)

        async def responder(ctx):
            got[i] = [_lanes(dut, v) for v in await take(Edges(ctx), dut.r[i].resp, len(reads[i]),
                                                         rng=random.Random(rng.random()),
                                                         backpressure=backpressure, timeout=5000)]
        return bench, responder

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for j in range(len(writes)):
        sim.add_testbench(writer(j))
    sim.add_testbench(counter)
    for i in range(len(reads)):
        for bench in reader(i):
            sim.add_testbench(bench)
    sim.run()
    return got


# -- arbitration ---------------------------------------------------------------------------------

def test_ports_sharing_one_bank_take_turns_and_wait_at_most_ports_minus_one_cycles():
    dut = Scratchpad(lanes=1, words=8, banks=2, read_ports=4, write_ports=3)
    n = 30
    reads = [[8 + k % 8 for k in range(n)] for _ in range(4)]
    writes = [[(8 + k % 8, (k,), 1) for k in range(n)] for _ in range(3)]
    out = simulate(dut, reads=reads, writes=writes, seed=3)
    ev = out["events"]
    busy = [e for e in ev if any(e[f"r{i}_wait"] for i in range(4))]
    assert all(e["bank1_reads"] for e in busy)            # the bank reads every contended cycle
    for name, bound in [("r", 3), ("w", 2)]:
        for p in range(4 if name == "r" else 3):
            run = longest = 0
            for e in ev:
                run = run + 1 if e[f"{name}{p}_wait"] else 0
                longest = max(longest, run)
            assert longest == bound, (name, p, longest)   # strict rotation: exactly the bound
    # in steady state the bank grants the four readers in turn: each gets every fourth cycle
    resp = [np.array(out["r_resp"][i]) for i in range(4)]
    for i in range(4):
        assert np.all(np.diff(resp[i][2:-2]) == 4)
    assert sum(e["bank1_reads"] for e in ev) == 4 * n and sum(e["bank1_writes"] for e in ev) == 3 * n


def test_a_reader_that_stops_taking_responses_never_holds_its_bank():
    """Reader 0 never takes its responses: after its resp_depth requests it is refused, and the
    other two readers of the same bank share it at one word per cycle between them."""
    dut = Scratchpad(**SMALL)
    n = 40
    reads = [[0] * n, [1] * n, [2] * n]
    out = simulate(dut, reads=reads, writes=[[], []], seed=4, hold={0})
    assert len(out["r_acc"][0]) == dut.resp_depth
    both = np.sort(np.concatenate([out["r_resp"][1], out["r_resp"][2]]))
    steady = both[both > out["r_acc"][0][-1] + 2 * dut.read_ports + dut.read_latency]
    assert len(steady) > 60 and np.all(np.diff(steady) == 1)


def test_read_and_write_of_one_address_in_one_cycle_read_the_old_word():
    """A write accepted on w0 and a read of its address accepted on r0 in the same cycle (idle
    banks: both granted in the next): the read returns the old word; a read accepted one cycle
    later returns the new word."""
    dut = Scratchpad(**SMALL)
    seen = {}

    async def bench(ctx):
        edges = Edges(ctx)
        ctx.set(dut.w[0].req.payload.as_value(), _pack_write(dut, 13, (7, 8), 0b11))
        ctx.set(dut.w[0].req.valid, 1)
        await edges.tick()
        ctx.set(dut.w[0].req.payload.as_value(), _pack_write(dut, 13, (70, 80), 0b01))
        ctx.set(dut.r[0].req.payload.as_value(), 13)
        ctx.set(dut.r[0].req.valid, 1)
        await edges.tick()                      # both accepted in this cycle
        ctx.set(dut.w[0].req.valid, 0)
        await edges.tick()                      # the read of the old word, one more read
        ctx.set(dut.r[0].req.valid, 0)
        ctx.set(dut.r[0].resp.ready, 1)
        rows = await watch(edges, 6, dut.r[0].resp.valid, dut.r[0].resp.payload.as_value())
        seen["words"] = [_lanes(dut, v) for valid, v in rows if valid]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["words"] == [(7, 8), (70, 8)]


def test_bad_addresses_read_zeros_drop_writes_answer_done_and_are_counted():
    dut = Scratchpad(**SMALL)
    top = (1 << dut.addr_width) - 1
    writes = [[(24, (1, 2), 3), (5, (3, 4), 3), (top, (5, 6), 3)], [(40, (9, 9), 3)]]
    first = simulate(dut, reads=[[], [], []], writes=writes, seed=5)
    assert [len(d) for d in first["w_done"]] == [3, 1]
    assert sum(e["bad_addr"] for e in first["events"]) == 3
    assert sum(e["bank0_writes"] for e in first["events"]) == 1
    got = _writes_then_reads(writes, [[24, 5, top], [0, 16], [23]], seed=5, stall=0.0, backpressure=0.0)
    assert got == [[(0, 0), (3, 4), (0, 0)], [(0, 0), (0, 0)], [(0, 0)]]


def test_round_robin_grants_the_first_requester_after_the_last_granted():
    """Random request patterns against the rule: the grant is the first requester after the one
    granted last (wrapping; 0 first after reset), one-hot, and none without requests."""
    rng = np.random.default_rng(seed_of(13))
    pattern = [int(x) for x in rng.integers(0, 32, 300)]
    pattern[10:14] = [0] * 4
    dut = RoundRobin(count=5)
    seen = []

    async def bench(ctx):
        for req in pattern:
            ctx.set(dut.requests, req)
            (grant,) = await Edges(ctx).tick(dut.grant)
            seen.append(grant)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    last = 4
    for req, grant in zip(pattern, seen, strict=True):
        if not req:
            assert grant == 0
            continue
        want = next((last + k) % 5 for k in range(1, 6) if req >> ((last + k) % 5) & 1)
        assert grant == 1 << want, (req, grant, last)
        last = want
