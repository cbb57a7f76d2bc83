"""AXI pieces of the testbenches: the external memory (cocotbext-axi ``AxiRam``) with random
latency and backpressure on every channel, address windows that answer SLVERR or DECERR, and a
read side that answers the bursts of different IDs interleaved beat by beat."""

import binascii
import logging
import random

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRamRead, AxiRamWrite, AxiResp
from cocotbext.axi.axi_channels import AxiARSink, AxiRSource, AxiRTransaction
from cocotbext.axi.sparse_memory import SparseMemory

from .common import run_dir

__all__ = ["random_pause", "ErrorWindows", "ExternalMemory", "HdlMemory", "InterleavingReader", "lite_master",
           "quiet"]


def quiet(dut, prefix):
    """Silence the per-burst INFO logs of the cocotbext-axi models on ``prefix`` (they cost
    simulation time): their loggers are ``cocotb.<toplevel>.<prefix>``."""
    logging.getLogger(f"cocotb.{dut._name}.{prefix}").setLevel(logging.WARNING)


def random_pause(rand, probability):
    """A cocotbext-axi pause generator: paused in each cycle with ``probability``."""
    while True:
        yield rand.random() < probability


class ErrorWindows:
    """Address windows ``[lo, hi)`` that answer ``resp`` (SLVERR or DECERR) on every beat that
    touches them."""

    def __init__(self, windows=()):
        self.windows = [(int(lo), int(hi), AxiResp(int(resp))) for lo, hi, resp in windows]

    def resp(self, addr, length):
        for lo, hi, resp in self.windows:
            if addr < hi and addr + length > lo:
                return resp
        return AxiResp.OKAY


class _RespOverride:
    """Wraps a response channel (``r_channel``/``b_channel`` of a cocotbext-axi slave) so that
    the next response it sends carries a given error code. cocotbext-axi answers a failed access
    with SLVERR only and has no public hook for the code, so this is the one place that picks
    DECERR instead: the slave calls ``_read``/``_write`` (the methods its RAM subclasses
    override), which set :attr:`pending` before raising, then sends the beat through here."""

    def __init__(self, channel, field):
        self.channel, self.field, self.pending = channel, field, None

    async def send(self, obj):
        if self.pending is not None:
            setattr(obj, self.field, self.pending)
            self.pending = None
        await self.channel.send(obj)

    def __getattr__(self, name):
        return getattr(self.channel, name)


class _ErrRead(AxiRamRead):
    errors = ErrorWindows()

    async def _read(self, address, length):
        resp = self.errors.resp(address, length)
        if resp != AxiResp.OKAY:
            self.r_channel.pending = resp
            raise OSError(f"{resp.name} at {address:#x}")
        return await super()._read(address, length)


class _ErrWrite(AxiRamWrite):
    errors = ErrorWindows()

    async def _write(self, address, data):
        resp = self.errors.resp(address, len(data))
        if resp != AxiResp.OKAY:
            self.b_channel.pending = resp
            raise OSError(f"{resp.name} at {address:#x}")
        await super()._write(address, data)


class InterleavingReader:
    """An AXI4 read slave over ``mem`` that holds up to ``depth`` bursts and answers them beat
    by beat, picking the ID of each beat at random among those with a burst pending (the
    bursts of one ID stay in order, as AXI requires): the reordering an interconnect with
    several memory controllers may do. Beats in ``errors`` windows answer their code."""

    def __init__(self, bus, clock, reset, mem, *, rand, errors=None, depth=4):
        self.ar = AxiARSink(bus.ar, clock, reset)
        self.r = AxiRSource(bus.r, clock, reset)
        self.ar.queue_occupancy_limit = 2
        self.r.queue_occupancy_limit = 2
        self.mem, self.rand, self.depth = mem, rand, depth
        self.errors = errors or ErrorWindows()
        self.clock = clock
        self.byte_lanes = len(self.r.bus.rdata) // 8
        cocotb.start_soon(self._run())

    async def _run(self):
        pending = {}   # id -> list of [next address, beats left]
        count = 0
        while True:
            if count == 0:
                ar = await self.ar.recv()
                pending.setdefault(int(ar.arid), []).append([int(ar.araddr), int(ar.arlen) + 1])
                count += 1
            while count < self.depth and not self.ar.empty():
                ar = self.ar.recv_nowait()
                pending.setdefault(int(ar.arid), []).append([int(ar.araddr), int(ar.arlen) + 1])
                count += 1
            rid = self.rand.choice(sorted(i for i, q in pending.items() if q))
            burst = pending[rid][0]
            addr = burst[0]
            resp = self.errors.resp(addr, self.byte_lanes)
            beat = AxiRTransaction()
            beat.rid = rid
            beat.rdata = 0 if resp else int.from_bytes(self.mem.read(addr, self.byte_lanes), "little")
            beat.rresp = resp
            burst[0] += self.byte_lanes
            burst[1] -= 1
            beat.rlast = burst[1] == 0
            if burst[1] == 0:
                pending[rid].pop(0)
                count -= 1
            await self.r.send(beat)


class ExternalMemory:
    """The external memory of a DMA test: ``size`` bytes behind the AXI4 slave port of
    ``dut`` whose signals are ``<prefix>_<axi name>`` (``prefix`` ``"m_axi_"`` for the port
    ``m_axi``).

    Writes go through cocotbext-axi's ``AxiRamWrite``; reads through ``AxiRamRead`` (bursts in
    order, one at a time) or, with ``interleave``, an :class:`InterleavingReader`. Every channel
    gets a pause generator: ``stall`` is the probability of a valid gap on the channels the
    memory drives (R, B), ``backpressure`` of ready held low on those it receives (AR, AW, W).
    ``errors`` (a list of ``(lo, hi, resp)``) are windows whose beats answer SLVERR/DECERR.
    """

    def __init__(self, dut, prefix, clock, reset, *, size, rand=None, stall=0.0, backpressure=0.0,
                 errors=(), interleave=False):
        quiet(dut, prefix)
        self.rand = rand or random.Random(0)
        self.mem = SparseMemory(size)
        self.errors = ErrorWindows(errors)
        bus = AxiBus.from_prefix(dut, prefix)
        self.write_if = _ErrWrite(bus.write, clock, reset, mem=self.mem)
        self.write_if.errors = self.errors
        self.write_if.b_channel = _RespOverride(self.write_if.b_channel, "bresp")
        if interleave:
            self.read_if = InterleavingReader(bus.read, clock, reset, self.mem, rand=self.rand,
                                              errors=self.errors)
            read_channels = (self.read_if.ar, self.read_if.r)
        else:
            self.read_if = _ErrRead(bus.read, clock, reset, mem=self.mem)
            self.read_if.errors = self.errors
            self.read_if.r_channel = _RespOverride(self.read_if.r_channel, "rresp")
            read_channels = (self.read_if.ar_channel, self.read_if.r_channel.channel)
        received = (self.write_if.aw_channel, self.write_if.w_channel, read_channels[0])
        driven = (self.write_if.b_channel.channel, read_channels[1])
        for ch in received:
            if backpressure:
                ch.set_pause_generator(random_pause(random.Random(self.rand.random()), backpressure))
        for ch in driven:
            if stall:
                ch.set_pause_generator(random_pause(random.Random(self.rand.random()), stall))

    def read(self, addr, length):
        return bytes(self.mem[addr:addr + length])

    def write(self, addr, data):
        self.mem[addr:addr + len(data)] = bytes(data)

    async def fill(self, *, sparse=False):
        """Nothing to do: :meth:`write` writes the memory directly."""

    async def contents(self):
        return self.read(0, len(self.mem))

    async def update(self, segments):
        """Write ``segments`` (address → bytes) into the memory while the simulation runs."""
        for addr, data in segments.items():
            self.write(int(addr), data)

    async def regions(self, spans):
        """The bytes of each ``(addr, nbytes)`` of ``spans``."""
        return [self.read(int(a), int(n)) for a, n in spans]


def lite_master(dut, prefix, clock, reset, *, rand=None, stall=0.0, backpressure=0.0):
    """A cocotbext-axi ``AxiLiteMaster`` on ``<prefix>_<axi name>`` with pause generators on its
    five channels (``stall``: valid gaps on AW, W, AR; ``backpressure``: ready low on B, R)."""
    quiet(dut, prefix)
    rand = rand or random.Random(0)
    master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, prefix), clock, reset)
    for ch in (master.write_if.aw_channel, master.write_if.w_channel, master.read_if.ar_channel):
        if stall:
            ch.set_pause_generator(random_pause(random.Random(rand.random()), stall))
    for ch in (master.write_if.b_channel, master.read_if.r_channel):
        if backpressure:
            ch.set_pause_generator(random_pause(random.Random(rand.random()), backpressure))
    return master


async def cycles_until(clock, predicate, limit):
    """Wait for ``predicate()`` on rising edges; raise ``TimeoutError`` after ``limit`` cycles."""
    for _ in range(limit):
        if predicate():
            return
        await RisingEdge(clock)
    raise TimeoutError(f"condition not met within {limit} cycles")


class HdlMemory:
    """The Verilog memory model of a :class:`sim.tb.dma_top.WithHdlMemory` top, with the same
    interface as :class:`ExternalMemory`: ``stall``/``backpressure`` probabilities, error
    windows (at most four), contents through hex files in the run folder; ``max_latency``
    cycles at most before a read burst's first beat (uniform)."""

    def __init__(self, dut, clock, *, size, data_bytes, rand=None, stall=0.0, backpressure=0.0,
                 errors=(), max_latency=8):
        rand = rand or random.Random(0)
        if len(errors) > 4:
            raise ValueError("the memory model has four error windows")
        self.dut, self.clock, self.size, self.nb = dut, clock, size, data_bytes
        self.image = bytearray(size)
        self._written = []
        aw = len(dut.mem_err_lo) // 4
        dut.mem_seed.value = rand.randrange(1, 1 << 32)
        dut.mem_stall.value = min(int(stall * 65536), 65535)
        dut.mem_backpressure.value = min(int(backpressure * 65536), 65535)
        dut.mem_max_latency.value = max_latency
        dut.mem_err_lo.value = sum(int(lo) << (k * aw) for k, (lo, _, _) in enumerate(errors))
        dut.mem_err_hi.value = sum(int(hi) << (k * aw) for k, (_, hi, _) in enumerate(errors))
        dut.mem_err_resp.value = sum(int(r) << (2 * k) for k, (_, _, r) in enumerate(errors))
        dut.mem_load.value = 0
        dut.mem_dump.value = 0
        dut.mem_dump_lo.value = 0
        dut.mem_dump_hi.value = 0

    def write(self, addr, data):
        self.image[addr:addr + len(data)] = bytes(data)
        self._written.append((addr, len(data)))

    async def fill(self, *, sparse=False):
        """Load the model with what :meth:`write` put in the image (the clock must run): every
        word, or (``sparse``) only the words :meth:`write` touched, for a model whose memory is
        still all zero (Verilator's ``--x-initial fast`` zero-resets it)."""
        nb = self.nb
        if sparse:
            words = sorted({(a // nb, -(-(a + n) // nb)) for a, n in self._written})
            await self.update({w0 * nb: bytes(self.image[w0 * nb:w1 * nb]) for w0, w1 in words})
            return
        (run_dir() / "axi_mem_in.hex").write_bytes(_hex_lines(self.image, nb))
        await self._pulse_load()

    async def _pulse_load(self):
        # the model reads the file in the cycle after the edge that samples ``load``: wait for it,
        # so that the next load may rewrite the file
        self.dut.mem_load.value = 1
        await RisingEdge(self.clock)
        self.dut.mem_load.value = 0
        await RisingEdge(self.clock)

    async def contents(self):
        """The model's memory (``size`` bytes); fails if the model saw a protocol error."""
        assert not int(self.dut.mem_protocol_error.value), "the memory model saw an AXI protocol error"
        self.dut.mem_dump.value = 1
        await RisingEdge(self.clock)
        self.dut.mem_dump.value = 0
        await RisingEdge(self.clock)
        path = run_dir() / "axi_mem_out.hex"
        nb = self.nb
        if path.stat().st_size == (self.size // nb) * (2 * nb + 1):   # one fixed-width line per word
            text = np.fromfile(path, np.uint8).reshape(-1, 2 * nb + 1)[:, :2 * nb]
            return np.frombuffer(binascii.unhexlify(text.tobytes()), np.uint8).reshape(-1, nb)[:, ::-1].tobytes()
        words = [w for w in path.read_text().split() if not w.startswith("//")]
        return b"".join(bytes.fromhex(w.rjust(2 * nb, "0"))[::-1] for w in words[:self.size // nb])

    async def update(self, segments):
        """Write ``segments`` (address → bytes, each a whole number of bus words at a word
        address) into the model while the simulation runs, leaving every other word as it is: a
        ``$readmemh`` file with an ``@address`` line before each segment."""
        nb = self.nb
        lines = []
        for addr, data in sorted(segments.items()):
            addr, data = int(addr), bytes(data)
            if addr % nb or len(data) % nb:
                raise ValueError(f"a segment written into the running memory must be whole {nb}-byte words at a "
                                 f"word address: {len(data)} bytes at {addr:#x}")
            if addr + len(data) > self.size:
                raise ValueError(f"a segment of {len(data)} bytes at {addr:#x} runs past the memory's {self.size:#x}")
            self.image[addr:addr + len(data)] = data
            lines.append(f"@{addr // nb:x}\n".encode() + _hex_lines(data, nb))
        if not lines:
            return
        (run_dir() / "axi_mem_in.hex").write_bytes(b"".join(lines))
        await self._pulse_load()

    async def regions(self, spans):
        """The bytes of each ``(addr, nbytes)`` of ``spans``: a dump of only the words of each
        (``mem_dump_lo``, ``mem_dump_hi``)."""
        nb = self.nb
        assert not int(self.dut.mem_protocol_error.value), "the memory model saw an AXI protocol error"
        path = run_dir() / "axi_mem_out.hex"
        out = []
        for a, n in spans:
            a, n = int(a), int(n)
            w0, w1 = a // nb, -(-(a + n) // nb)
            self.dut.mem_dump_lo.value = w0
            self.dut.mem_dump_hi.value = w1
            self.dut.mem_dump.value = 1
            await RisingEdge(self.clock)
            self.dut.mem_dump.value = 0
            self.dut.mem_dump_hi.value = 0
            await RisingEdge(self.clock)
            words = [w for w in path.read_text().split() if not w.startswith(("//", "@"))]
            if len(words) != w1 - w0:
                raise RuntimeError(f"the memory model dumped {len(words)} words, not {w1 - w0}")
            data = b"".join(bytes.fromhex(w.rjust(2 * nb, "0"))[::-1] for w in words)
            out.append(data[a - w0 * nb:a - w0 * nb + n])
        return out


def _hex_lines(data, nb):
    """``data`` (a whole number of ``nb``-byte words) as ``$readmemh`` text: one word per line,
    most significant byte first."""
    words = np.frombuffer(bytes(data), np.uint8).reshape(-1, nb)[:, ::-1]
    text = np.frombuffer(binascii.hexlify(words.tobytes()), np.uint8).reshape(-1, 2 * nb)
    out = np.full((len(words), 2 * nb + 1), ord("\n"), np.uint8)
    out[:, :2 * nb] = text
    return out.tobytes()
