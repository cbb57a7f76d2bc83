# amaranth: UnusedElaboratable=no
"""Random mixed programs on the Verilated chip (``tiny``) end where the chip model says:
sim.chip_random writes seeded programs of LOAD, STORE, MATMUL (every weight layout and output
format, KV-sourced Q·Kᵀ and P·V), VECTOR (every op in both flavours), SOFTMAX and KV instructions
over random shapes, sharing data through a small scratchpad arena and through external memory,
with the waits their dependencies need, random extra waits and no wait between independent
instructions; some programs end with a failing instruction (KV refusal, vector BAD_SCALE, bad
requantization, read past a sequence's length). Every program's error registers and every byte
the programs stored (the whole arena at the end) equal golden.chip.ChipModel's, which runs the
instructions in program order; with random AXI latency and backpressure the results are
identical. The blocks overlap (their busy cycles add up to more than each program's cycles).
A directed case of the chip bug the random programs found (a refused KV READ wrote the first
result tiles). More seeds: ``python -m sim.chip_random --seeds 100`` (docs/chip.md)."""

import os

import numpy as np
import pytest

from golden.chip import ChipModel, races
from sim.chip_api import ChipSim, Program
from sim.chip_random import RandomPrograms
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus

U = isa.Unit

pytestmark = pytest.mark.xdist_group("chip_tiny")

SIM = ChipSim("tiny")
#: The seed of the programs (``CHIP_RANDOM_SEED`` overrides it).
SEED = int(os.environ.get("CHIP_RANDOM_SEED", "3"))


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stalls", "random_axi_stalls"])
def test_random_mixed_programs_leave_the_memory_and_error_registers_the_chip_model_gives(stall):
    print(f"seed {SEED}")
    b = RandomPrograms(SIM.config, SEED).build(programs=3, length=40)
    print(b.summary(), b.ops_used)
    assert all(races(SIM.config, p.words) == [] for p in b.programs)
    assert any(e[0] != ChipError.OK for e in b.expect)            # the seed ends a program with an error
    assert b.ops_used.get("MATMUL interleaved", 0) >= 2            # EXT weights in tile_order with G > 1
    res = b.run(SIM, seed=SEED, stall=stall, backpressure=stall)
    b.check(SIM, res)
    c = res.counters                                               # the last program: the arena dump
    assert c["store_exec_instrs"] == SIM.config.memory.spad_banks
    names = SIM.chip().counter_names
    blocks = ("load", "store", "matmul", "vector", "softmax", "kvcache")       # the blocks' own busy counters
    for r in range(len(b.programs) - 1):          # the blocks overlap: their busy cycles add up to more than the cycles
        run = dict(zip(names, (int(x) for x in res.outputs[f"run{r}_counters"]), strict=True))
        busy = sum(run[f"{u}_busy"] for u in blocks)
        print(f"program {r}: {run['cycles']} cycles, units busy {busy} cycles in all")
        assert busy > run["cycles"]


def test_a_kv_matmul_whose_read_is_refused_writes_none_of_its_result_tiles():
    """Q·Kᵀ over 8 keys (4 N tiles) of a sequence that holds 2: READ_PAST_LENGTH stops the
    program and the result region keeps what was there (the next program STOREs it); the model
    says the same. Found by sim.chip_random (seed 120 of its first version): the unit masked the
    result writes only once the weight forwarder had finished the instruction, so the first N
    tiles' (zero-weight) results were written."""
    cfg = SIM.config
    L, bus = cfg.memory.spad_lanes, cfg.memory.axi_data_bits // 8
    row = cfg.kvcache.heads * cfg.kvcache.head_dim
    rng = np.random.default_rng(5)
    print("seed 5")
    memory, o_addr, o_stride = {}, 600, 4
    kv_rows = rng.integers(-128, 128, (2, row)).astype(np.int8)
    q = rng.integers(-128, 128, (3, cfg.kvcache.head_dim)).astype(np.int8)
    sentinel = rng.integers(1, 1 << 30, (3, o_stride * L)).astype(np.int32)
    memory[0x10000], memory[0x10400], memory[0x10800] = kv_rows.tobytes(), q.tobytes(), sentinel.tobytes()
    e = isa.encode
    load = dict(elem_bytes=isa.ElemBytes.B1, signed=1)
    first = [e(isa.Opcode.KV, op=KVOp.ALLOC, seq=9),
             e(isa.Opcode.LOAD, ext_addr=0x10000, ext_stride=row, spad_addr=0, spad_stride=row // L, rows=2,
               elems=row, **load),
             e(isa.Opcode.KV, wait={U.LOAD: 1}, op=KVOp.APPEND, seq=9, rows=2, k_addr=0, k_stride=row // L,
               v_addr=0, v_stride=row // L),
             e(isa.Opcode.LOAD, ext_addr=0x10400, ext_stride=cfg.kvcache.head_dim, spad_addr=300,
               spad_stride=cfg.kvcache.head_dim // L, rows=3, elems=cfg.kvcache.head_dim, **load),
             e(isa.Opcode.LOAD, ext_addr=0x10800, ext_stride=o_stride * L * 4, spad_addr=o_addr, spad_stride=o_stride,
               rows=3, elems=o_stride * L, elem_bytes=isa.ElemBytes.B4),
             e(isa.Opcode.MATMUL, wait={U.LOAD: 3, U.KV: 2}, m=3, k=cfg.kvcache.head_dim, n=8, w_src=isa.WSource.KV_K,
               a_addr=300, a_stride=cfg.kvcache.head_dim // L, o_addr=o_addr, o_stride=o_stride, kv_seq=9),
             e(isa.Opcode.END)]
    second = [e(isa.Opcode.STORE, ext_addr=0x20000, ext_stride=o_stride * L * 4, spad_addr=o_addr,
                spad_stride=o_stride, rows=3, elems=o_stride * L, elem_bytes=isa.ElemBytes.B4),
              e(isa.Opcode.END)]
    assert bus <= 4 * o_stride * L
    programs = [Program(first, addr=0), Program(second, addr=0x1000)]
    model = ChipModel(cfg)
    for addr, data in memory.items():
        model.write_ext(addr, data)
    assert [model.execute(p.words).registers for p in programs] == [
        (ChipError.KV, KVStatus.READ_PAST_LENGTH, 5), (ChipError.OK, 0, 0)]
    assert model.read_ext(0x20000, sentinel.nbytes) == sentinel.tobytes()
    res = SIM.run(memory, programs, read_back=[("o", 0x20000, sentinel.nbytes)], seed=5)
    assert SIM.error_of(res, 0) == (ChipError.KV, KVStatus.READ_PAST_LENGTH, 5)
    np.testing.assert_array_equal(res.outputs["o"].view(np.int32).reshape(sentinel.shape), sentinel)
