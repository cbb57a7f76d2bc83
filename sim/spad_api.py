"""``sim.run_spad``: traffic of several movers on one Verilated scratchpad.

Example::

    from golden.scratchpad import Descriptor
    res = run_spad(writes=[{"descs": [Descriptor(base=0, count0=64)], "data": words}],
                   reads=[{"descs": [Descriptor(base=0, count0=64, after=1)]}])

The design (:class:`SpadHarness`) is a scratchpad of the configuration with a
:class:`hdl.agu.SpadReader` on every read port and a :class:`hdl.agu.SpadWriter` on every write
port, and an :class:`hdl.counters.EventCounters` on its events. In the ``default``
configuration the banks are Verilog RAM instances (``tfa_sync_ram``), the chip's memory path.

Each mover gets a list of descriptors; a descriptor given as a dict may carry ``after``: the
harness holds it until that many writer descriptors (all writers together) have signalled
``done``, so a read can be ordered after the writes it depends on, as a program does.
"""

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.scratchpad import Descriptor
from hdl.agu import COUNT_WIDTH, SpadReader, SpadWriter, descriptor_layout, read_data_layout, write_data_layout
from hdl.config import get_config
from hdl.counters import COUNTER_WIDTH, EventCounters
from hdl.scratchpad import Scratchpad, address_width, scratchpad_events_layout

from .runner import build, run

__all__ = ["run_spad", "spad_design", "SpadHarness", "SpadResult", "READERS", "WRITERS"]

#: Movers of the harness that :func:`run_spad` builds by default.
READERS, WRITERS = 3, 2


#: Bits of a harness descriptor's ``after`` field.
AFTER_BITS = 16


def harness_descriptor_layout(addr_width, count_width=COUNT_WIDTH):
    """A harness descriptor: ``desc`` (:func:`hdl.agu.descriptor_layout`) and ``after``."""
    return data.StructLayout({"desc": descriptor_layout(addr_width=addr_width, count_width=count_width),
                              "after": AFTER_BITS})


class SpadHarness(wiring.Component):
    """A scratchpad with a reader on every read port and a writer on every write port.

    Members: ``rd<i>_desc`` / ``wr<j>_desc`` (streams in of ``desc`` and ``after``: the
    descriptor is held until the writers have given ``after`` done pulses in all),
    ``rd<i>_data`` (read words out), ``wr<j>_data`` (words in, with mask), ``wr<j>_done``
    (completion pulses), ``counts`` (the scratchpad's event counts, registered), ``clear``
    (zeroes them).
    """

    def __init__(self, config, *, readers=READERS, writers=WRITERS, count_width=COUNT_WIDTH):
        self._spad = Scratchpad.from_config(config, read_ports=readers, write_ports=writers)
        kw = dict(addr_width=self._spad.addr_width, lanes=self._spad.lanes, count_width=count_width)
        self._readers = [SpadReader(**kw) for _ in range(readers)]
        self._writers = [SpadWriter(**kw) for _ in range(writers)]
        self._counters = EventCounters(self._spad.events_layout)
        desc = stream.Signature(harness_descriptor_layout(kw["addr_width"], count_width))
        members = {}
        for i in range(readers):
            members[f"rd{i}_desc"] = In(desc)
            members[f"rd{i}_data"] = Out(stream.Signature(read_data_layout(kw["lanes"])))
        for j in range(writers):
            members[f"wr{j}_desc"] = In(desc)
            members[f"wr{j}_data"] = In(stream.Signature(write_data_layout(kw["lanes"])))
            members[f"wr{j}_done"] = Out(1)
        members["counts"] = Out(self._counters.counts.shape())
        members["clear"] = In(1)
        super().__init__(members)

    @property
    def spad(self):
        return self._spad

    def elaborate(self, platform):
        m = Module()
        m.submodules.spad = spad = self._spad
        m.submodules.counters = self._counters
        m.d.comb += [self._counters.events.eq(spad.events), self._counters.clear.eq(self.clear),
                     self.counts.eq(self._counters.counts)]
        done = Signal(AFTER_BITS)      # writer descriptors done so far, all writers
        m.d.sync += done.eq(done + sum(w.done for w in self._writers))

        def gate(outer, inner):       # hold a descriptor until `after` writer descriptors are done
            go = done >= outer.payload.after
            m.d.comb += [inner.valid.eq(outer.valid & go), inner.payload.eq(outer.payload.desc),
                         outer.ready.eq(inner.ready & go)]
        for i, r in enumerate(self._readers):
            m.submodules[f"reader{i}"] = r
            wiring.connect(m, r.port, spad.r[i])
            gate(getattr(self, f"rd{i}_desc"), r.desc)
            wiring.connect(m, r.data, wiring.flipped(getattr(self, f"rd{i}_data")))
        for j, w in enumerate(self._writers):
            m.submodules[f"writer{j}"] = w
            wiring.connect(m, w.port, spad.w[j])
            gate(getattr(self, f"wr{j}_desc"), w.desc)
            wiring.connect(m, wiring.flipped(getattr(self, f"wr{j}_data")), w.data)
            m.d.comb += getattr(self, f"wr{j}_done").eq(w.done)
        return m


def spad_design(config="default", *, readers=READERS, writers=WRITERS):
    """The cached Verilator build of the harness for ``config``."""
    cfg = get_config(config)
    # the harness is defined here, outside hdl/: its source is part of the cache key
    harness = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    params = {**cfg.memory.to_dict(), "readers": readers, "writers": writers, "harness": harness}
    return build(lambda: SpadHarness(cfg, readers=readers, writers=writers), "spad_harness", params), cfg


@dataclass
class SpadResult:
    """What :func:`run_spad` returns.

    Attributes
    ----------
    outputs : dict
        ``r<i>``: reader i's words [n, lanes] uint32; ``r<i>_flags``: their [n, 3] ``last0``,
        ``last1``, ``last`` flags.
    counters : dict
        The scratchpad's event counts by name (``bank0_reads``, ``r0_wait``, ``bad_addr``, …).
    stamps : dict
        Cycles (from reset release) of every handshake: ``r<i>`` read words, ``r<i>_desc``,
        ``w<j>`` written words, ``w<j>_desc``, ``w<j>_done`` done pulses.
    seed : int
    cycles : int
        Cycles from reset release to the last handshake.
    """
    outputs: dict
    counters: dict
    stamps: dict = field(default_factory=dict)
    seed: int = 0
    cycles: int = 0

    @property
    def output(self):
        return self.outputs.get("r0")


def _desc_rows(descs):
    rows, after = [], []
    for d in descs:
        d = dict(d.to_dict() if isinstance(d, Descriptor) else d)
        after.append(int(d.pop("after", 0)))
        d = Descriptor(**d)
        rows.append([d.base, d.count0, d.count1, d.count2, d.stride0, d.stride1, d.stride2])
    return np.array(rows, np.int64).reshape(-1, 7), np.array(after, np.int64)


def _fields(layout):
    return [[name, f.offset, Shape.cast(f.shape).width] for name, f in layout]


def run_spad(*, writes=(), reads=(), config="default", stall=0.0, backpressure=0.0, seed=None,
             readers=READERS, writers=WRITERS, timeout_cycles=20_000):
    """Run the movers' traffic; return a :class:`SpadResult`.

    ``writes[j]``: ``{"descs": [...], "data": [n, lanes] uint32, "mask": [n] (optional)}`` for
    writer j; ``reads[i]``: ``{"descs": [...]}`` for reader i. Descriptors are
    :class:`golden.scratchpad.Descriptor` or dicts (with an optional ``after``, see the module
    doc). ``stall``: probability of a valid gap before every descriptor and data beat;
    ``backpressure``: probability of ready low on the read data streams.
    """
    design, cfg = spad_design(config, readers=readers, writers=writers)
    if len(writes) > writers or len(reads) > readers:
        raise ValueError(f"the harness has {readers} readers and {writers} writers, not "
                         f"{len(reads)} and {len(writes)}")
    lanes = cfg.memory.spad_lanes
    seed = random.randrange(1 << 31) if seed is None else int(seed)
    data, meta = {}, {"seed": seed, "stall": stall, "backpressure": backpressure, "lanes": lanes,
                      "readers": readers, "writers": writers, "timeout_cycles": timeout_cycles}
    mem = cfg.memory
    aw = address_width(words=mem.spad_words, banks=mem.spad_banks)
    desc = harness_descriptor_layout(aw)
    meta["desc_fields"] = _fields(desc["desc"].shape) + [["after", desc["after"].offset, AFTER_BITS]]
    meta["wdata_fields"] = _fields(write_data_layout(lanes))
    meta["rdata_fields"] = _fields(read_data_layout(lanes))
    events = scratchpad_events_layout(banks=mem.spad_banks, read_ports=readers, write_ports=writers)
    meta["counter_names"] = [name for name, _ in events]
    meta["counter_width"] = COUNTER_WIDTH
    for j, w in enumerate(writes):
        data[f"w{j}_desc"], data[f"w{j}_after"] = _desc_rows(w["descs"])
        words = np.asarray(w["data"], np.uint32).reshape(-1, lanes)
        need = sum(int(np.prod(r[1:4])) for r in data[f"w{j}_desc"])
        if len(words) != need:
            raise ValueError(f"writes[{j}]: the descriptors walk {need} words, data has {len(words)}")
        data[f"w{j}_data"] = words
        data[f"w{j}_mask"] = np.asarray(w.get("mask", np.full(len(words), (1 << lanes) - 1)), np.int64)
    for i, r in enumerate(reads):
        data[f"r{i}_desc"], data[f"r{i}_after"] = _desc_rows(r["descs"])
    out = run(design, "sim.tb.spad", testcase="spad_traffic", data={**data, **meta}, seed=seed)
    outputs = {}
    for i in range(len(reads)):
        outputs[f"r{i}"] = out[f"r{i}_data"].astype(np.uint32).reshape(-1, lanes)
        outputs[f"r{i}_flags"] = out[f"r{i}_flags"].reshape(-1, 3)
    stamps = {k[:-len("_cycles")]: v for k, v in out.items() if k.endswith("_cycles")}
    counters = dict(zip(meta["counter_names"], (int(x) for x in out["counts"]), strict=True))
    return SpadResult(outputs=outputs, counters=counters, stamps=stamps, seed=seed,
                      cycles=int(out["cycles"]))
