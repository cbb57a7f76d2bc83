# amaranth: UnusedElaboratable=no
"""AddressGenerator, SpadReader and SpadWriter in amaranth.sim (small sizes): parameter checks;
random walks (counts of 0 and 1, strides of 0, walks past the end) against a numpy reference
with and without valid gaps and backpressure; one address per cycle across descriptors;
writer/reader round trips through a scratchpad with back-to-back descriptors, two of each
mover at once, identical with and without stalls; mover latency and one word per cycle."""

import random

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Fragment, Module, Shape
from amaranth.lib import wiring
from amaranth.sim import Simulator
from spad_streams import Edges, drive, seed_of, take

from golden.scratchpad import Descriptor, ScratchpadModel
from golden.scratchpad import walk as golden_walk
from hdl.agu import AddressGenerator, SpadReader, SpadWriter, descriptor_layout, write_data_layout
from hdl.config import get_config
from hdl.scratchpad import READ_LATENCY, WRITE_LATENCY, Scratchpad


def pack(layout, **fields):
    word = 0
    for name, value in fields.items():
        f = layout[name]
        width = Shape.cast(f.shape).width
        if isinstance(value, (list, tuple)):
            value = sum(int(v) << (32 * k) for k, v in enumerate(value))
        word |= (int(value) & ((1 << width) - 1)) << f.offset
    return word


def unpack(layout, word):
    return {name: (word >> f.offset) & ((1 << Shape.cast(f.shape).width) - 1) for name, f in layout}


def walk(desc, addr_width):
    """A descriptor's beats as the generator gives them: (addr or None, last0, last1, last,
    empty), from the reference walk (golden.scratchpad.walk)."""
    addr, last0, last1, last = golden_walk(desc, addr_width=addr_width)
    if not len(addr):
        return [(None, 1, 1, 1, 1)]
    return [(int(a), int(x), int(y), int(z), 0) for a, x, y, z in zip(addr, last0, last1, last, strict=True)]


def random_descriptors(rng, n, *, addr_width, max_count=4, bases=None):
    out = []
    for _ in range(n):
        counts = [int(rng.choice([1, 1, 2, 3, max_count])) for _ in range(3)]
        if rng.random() < 0.1:
            counts[int(rng.integers(0, 3))] = 0
        strides = [int(rng.choice([0, 1, 2, int(rng.integers(0, 1 << addr_width))])) for _ in range(3)]
        base = int(rng.choice(bases)) if bases is not None else int(rng.integers(0, 1 << addr_width))
        out.append(dict(base=base, count0=counts[0], count1=counts[1], count2=counts[2],
                        stride0=strides[0], stride1=strides[1], stride2=strides[2]))
    return out


# -- parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls, kwargs, message", [
    (AddressGenerator, dict(addr_width=0), "addr_width must be in 1..32"),
    (AddressGenerator, dict(addr_width=8, count_width=33), "count_width must be in 1..32"),
    (SpadReader, dict(addr_width=8, lanes=3), "lanes must be a power of two"),
    (SpadReader, dict(addr_width=8, lanes=2, depth=0), "depth must be in 1..64"),
    (SpadWriter, dict(addr_width=8, lanes=2, with_mask=1), "with_mask must be a bool"),
    (SpadWriter, dict(addr_width="8", lanes=2), "addr_width must be an int"),
])
def test_bad_parameters_raise_naming_the_parameter(cls, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        cls(**kwargs)


def test_latencies_and_from_config():
    cfg = get_config("default")
    agu = AddressGenerator.from_config(cfg)
    assert (agu.addr_width, agu.count_width, agu.latency, agu.throughput) == (16, 16, 1, 1)
    r, w = SpadReader.from_config(cfg), SpadWriter.from_config(cfg, with_mask=False)
    assert r.latency == 1 + READ_LATENCY and r.throughput == 1 and r.lanes == 8
    assert w.done_latency == WRITE_LATENCY and w.throughput == 1
    assert SpadReader(addr_width=8, lanes=2, depth=2).throughput == 0.5
    assert "mask" not in dict(write_data_layout(8, False)).keys()
    assert descriptor_layout(addr_width=16).size == 4 * 16 + 3 * 16
    for block in (agu, r, w):
        Fragment.get(block, None)   # each elaborates at the default size


# -- the address generator ---------------------------------------------------------------------

def run_agu(descs, *, aw, cw, seed, stall=0.0, backpressure=0.0):
    dut = AddressGenerator(addr_width=aw, count_width=cw)
    total = sum(len(walk(d, aw)) for d in descs)
    rng = random.Random(seed)
    got = {"desc": [], "out": []}

    async def source(ctx):
        await drive(Edges(ctx), dut.desc, [pack(dut.descriptor_layout, **d) for d in descs],
                    rng=random.Random(rng.random()), stall=stall, stamps=got["desc"])

    async def sink(ctx):
        beats = await take(Edges(ctx), dut.out, total, rng=random.Random(rng.random()),
                           backpressure=backpressure, stamps=got["out"])
        got["beats"] = [unpack(dut.out.payload.shape(), b) for b in beats]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return got


@pytest.mark.parametrize("stall, backpressure", [(0.0, 0.0), (0.4, 0.4)])
def test_address_generator_walks_match_numpy_including_empty_unit_counts_zero_strides_and_overflow(
        stall, backpressure):
    seed = seed_of(21)
    rng = np.random.default_rng(seed)
    aw, cw = 10, 3
    descs = random_descriptors(rng, 60, addr_width=aw, max_count=7)
    descs += [dict(base=1000, count0=7, count1=7, count2=7, stride0=1023, stride1=1023, stride2=1023),
              dict(base=5, count0=1, count1=1, count2=1, stride0=9, stride1=9, stride2=9),
              dict(base=3, count0=3, count1=2, count2=2, stride0=0, stride1=0, stride2=0)]
    assert any(0 in (d["count0"], d["count1"], d["count2"]) for d in descs)
    want = [b for d in descs for b in walk(d, aw)]
    got = run_agu(descs, aw=aw, cw=cw, seed=seed, stall=stall, backpressure=backpressure)
    beats = [(None if b["empty"] else b["addr"], b["last0"], b["last1"], b["last"], b["empty"])
             for b in got["beats"]]
    assert beats == want
    assert (1 << aw) - 1 in [b[0] for b in want]          # some walks ran past the end


def test_address_generator_gives_one_address_per_cycle_across_descriptors():
    """No stalls: the first address one cycle after the first descriptor, then one address in
    every cycle, with no gap between walks (also after walks of one address)."""
    descs = [dict(base=b, count0=c, count1=1, count2=1, stride0=1, stride1=0, stride2=0)
             for b, c in [(0, 3), (40, 1), (50, 1), (60, 4), (70, 2)]]
    got = run_agu(descs, aw=8, cw=4, seed=1)
    assert got["out"][0] == got["desc"][0] + 1
    assert np.all(np.diff(got["out"]) == 1) and len(got["out"]) == 11


# -- movers on a scratchpad --------------------------------------------------------------------

class Rig(Elaboratable):
    """A scratchpad with a SpadReader on every read port and a SpadWriter on every write port."""

    def __init__(self, *, readers, writers, lanes=2, words=16, banks=3):
        self.spad = Scratchpad(lanes=lanes, words=words, banks=banks, read_ports=readers,
                               write_ports=writers)
        kw = dict(addr_width=self.spad.addr_width, lanes=lanes, count_width=4)
        self.readers = [SpadReader(**kw) for _ in range(readers)]
        self.writers = [SpadWriter(**kw) for _ in range(writers)]

    def elaborate(self, platform):
        m = Module()
        m.submodules.spad = self.spad
        for i, r in enumerate(self.readers):
            m.submodules[f"reader{i}"] = r
            wiring.connect(m, r.port, self.spad.r[i])
        for j, w in enumerate(self.writers):
            m.submodules[f"writer{j}"] = w
            wiring.connect(m, w.port, self.spad.w[j])
        return m


def write_model(rig, writes):
    """The memory after every writer's descriptors and words, writer by writer (their
    regions do not overlap)."""
    model = ScratchpadModel(lanes=rig.spad.lanes, words=rig.spad.words, banks=rig.spad.banks)
    for descs, words in writes:
        words = iter(words)
        for d in descs:
            beats = [next(words) for _ in range(Descriptor(**d).size)]
            if beats:
                model.write_walk(d, [w for w, _ in beats], [m for _, m in beats])
    return model


def run_rig(rig, *, writes, reads, seed, stall=0.0, backpressure=0.0, after_writes=True):
    """Writer j takes ``writes[j] = (descriptors, [(lanes, mask)])``; reader i takes
    ``reads[i]`` (descriptors), after every writer's last ``done`` when ``after_writes``.
    Returns the read beats and the edges of every handshake and done pulse."""
    rng = random.Random(seed)
    aw = rig.spad.addr_width
    dl = descriptor_layout(addr_width=aw, count_width=4)
    wl = write_data_layout(rig.spad.lanes)
    n_done = sum(len(d) for d, _ in writes)
    st = {"done": [[] for _ in writes], "left": n_done, "wdata": [[] for _ in writes],
          "rdesc": [[] for _ in reads], "rdata": [[] for _ in reads], "wdesc": [[] for _ in writes],
          "beats": [None] * len(reads)}

    def writer(j):
        w = rig.writers[j]

        async def descs(ctx):
            await drive(Edges(ctx), w.desc, [pack(dl, **d) for d in writes[j][0]],
                        rng=random.Random(rng.random()), stall=stall, stamps=st["wdesc"][j])

        async def words(ctx):
            await drive(Edges(ctx), w.data, [pack(wl, data=x, mask=m) for x, m in writes[j][1]],
                        rng=random.Random(rng.random()), stall=stall, stamps=st["wdata"][j])
        return descs, words

    async def done_watch(ctx):
        edges = Edges(ctx)
        while st["left"]:
            for j, d in enumerate(await edges.tick(*(w.done for w in rig.writers))):
                if d:
                    st["done"][j].append(edges.count)
                    st["left"] -= 1
            assert edges.count < 5000, "writers did not finish"

    def reader(i):
        r = rig.readers[i]
        n = sum(len(walk(d, aw)) for d in reads[i] if d["count0"] * d["count1"] * d["count2"])

        async def descs(ctx):
            edges = Edges(ctx)
            while after_writes and st["left"]:
                await edges.tick()
            await drive(edges, r.desc, [pack(dl, **d) for d in reads[i]],
                        rng=random.Random(rng.random()), stall=stall, stamps=st["rdesc"][i])

        async def data(ctx):
            beats = await take(Edges(ctx), r.data, n, rng=random.Random(rng.random()),
                               backpressure=backpressure, stamps=st["rdata"][i], timeout=5000)
            st["beats"][i] = [unpack(r.data.payload.shape(), b) for b in beats]
        return descs, data

    sim = Simulator(rig)
    sim.add_clock(1e-8)
    for j in range(len(writes)):
        for p in writer(j):
            sim.add_testbench(p)
    sim.add_testbench(done_watch)
    for i in range(len(reads)):
        for p in reader(i):
            sim.add_testbench(p)
    sim.run()
    return st


def expected_reads(rig, model, descs):
    out = []
    for d in descs:
        _, last0, last1, last = golden_walk(d, addr_width=model.addr_width)
        for word, flags in zip(model.read_walk(d), zip(last0, last1, last, strict=True), strict=True):
            out.append((tuple(int(x) for x in word), *(int(f) for f in flags)))
    return out


def as_tuples(rig, beats):
    L = rig.spad.lanes
    return [(tuple((b["data"] >> (32 * k)) & 0xFFFFFFFF for k in range(L)), b["last0"], b["last1"], b["last"])
            for b in beats]


def test_writer_then_reader_round_trips_back_to_back_descriptors_identically_under_stalls():
    """Two writers fill their own words of the three banks (walks that conflict on banks,
    masks, strides of 0: later words of a walk win) with back-to-back descriptors; after the
    last done, two readers read random walks (also past the end) at once. Every word and flag
    matches the model, with and without valid gaps and backpressure on every stream."""
    seed = seed_of(31)
    rng = np.random.default_rng(seed)
    rig = Rig(readers=2, writers=2)
    # writer j owns offsets [8j, 8j + 8) of every bank
    def own(j):
        descs = []
        for _ in range(12):
            d = random_descriptors(rng, 1, addr_width=rig.spad.addr_width, max_count=3,
                                   bases=[16 * b + 8 * j for b in range(3)])[0]
            d.update(stride0=int(rng.choice([0, 1, 2])), stride1=int(rng.choice([0, 1, 3])),
                     stride2=16 * int(rng.choice([0, 1])))
            d["count2"] = min(d["count2"], 2)
            d["count0"], d["count1"] = min(d["count0"], 2), min(d["count1"], 2)   # offsets stay < 8
            descs.append(d)
        descs[5]["count1"] = 0        # an empty walk: no words, one done after the writes before it
        n = sum(len(walk(d, rig.spad.addr_width)) for d in descs if d["count0"] * d["count1"] * d["count2"])
        words = [(tuple(int(x) for x in rng.integers(0, 1 << 32, 2)), int(rng.integers(0, 4))) for _ in range(n)]
        return descs, words
    writes = [own(0), own(1)]
    mem = write_model(rig, writes)
    reads = [random_descriptors(rng, 25, addr_width=rig.spad.addr_width, max_count=3,
                                bases=list(range(0, 56))) for _ in range(2)]
    results = []
    for stall, bp in [(0.0, 0.0), (0.4, 0.4)]:
        st = run_rig(Rig(readers=2, writers=2), writes=writes, reads=reads, seed=seed, stall=stall,
                     backpressure=bp)
        assert [len(d) for d in st["done"]] == [12, 12]
        got = [as_tuples(rig, b) for b in st["beats"]]
        for i in range(2):
            assert got[i] == expected_reads(rig, mem, reads[i])
        results.append(got)
    assert results[0] == results[1]


def test_movers_run_one_word_per_cycle_at_their_latencies_when_their_banks_differ():
    """A writer on bank 0 and a reader on bank 1 at once, back-to-back descriptors, no stalls:
    both move one word in every cycle; the first word comes SpadReader.latency cycles after the
    reader's first descriptor; each done comes done_latency cycles after the descriptor's last
    word, and an empty descriptor's done after the writes before it."""
    rig = Rig(readers=1, writers=1)
    lat_r, lat_w = rig.readers[0].latency, rig.writers[0].done_latency
    wd = [dict(base=0, count0=4, count1=2, count2=1, stride0=1, stride1=4, stride2=0),
          dict(base=2, count0=1, count1=1, count2=3, stride0=0, stride1=0, stride2=5),
          dict(base=9, count0=2, count1=0, count2=1, stride0=1, stride1=0, stride2=0)]
    words = [((k, k + 100), 3) for k in range(11)]
    rd = [dict(base=16, count0=5, count1=1, count2=2, stride0=1, stride1=0, stride2=5),
          dict(base=20, count0=1, count1=1, count2=1, stride0=0, stride1=0, stride2=0),
          dict(base=17, count0=2, count1=3, count2=1, stride0=0, stride1=1, stride2=0)]
    st = run_rig(rig, writes=[(wd, words)], reads=[rd], seed=2, after_writes=False)
    assert np.all(np.diff(st["wdata"][0]) == 1) and np.all(np.diff(st["rdata"][0]) == 1)
    assert st["rdata"][0][0] == st["rdesc"][0][0] + lat_r
    last_words = [st["wdata"][0][7], st["wdata"][0][10]]
    # the empty walk at the end completes once the writes before it are done
    assert st["done"][0] == [last_words[0] + lat_w, last_words[1] + lat_w, last_words[1] + lat_w + 1]
    assert [b[3] for b in as_tuples(rig, st["beats"][0])] == [0] * 9 + [1, 1, 0, 0, 0, 0, 0, 1]
