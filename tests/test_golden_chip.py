"""golden.chip.ChipModel alone (no Verilator): it reads the programs the directed chip tests
build (tests/chip_cases.py, sim.chip_matmul, sim.chip_kv) as those tests' golden expectations
say the chip runs them — every vector op in both modes, softmax rows with both masks, MATMUL in
every weight layout and output format, KV instructions and KV-sourced matmuls with their
refusals; it reports BAD_OPCODE, BAD_WAIT, NO_END and the units' runtime errors at the right
index with the writes the chip makes; it refuses what it does not model without changing its
state; races() finds exactly the unordered conflicting pairs; and the random program generator
writes race-free programs that use every opcode and vector op and every failing instruction it knows."""

import collections
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest
from chip_cases import ChipProgram, add_softmax, add_vector, softmax_case
from vector_cases import bf16, command, random_case

import golden
from golden.chip import ChipModel, UndefinedError, races
from hdl.config import get_config
from sim.chip_kv import KVPrograms, activations
from sim.chip_matmul import MatmulProgram, matmul_expected
from sim.chip_random import RandomPrograms
from spec import isa
from spec.codes import ChipError, KVOp, KVStatus, MatmulStatus
from spec.vector import CHIP_OPS, VectorOp, VectorStatus

CFG = get_config("tiny")
SPAD_WORDS = CFG.memory.spad_banks * CFG.memory.spad_words        # words of the scratchpad
U = isa.Unit
BF16 = ml_dtypes.bfloat16
KW = dict(lanes=CFG.vector.lanes, max_len=CFG.vector.max_len)


def run_model(memory, programs, read_back, config=CFG):
    """Run ``programs`` on a fresh model with ``memory``; (model, outcomes, result-like object
    with the read-back regions as ``outputs`` and ``error_of``)."""
    model = ChipModel(config)
    for addr, data in memory.items():
        model.write_ext(addr, data)
    outcomes = [model.execute(p.words) for p in programs]
    outputs = {name: np.frombuffer(model.read_ext(addr, n), np.uint8) for name, addr, n in read_back}
    res = SimpleNamespace(outputs=outputs)
    sim = SimpleNamespace(error_of=lambda _res, r=-1: outcomes[r].registers)
    return model, outcomes, res, sim


def test_every_vector_op_and_softmax_row_of_the_directed_chip_programs_gives_golden_bytes():
    rng = np.random.default_rng(3)
    pb = ChipProgram(CFG)
    cases = [("add", "bf16", 3, 7), ("add", "int8", 2, 64), ("swiglu", "bf16", 3, 7), ("swiglu", "int8", 3, 5),
             ("rmsnorm", "bf16", 3, 7), ("rmsnorm", "int8", 5, 9), ("dequant", "int8", 3, 7),
             ("requant", "int8", 3, 7), ("quant_static", "bf16", 3, 7), ("quant_static", "int8", 2, 5),
             ("quant_token", "bf16", 3, 7)]
    for i, (op, mode, rows, length) in enumerate(cases):
        add_vector(pb, f"{op}_{mode}_{i}", random_case(rng, op, mode, rows, length, **KW))
    table = golden.rope_table(head_dim=8, max_pos=8, base=10000.0)
    for mode in ("bf16", "int8"):
        x = rng.integers(-128, 128, (3, 16)).astype(np.int8) if mode == "int8" else bf16(rng.normal(0, 2, (3, 16)))
        add_vector(pb, f"rope_{mode}", command("rope", mode, x, table=table, pos=np.arange(3, 6), **KW),
                   rope_table=table, pos0=3, out_gap=1)
    for i, (dtype, rows, length, vl, cp) in enumerate([(0, 4, 13, None, 3), (0, 3, 16, 11, None),
                                                       (1, 4, 9, None, 0), (1, 2, 20, 5, 2), (0, 1, 1, None, None)]):
        add_softmax(pb, f"softmax_{i}", softmax_case(rng, dtype, rows, length, valid_len=vl, causal_pos0=cp), gap=i % 2)
    _, outcomes, res, _ = run_model(pb.memory, [pb.program()], pb.read_back)
    assert outcomes[0].registers == (ChipError.OK, 0, 0)
    assert len(pb.expect) == len(cases) + 1 + 2 + 5          # QUANT_TOKEN stores its exponents too
    assert pb.mismatches(res) == {}



@pytest.mark.parametrize("config", [CFG, get_config("default")], ids=["tiny", "default"])
def test_matmuls_in_every_weight_layout_and_output_format_give_golden_results(config):
    rng = np.random.default_rng(11)
    prog = MatmulProgram(config)
    want = {}
    cases = [("int8", "int32", False, "rows"), ("int8", "int32", True, "transposed"), ("int8", "int8", True, "wide"),
             ("uint8", "int32", False, "wide"), ("int8", "int8", False, "rows"), ("bf16", "fp32", True, "rows"),
             ("bf16", "bf16", False, "transposed"), ("bf16", "bf16", True, "rows")]
    for i, (a_dt, out, with_bias, fmt) in enumerate(cases):
        M, K, N = (int(x) for x in rng.integers(1, 20, 3))
        if a_dt == "bf16":
            a, w = rng.standard_normal((M, K)).astype(BF16), rng.standard_normal((K, N)).astype(BF16)
            bias, requant = (rng.standard_normal(N).astype(np.float32) if with_bias else None), None
        else:
            a = (rng.integers(0, 256, (M, K)).astype(np.uint8) if a_dt == "uint8"
                 else rng.integers(-128, 128, (M, K)).astype(np.int8))
            w = rng.integers(-128, 128, (K, N)).astype(np.int8)
            bias = rng.integers(-5000, 5000, N).astype(np.int32) if with_bias else None
            requant = (rng.integers(1 << 29, 1 << 31, N), rng.integers(8, 20, N)) if out == "int8" else None
        at = prog.load(a)
        o = prog.matmul(at, w, out=out, bias=bias, requant=requant, w_format=fmt, wait={"load": prog.count("load")})
        prog.store(o, f"y{i}", wait={"matmul": prog.count("matmul")})
        want[f"y{i}"] = matmul_expected(a, w, bias, requant, out)
    _, outcomes, res, _ = run_model(prog.memory, [prog.program()], prog.read_back, config)
    assert outcomes[0].registers == (ChipError.OK, 0, 0)
    for name, y in want.items():
        np.testing.assert_array_equal(prog.result(res, name), np.asarray(y).view(prog.result(res, name).dtype),
                                      err_msg=name)


@pytest.mark.parametrize("w_format", ["rows", "wide", "transposed"])
def test_an_interleaved_matmul_reads_its_weights_in_tile_order(w_format):
    """interleave G − 1 = 2: the weights packed in tile_order give A·W; the same bytes read with
    interleave 0 (the plain order) do not; KV-sourced weights with interleave are undefined."""
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (3, 9)).astype(np.int8)           # 5 K tiles, 6 N tiles of the 2×2 array
    w = rng.integers(-128, 128, (9, 11)).astype(np.int8)
    prog = MatmulProgram(CFG)
    at = prog.load(a)
    o = prog.matmul(at, w, w_format=w_format, wait={"load": 1}, interleave=2)
    plain = prog.matmul(at, w, w_format=w_format, w_addr=o.w_addr, interleave=0)   # the same bytes
    prog.store(o, "y", wait={"matmul": 2})
    prog.store(plain, "y0", wait={"matmul": 2})
    _, outcomes, res, _ = run_model(prog.memory, [prog.program()], prog.read_back)
    assert outcomes[0].registers == (ChipError.OK, 0, 0)
    np.testing.assert_array_equal(prog.result(res, "y"), golden.matmul_int8(a, w))
    assert not np.array_equal(prog.result(res, "y0"), prog.result(res, "y"))
    model = ChipModel(CFG)
    with pytest.raises(UndefinedError, match="interleave"):
        model.step(isa.encode(isa.Opcode.MATMUL, m=1, k=CFG.kvcache.head_dim, n=1, w_src=isa.WSource.KV_K,
                              interleave=1))


def test_kv_instructions_and_kv_matmuls_give_what_kvprograms_expects_with_refusals_at_their_index():
    b = KVPrograms(CFG, 4)
    a = b.rows(12)
    for s in (10, 11):
        b.kv(KVOp.ALLOC, s)
    b.kv(KVOp.APPEND, 10, 7, **b.at(a, 0))
    b.kv(KVOp.APPEND, 11, 5, **b.at(a, 7))
    rng = np.random.default_rng(4)
    b.matmul("qk", isa.WSource.KV_K, 10, 1, 2, 5, activations(rng, CFG, (3, CFG.kvcache.head_dim)))
    b.matmul("pv", isa.WSource.KV_V, 11, 0, 1, 4, activations(rng, CFG, (2, 4), unsigned=True))
    b.end()
    b.kv(KVOp.FREE, 10)
    for _ in range(5):
        b.kv(KVOp.APPEND, 11, 12, **a)       # the pool (64 positions) runs out in the fifth
    b.end()
    c = b.rows(3)
    b.kv(KVOp.FREE, 11)
    b.kv(KVOp.ALLOC, 12)
    b.kv(KVOp.APPEND, 12, 3, **c)
    b.matmul("past", isa.WSource.KV_K, 12, 0, 1, 4, activations(rng, CFG, (1, CFG.kvcache.head_dim)))
    b.end()
    assert b.expect[1] == (ChipError.KV, KVStatus.OUT_OF_PAGES, 5)
    assert b.expect[2][:2] == (ChipError.KV, KVStatus.READ_PAST_LENGTH)
    model, outcomes, res, sim = run_model(b.segments, b.programs, b.read_back)
    assert [o.registers for o in outcomes] == b.expect
    b.check_results(res)
    assert model.cache.snapshot() == b.cache.snapshot()


def test_errors_stop_at_their_index_with_the_chip_codes_and_the_writes_the_chip_makes():
    pb = ChipProgram(CFG)
    x = bf16(np.random.default_rng(2).normal(0, 2, (2, 5)))
    a, stride = pb.load(golden.as_bf16_bits(x).astype(np.int64), 2)
    gain, _ = pb.load(golden.as_bf16_bits(bf16(np.ones(5))).astype(np.int64)[None], 2)
    o = pb.spad_alloc(8)
    nan_eps = dict(op=VectorOp.RMSNORM, dtype=1, rows=2, length=5, a_addr=a, a_stride=stride, p_addr=gain,
                   o_addr=o, o_stride=3, imm0=0x7FC00000, imm1=int(golden.as_fp32_bits(np.float32(1 / 5))))
    model = ChipModel(CFG)
    for addr, data in pb.memory.items():
        model.write_ext(addr, data)
    load = list(pb.words)
    before = model.spad.mem.copy()
    out = model.execute(load + [isa.encode(isa.Opcode.VECTOR, wait={U.LOAD: 2}, **nan_eps),
                                isa.encode(isa.Opcode.END)])
    assert out.registers == (ChipError.VECTOR, VectorStatus.BAD_SCALE, 2)
    assert not model.spad.mem[o:o + 6].any() and (model.spad.mem != before).any()     # LOADs ran, no result
    assert model.execute([0]).registers == (ChipError.BAD_OPCODE, 0, 0)
    assert model.execute([isa.encode(isa.Opcode.KV, op=KVOp.ALLOC, seq=3),
                          isa.encode(isa.Opcode.KV, wait={U.LOAD: 1}, op=KVOp.FREE, seq=3)]).registers \
        == (ChipError.BAD_WAIT, 0, 1)
    assert model.cache.sequences == [3]                       # the ALLOC before it ran
    assert model.execute(load).registers == (ChipError.NO_END, 0, 2)
    assert model.execute([isa.encode(isa.Opcode.KV, op=KVOp.FREE, seq=3), isa.encode(isa.Opcode.KV, op=KVOp.FREE,
                                                                                       seq=3)]).registers \
        == (ChipError.KV, KVStatus.UNKNOWN_SEQ, 1)
    # BAD_REQUANT: the results are written (shift clamped), then the program stops
    prog = MatmulProgram(CFG)
    rng = np.random.default_rng(9)
    a8, w = rng.integers(-128, 128, (3, 5)).astype(np.int8), rng.integers(-128, 128, (5, 4)).astype(np.int8)
    mult, shift = rng.integers(1 << 29, 1 << 31, 4), np.array([10, 0, 12, 70])
    o_t = prog.matmul(prog.load(a8), w, out="int8", requant=(mult, shift), wait={"load": 1})
    prog.store(o_t, "y", wait={"matmul": 1})
    _, outcomes, _, _ = run_model(prog.memory, [prog.program()], prog.read_back)
    assert outcomes[0].registers == (ChipError.MATMUL, MatmulStatus.BAD_REQUANT, 1)
    m2 = ChipModel(CFG)
    for addr, data in prog.memory.items():
        m2.write_ext(addr, data)
    m2.execute(prog.program().words)
    got = m2.spad.mem[o_t.addr:o_t.addr + 3 * o_t.stride].reshape(3, -1)[:, :4].view(np.int32)
    np.testing.assert_array_equal(got, golden.requantize(golden.matmul_int8(a8, w), mult, np.clip(shift, 1, 62)))


def test_what_the_model_does_not_define_raises_and_changes_nothing():
    model = ChipModel(CFG)
    model.spad.mem[:8] = 7
    before = model.spad.mem.copy()
    bad = [isa.encode(isa.Opcode.VECTOR, op=VectorOp.ADD, dtype=1, rows=0, length=4),           # BAD_FIELD
           isa.encode(isa.Opcode.LOAD, rows=1, elems=4, elem_bytes=0, spad_addr=SPAD_WORDS - 1),   # SPAD_RANGE
           isa.encode(isa.Opcode.MATMUL, m=1, k=2, n=2, a_addr=0, a_stride=1, o_addr=100)]    # int8 7s: fine…
    with pytest.raises(UndefinedError, match="instruction 0: a VECTOR field check"):
        model.execute(bad[:1])
    with pytest.raises(UndefinedError, match="SPAD_RANGE"):
        model.execute(bad[1:2])
    model.spad.mem[0] = 0x1234                                # … but not an int8 lane
    before = model.spad.mem.copy()
    with pytest.raises(UndefinedError, match="not a sign-extended int8"):
        model.execute(bad[2:])
    np.testing.assert_array_equal(model.spad.mem, before)


def test_races_finds_exactly_the_unordered_conflicting_pairs():
    load = dict(ext_addr=0, ext_stride=4, spad_addr=0, spad_stride=1, rows=2, elems=2, elem_bytes=0)
    vec = dict(op=VectorOp.QUANT_STATIC, dtype=1, rows=2, length=2, a_addr=0, a_stride=1, o_addr=100, o_stride=1,
               imm0=0x3F800000)
    store = dict(ext_addr=64, ext_stride=4, spad_addr=100, spad_stride=1, rows=2, elems=2, elem_bytes=0)
    L, V, S = isa.Opcode.LOAD, isa.Opcode.VECTOR, isa.Opcode.STORE
    e = isa.encode
    assert [r[:2] for r in races(CFG, [e(L, **load), e(V, **vec)])] == [(0, 1)]
    assert races(CFG, [e(L, **load), e(V, wait={U.LOAD: 1}, **vec)]) == []
    other = dict(load, spad_addr=500)                          # touches nothing the VECTOR does
    assert races(CFG, [e(L, **load), e(L, **other), e(V, wait={U.LOAD: 1}, **vec)]) == []
    # transitive: the STORE waits for the VECTOR, which waits for the LOAD; a STORE of the LOAD's
    # words that waits only for the VECTOR is ordered after the LOAD through it
    chain = [e(L, **load), e(V, wait={U.LOAD: 1}, **vec), e(S, wait={U.VECTOR: 1}, **dict(store, spad_addr=0))]
    assert races(CFG, chain) == []
    assert [r[:2] for r in races(CFG, chain[:2] + [e(S, **store)])] == [(1, 2)]
    # write after read: a LOAD over the VECTOR's input without waiting for it
    assert [r[:2] for r in races(CFG, [e(L, **load), e(V, wait={U.LOAD: 1}, **vec), e(L, **load)])] == [(1, 2)]
    # a STORE over a MATMUL's weights races whatever the waits
    mm = e(isa.Opcode.MATMUL, wait={U.STORE: 1}, m=1, k=2, n=2, a_addr=0, a_stride=1, o_addr=200, o_stride=1,
           w_addr=64)
    assert [r[:2] for r in races(CFG, [e(S, **store), mm])] == [(1, 0)]


def test_random_programs_are_race_free_and_use_every_opcode_and_vector_op():
    used = collections.Counter()
    errors = set()
    for seed in range(20):
        b = RandomPrograms(CFG, seed).build(3, 40)
        for p in b.programs:
            assert races(CFG, p.words) == [], f"seed {seed}"
        if seed < 4:      # the model run from scratch on the memory image gives what the generator expects
            _, outcomes, _, _ = run_model(b.segments, b.programs, [])
            assert [o.registers for o in outcomes] == [tuple(x) for x in b.expect]
        used.update(b.ops_used)
        errors |= {x[:2] for x in b.expect}
    assert {"LOAD", "STORE", "MATMUL", "MATMUL interleaved", "SOFTMAX", "KV"} <= set(used)
    assert {f"VECTOR.{op.name}" for op in CHIP_OPS} <= set(used)
    assert {(ChipError.OK, 0), (ChipError.KV, KVStatus.OUT_OF_PAGES), (ChipError.KV, KVStatus.UNKNOWN_SEQ),
            (ChipError.KV, KVStatus.READ_PAST_LENGTH), (ChipError.VECTOR, VectorStatus.BAD_SCALE),
            (ChipError.MATMUL, MatmulStatus.BAD_REQUANT)} <= errors
