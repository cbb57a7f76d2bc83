# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the execution units' parts and of what the chip cannot reach: the width
adapters between scratchpad words of L lanes and softmax beats of P lanes (every row length, with
valid gaps and backpressure), and commands the blocks reject (fields the dispatcher would
refuse, given straight to the units, some too wide for the blocks' fields), which answer
ChipError.SOFTMAX / ChipError.VECTOR with the block's status, without hanging, and leave the
unit ready for the next instruction."""

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

import golden
from golden.fp import fp32_add
from hdl.exec_softmax import BeatWidener, SoftmaxExec, WordNarrower
from hdl.exec_vector import VectorExec
from hdl.scratchpad import Scratchpad, address_width
from sim.amaranth_streams import random_pause, stream_sink, stream_source
from spec import isa
from spec.codes import ChipError, SoftmaxStatus
from spec.vector import VectorOp, VectorStatus


def _run(dut, *processes, background=()):
    top = Module()                 # a sync domain even for a design without registers (L = P)
    top.domains.sync = ClockDomain()
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(1e-8)
    for p in background:
        sim.add_testbench(p, background=True)
    for p in processes:
        sim.add_testbench(p)
    sim.run()


@pytest.mark.parametrize("P", [2, 4, 8])
def test_narrower_sends_the_beats_of_each_row_and_drops_those_past_its_end(P):
    L, rows = 8, 3
    seed = 30 + P
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    for length in (1, P - 1, P, P + 1, L - 1, L, L + 1, 2 * L + 3):
        if length < 1:
            continue
        words_per_row = -(-length // L)
        lanes = rng.integers(0, 1 << 32, (rows, words_per_row * L), dtype=np.uint64)
        words = []
        for r in range(rows):
            for w in range(words_per_row):
                data = sum(int(v) << (32 * k) for k, v in enumerate(lanes[r, w * L:(w + 1) * L]))
                last0 = int(w == words_per_row - 1)
                words.append(data | (last0 << (32 * L)) | (last0 << (32 * L + 1)) | (int(last0 and r == rows - 1)
                                                                                       << (32 * L + 2)))
        beats = -(-length // P)
        want = [sum(int(v) << (32 * k) for k, v in enumerate(lanes[r, b * P:(b + 1) * P]))
                for r in range(rows) for b in range(beats)]
        dut = WordNarrower(lanes=L, beat_lanes=P, length_width=16)
        got = []

        async def setup(ctx, dut=dut, length=length):
            ctx.set(dut.length, length)
        _run(dut, stream_sink(dut.o, len(want), got, pause=random_pause(0.3, seed), extra_cycles=20),
             background=[setup, stream_source(dut.i, words, pause=random_pause(0.3, seed + 1))])
        assert got == want, (P, length)


@pytest.mark.parametrize("P", [2, 4, 8])
def test_widener_zero_extends_the_lanes_and_ends_a_word_at_each_row_end(P):
    L, rows = 8, 3
    seed = 40 + P
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    for length in (1, P + 1, L, 2 * L + 3):
        beats = -(-length // P)
        vals = rng.integers(0, 1 << 16, (rows, beats * P))
        vals[:, length:] = 0                      # the unit's lanes past the row's end are 0
        ins = [sum(int(v) << (16 * k) for k, v in enumerate(vals[r, b * P:(b + 1) * P])) | (int(b == beats - 1)
                                                                                         << (16 * P))
               for r in range(rows) for b in range(beats)]
        words = -(-length // L)
        padded = np.zeros((rows, words * L), np.int64)
        padded[:, :length] = vals[:, :length]
        want = [sum(int(v) << (32 * k) for k, v in enumerate(padded[r, w * L:(w + 1) * L]))
                for r in range(rows) for w in range(words)]
        dut = BeatWidener(lanes=L, beat_lanes=P)
        got = []
        _run(dut, stream_sink(dut.o, len(want), got, pause=random_pause(0.3, seed), extra_cycles=20),
             background=[stream_source(dut.i, ins, pause=random_pause(0.2, seed + 1))])
        assert got == want, (P, length)


def test_adapters_and_units_check_their_parameters():
    with pytest.raises(ValueError, match="beat_lanes .* must divide lanes"):
        WordNarrower(lanes=2, beat_lanes=4, length_width=8)
    with pytest.raises(ValueError, match="beat_lanes must be a power of two"):
        BeatWidener(lanes=8, beat_lanes=3)
    from hdl.config import get_config
    cfg = get_config("tiny")
    with pytest.raises(ValueError, match=r"vector.lanes \(4\) must equal memory.spad_lanes \(2\)"):
        VectorExec.from_config(cfg.replace(vector={"lanes": 4}))
    with pytest.raises(ValueError, match=r"softmax.lanes \(4\) must divide memory.spad_lanes \(2\)"):
        SoftmaxExec.from_config(cfg.replace(softmax={"lanes": 4}))


class _Top(Elaboratable):
    """An execution unit on a one-bank scratchpad of 64 words of 2 lanes; the testbench has the
    scratchpad's last read and write ports."""

    def __init__(self, make):
        aw = address_width(words=64, banks=1)
        self.x = make(aw)
        self.reads = list(self.x.spad_r) if isinstance(self.x, VectorExec) else [self.x.spad_r]
        self.writes = list(self.x.spad_w) if isinstance(self.x, VectorExec) else [self.x.spad_w]
        self.spad = Scratchpad(lanes=2, words=64, banks=1, read_ports=len(self.reads) + 1,
                               write_ports=len(self.writes) + 1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.x, m.submodules.spad = self.x, self.spad
        for i, r in enumerate(self.reads):
            wiring.connect(m, r, self.spad.r[i])
        for j, w in enumerate(self.writes):
            wiring.connect(m, w, self.spad.w[j])
        return m

    def bench(self, words, instrs, done, out, out_addrs):
        """A testbench: writes ``words`` ({address: [lane0, lane1]}), runs ``instrs`` one after
        the other (each answer into ``done``), then reads the words at ``out_addrs`` into
        ``out``."""
        port, wr, rd = self.x.port, self.spad.w[-1], self.spad.r[-1]

        async def process(ctx):
            ctx.set(port.deps_ok, 1)
            ctx.set(port.done.ready, 1)
            for a, lanes in words.items():
                ctx.set(wr.req.payload.addr, a)
                ctx.set(wr.req.payload.data, [int(v) & 0xFFFFFFFF for v in lanes])
                ctx.set(wr.req.payload.mask, 3)
                ctx.set(wr.req.valid, 1)
                await ctx.tick().until(wr.req.ready)
            ctx.set(wr.req.valid, 0)
            await ctx.tick().repeat(4)
            for i, word in enumerate(instrs):
                ctx.set(port.instr.payload.bits, word)
                ctx.set(port.instr.payload.index, i)
                ctx.set(port.instr.valid, 1)
                await ctx.tick().until(port.instr.ready)
                ctx.set(port.instr.valid, 0)
                for _ in range(2000):
                    _, _, valid, status, detail, index = await ctx.tick().sample(
                        port.done.valid, port.done.payload.status, port.done.payload.detail,
                        port.done.payload.index)
                    if valid:
                        done.append((status, detail, index))
                        break
                else:
                    raise TimeoutError(f"instruction {i} never answered")
            assert ctx.get(port.idle)
            for a in out_addrs:
                ctx.set(rd.req.payload.addr, a)
                ctx.set(rd.req.valid, 1)
                ctx.set(rd.resp.ready, 1)
                await ctx.tick().until(rd.req.ready)
                ctx.set(rd.req.valid, 0)
                while True:
                    _, _, valid, data = await ctx.tick().sample(rd.resp.valid, rd.resp.payload.data)
                    if valid:
                        break
                out.extend([int(data[0]), int(data[1])])
        return process


def test_a_row_the_softmax_unit_rejects_answers_softmax_error_and_the_next_instruction_runs():
    rng = np.random.default_rng(50)
    print("seed 50")
    top = _Top(lambda aw: SoftmaxExec(lanes=2, unit_lanes=2, max_len=8, addr_width=aw))
    scores = np.zeros((2, 10), np.int64)                                  # 2 rows, 5 words each
    scores[:, :9] = rng.integers(-2 ** 16, 2 ** 16, (2, 9))
    m, sh = golden.softmax_scale_int8(1e-3)
    fields = dict(dtype=0, rows=2, a_addr=0, a_stride=5, o_addr=20, o_stride=5, scale=m, shift=sh, valid_len=9)
    instrs = [isa.encode(isa.Opcode.SOFTMAX, length=9, **fields),          # > max_len 8: rejected
              isa.encode(isa.Opcode.SOFTMAX, length=17, **fields),         # 1 in the unit's 4 bits, were it cut
              isa.encode(isa.Opcode.SOFTMAX, length=7, causal=1, causal_pos0=3, **fields)]
    want = golden.softmax_int8(scores[:, :7].astype(np.int32), (m, sh), 7, [3, 4])
    done, out = [], []
    words = {5 * r + w: scores[r, 2 * w:2 * w + 2] for r in range(2) for w in range(5)}
    _run(top, top.bench(words, instrs, done, out, range(20, 30)))
    bad = (ChipError.SOFTMAX, SoftmaxStatus.BAD_LENGTH)
    assert done == [(*bad, 0), (*bad, 1), (ChipError.OK, 0, 2)]
    got = np.array(out).reshape(2, 10)
    assert np.array_equal(got[:, :7], want) and not got[:, 7:].any()


def test_a_command_the_vector_unit_rejects_answers_vector_error_and_the_next_instruction_runs():
    """Fields the dispatcher would refuse, given straight to the unit: op 16 (ADD were it cut to
    the unit's 4 bits), ROPE with head_dim 6 (the a and p words read ahead are dropped), a
    length of 9 > max_len 8; then an ADD runs on the same readers."""
    rng = np.random.default_rng(51)
    print("seed 51")
    top = _Top(lambda aw: VectorExec(lanes=2, max_len=8, addr_width=aw))
    x = rng.normal(0, 2, (2, 6)).astype(np.float32)
    y = rng.normal(0, 2, (2, 6)).astype(np.float32)
    bits = lambda v: v.view(np.uint32).astype(np.int64)     # noqa: E731
    words = {3 * r + w: bits(x[r, 2 * w:2 * w + 2]) for r in range(2) for w in range(3)}
    words.update({10 + 3 * r + w: bits(y[r, 2 * w:2 * w + 2]) for r in range(2) for w in range(3)})
    f = dict(dtype=0, rows=2, length=6, a_addr=0, a_stride=3, b_addr=10, b_stride=3, p_addr=0, o_addr=20,
             o_stride=3)
    instrs = [isa.encode(isa.Opcode.VECTOR, op=16, **f),
              isa.encode(isa.Opcode.VECTOR, op=VectorOp.ROPE, head_dim=6, **f),
              isa.encode(isa.Opcode.VECTOR, op=VectorOp.ADD, **{**f, "length": 9}),
              isa.encode(isa.Opcode.VECTOR, op=VectorOp.ADD, **f)]
    done, out = [], []
    _run(top, top.bench(words, instrs, done, out, range(20, 26)))
    assert done == [(ChipError.VECTOR, VectorStatus.BAD_OP, 0), (ChipError.VECTOR, VectorStatus.BAD_HEAD_DIM, 1),
                    (ChipError.VECTOR, VectorStatus.BAD_LENGTH, 2), (ChipError.OK, 0, 3)]
    want = fp32_add(x.view(np.uint32), y.view(np.uint32)).reshape(2, 6)
    assert np.array_equal(np.array(out, np.uint64).reshape(2, 6), want)
