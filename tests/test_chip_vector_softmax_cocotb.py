# amaranth: UnusedElaboratable=no
"""The VECTOR and SOFTMAX units in the Verilated chip (``tiny``: 2 lanes, 32-bit AXI): programs
of LOAD → VECTOR / SOFTMAX → STORE, bit-exact with golden for every vector op in both modes and
softmax rows of both data types with causal and padding masks; instructions chained through the
scratchpad with waits; a VECTOR and a SOFTMAX at the same time; random AXI latency and
backpressure with identical results; every decode check of both opcodes; a runtime error of the
vector unit that stops the program, drops the instructions after it and leaves the chip clean."""

import numpy as np
import pytest
from chip_cases import ChipProgram, U, add_softmax, add_vector, softmax_case
from vector_cases import bf16, command, random_case

import golden
from golden.fp import as_bf16_bits, as_fp32_bits, fp32_add
from golden.layer import dequantize_acc, quantize_per_token
from hdl.cmdproc import CHECKS
from sim.chip_api import ChipSim, Program
from spec import isa
from spec.codes import ChipError
from spec.vector import VectorOp, VectorStatus

pytestmark = pytest.mark.xdist_group("chip_tiny")

SIM = ChipSim("tiny")
CFG = SIM.config
V, MAX_LEN = CFG.vector.lanes, CFG.vector.max_len
KW = dict(lanes=V, max_len=MAX_LEN)
END = isa.encode(isa.Opcode.END)
TABLE = golden.rope_table(head_dim=8, max_pos=8, base=10000.0)


def _vector_program(seed):
    """Every vector op in both modes (the int8 layer's conversions included), one LOAD → VECTOR
    → STORE group each, with odd lengths, several row groups and the longest row."""
    rng = np.random.default_rng(seed)
    pb = ChipProgram(CFG)
    names = []
    cases = [("add", "bf16", 3, 7), ("add", "int8", 2, MAX_LEN), ("swiglu", "bf16", 3, 7), ("swiglu", "int8", 3, 5),
             ("rmsnorm", "bf16", 3, 7), ("rmsnorm", "int8", 5, 9), ("dequant", "int8", 3, 7),
             ("dequant", "int8", 2, 6), ("requant", "int8", 3, 7), ("quant_static", "bf16", 3, 7),
             ("quant_static", "int8", 2, 5), ("quant_token", "bf16", 3, 7)]
    for i, (op, mode, rows, length) in enumerate(cases):
        case = random_case(rng, op, mode, rows, length, **KW)
        if op == "dequant" and (case[0]["s_in"] is None) == (i == 6):   # with and without ROW_EXP
            case = _dequant(rng, rows, length, row_exp=i == 6)
        names.append(f"{op}_{mode}_{i}")
        add_vector(pb, names[-1], case)
    for mode in ("bf16", "int8"):          # 2 heads of 8, rows at positions 3, 4, 5
        x = rng.integers(-128, 128, (3, 16)).astype(np.int8) if mode == "int8" else bf16(rng.normal(0, 2, (3, 16)))
        names.append(f"rope_{mode}")
        add_vector(pb, names[-1], command("rope", mode, x, table=TABLE, pos=np.arange(3, 6), **KW),
                   rope_table=TABLE, pos0=3, out_gap=1)
    return pb, names


def _dequant(rng, rows, length, *, row_exp):
    acc = rng.integers(-2 ** 24, 2 ** 24, (rows, length)).astype(np.int32)
    kw = dict(multiplier=rng.integers(1 << 30, 1 << 31, length), shift=rng.integers(0, 63, length))
    if row_exp:
        kw["row_exp"] = rng.integers(-20, 20, rows)
    return command("dequant", "int8", acc, **kw, **KW)


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stalls", "random_axi_stalls"])
def test_every_vector_op_in_both_modes_runs_load_op_store_bit_exact(stall):
    seed = 21
    print(f"seed {seed}")
    pb, names = _vector_program(seed)
    res = SIM.run(pb.memory, pb.program(), read_back=pb.read_back, stall=stall, backpressure=stall, seed=seed)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    assert pb.mismatches(res) == {}
    c = res.counters
    n = len(names)
    assert c["vector_exec_instrs"] == n and c["proc_retired"] == len(pb.words)
    assert c["vector_beats_out"] > 0 and c["vector_exec_busy"] >= c["vector_busy"] > 0
    print({k: v for k, v in c.items() if k.startswith("vector")})


def _softmax_program(seed):
    rng = np.random.default_rng(seed)
    pb = ChipProgram(CFG)
    cases = [  # (dtype, rows, length, valid_len, causal_pos0)
        (0, 4, 13, None, 3),         # int8, causal from position 3
        (0, 3, 16, 11, None),        # int8, padding
        (0, 2, CFG.softmax.max_len, 40, 30),   # int8, longest row, both masks
        (1, 4, 9, None, 0),          # bf16, causal from 0
        (1, 3, 7, 100, None),        # bf16, valid_len past the row: no padding
        (1, 2, 20, 5, 2),            # bf16, both masks
        (0, 1, 1, None, None),       # one element
    ]
    names = []
    for i, (dtype, rows, length, vl, cp) in enumerate(cases):
        names.append(f"softmax_{i}")
        add_softmax(pb, names[-1], softmax_case(rng, dtype, rows, length, valid_len=vl, causal_pos0=cp),
                    gap=i % 2)
    return pb, names


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stalls", "random_axi_stalls"])
def test_softmax_rows_int8_and_bf16_with_causal_and_padding_masks_are_bit_exact(stall):
    seed = 22
    print(f"seed {seed}")
    pb, names = _softmax_program(seed)
    res = SIM.run(pb.memory, pb.program(), read_back=pb.read_back, stall=stall, backpressure=stall, seed=seed)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    assert pb.mismatches(res) == {}
    c = res.counters
    assert c["softmax_exec_instrs"] == len(names)
    assert c["softmax_cmds"] == sum(pb.expect[n][0].shape[0] for n in names) and c["softmax_cmds_rejected"] == 0


def test_instructions_chained_through_the_scratchpad_back_to_back_with_waits():
    """RMSNORM → QUANT_TOKEN → DEQUANT (with the QUANT_TOKEN's exponents) → ADD (int8 layer's
    fp32 residual) → SOFTMAX (bf16) of the sum: each reads what the one before wrote, the VECTOR
    ones back to back in their queue, the SOFTMAX waiting for the last VECTOR."""
    rng = np.random.default_rng(23)
    print("seed 23")
    pb = ChipProgram(CFG)
    rows, n = 3, 12
    x = bf16(rng.normal(0, 3, (rows, n)))
    gain = bf16(1 + 0.2 * rng.normal(size=n))
    res_in = rng.normal(0, 2, (rows, n)).astype(np.float32)
    mult, shift = rng.integers(1 << 30, 1 << 31, n), rng.integers(20, 40, n)
    # golden, step by step
    h = golden.rmsnorm_bf16(x, gain, eps=1e-5)
    q, e = quantize_per_token(h)
    d = dequantize_acc(q.astype(np.int32), mult, shift, e)
    s = golden.fp.fp32_from_bits(fp32_add(as_fp32_bits(d), as_fp32_bits(res_in))).reshape(rows, n)
    c = golden.softmax_scale_bf16(0.5)
    p = as_bf16_bits(golden.softmax_bf16(s, c, causal_pos=np.arange(rows) + 5))
    # the program
    xa, xs = pb.load(as_bf16_bits(x).astype(np.int64), 2)
    ga, _ = pb.load(as_bf16_bits(gain).astype(np.int64)[None], 2)
    ra, rs = pb.load(as_fp32_bits(res_in).reshape(rows, n).view(np.int32), 4)
    sa, _ = pb.load(shift[None], 1)
    ma, _ = pb.load(mult[None], 4)
    w = pb.row_words(n)
    h_at, q_at, e_at, d_at, s_at, p_at = (pb.spad_alloc(rows * w) for _ in range(6))
    loads = pb.waits(U.LOAD)
    eps, inv_d = int(as_fp32_bits(np.float32(1e-5))), int(as_fp32_bits(np.float32(1.0 / n)))
    common = dict(length=n, rows=rows, dtype=1)
    pb.emit(isa.Opcode.VECTOR, wait=loads, op=VectorOp.RMSNORM, a_addr=xa, a_stride=xs, p_addr=ga, p_stride=0,
            o_addr=h_at, o_stride=w, imm0=eps, imm1=inv_d, **common)
    pb.emit(isa.Opcode.VECTOR, op=VectorOp.QUANT_TOKEN, a_addr=h_at, a_stride=w, o_addr=q_at, o_stride=w,
            s_out_addr=e_at, **common)
    pb.emit(isa.Opcode.VECTOR, op=VectorOp.DEQUANT, flags=1, a_addr=q_at, a_stride=w, b_addr=sa, b_stride=0,
            p_addr=ma, p_stride=0, s_in_addr=e_at, o_addr=d_at, o_stride=w, **{**common, "dtype": 0})
    pb.emit(isa.Opcode.VECTOR, op=VectorOp.ADD, a_addr=d_at, a_stride=w, b_addr=ra, b_stride=rs, o_addr=s_at,
            o_stride=w, **{**common, "dtype": 0})
    pb.emit(isa.Opcode.SOFTMAX, wait={U.VECTOR: 4}, dtype=1, rows=rows, length=n, a_addr=s_at, a_stride=w,
            o_addr=p_at, o_stride=w, scale=int(as_fp32_bits(c)), valid_len=n, causal_pos0=5, causal=1)
    pb.store("q", q_at, w, q, 1)
    pb.store("e", e_at, 1, e[:, None], 4)
    pb.store("d", d_at, w, as_fp32_bits(d).reshape(rows, n).view(np.int32), 4)
    pb.store("p", p_at, w, p, 2)
    res = SIM.run(pb.memory, pb.program(), read_back=pb.read_back, seed=23)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    assert pb.mismatches(res) == {}


def test_a_vector_and_a_softmax_instruction_run_in_the_same_cycles():
    """Program 1 loads; program 2 is one long VECTOR and one long SOFTMAX with no wait between
    them: their busy cycles add up to more than the program's cycles; program 3 stores."""
    rng = np.random.default_rng(24)
    print("seed 24")
    load, run, store = (ChipProgram(CFG, prog_addr=a, ext_base=0x8000) for a in (0, 0x1000, 0x2000))
    rows, n = 24, 48
    vcase = random_case(rng, "add", "bf16", rows, n, **KW)
    scase = softmax_case(rng, 0, rows, n, causal_pos0=20)
    cmd, want, _ = vcase
    w = load.row_words(n)
    a_at, _ = load.load(np.asarray(cmd["a"]), 2, bank=0)
    b_at, _ = load.load(np.asarray(cmd["b"]), 2, bank=1)
    s_at, _ = load.load(scase[1], 4, bank=2)
    vo, so = rows * w + 0, rows * w + load.bank_words      # outputs in banks 0 and 1, after the inputs
    run.emit(isa.Opcode.VECTOR, op=VectorOp.ADD, dtype=1, length=n, rows=rows, a_addr=a_at, a_stride=w,
             b_addr=b_at, b_stride=w, o_addr=vo, o_stride=w)
    run.emit(isa.Opcode.SOFTMAX, **{**scase[0], "a_addr": s_at, "a_stride": w, "o_addr": so, "o_stride": w})
    store.ext = load.ext
    store.store("v", vo, w, want, 2, wait_units=())
    store.store("s", so, w, scase[2], 1, wait_units=())
    res = SIM.run(load.memory, [load.program(), run.program(), store.program()], read_back=store.read_back, seed=24)
    for r in range(3):
        assert SIM.error_of(res, r) == (ChipError.OK, 0, 0)
    assert store.mismatches(res) == {}
    c = dict(zip(SIM.chip().counter_names, (int(x) for x in res.outputs["run1_counters"]), strict=True))
    v_busy, s_busy = c["vector_exec_busy"], c["softmax_exec_busy"]
    overlap = v_busy + s_busy - c["cycles"]
    print(f"cycles {c['cycles']}, vector busy {v_busy}, softmax busy {s_busy}: at least {overlap} cycles both")
    assert v_busy >= rows * w and s_busy >= rows * w
    assert overlap > 0.8 * min(v_busy, s_busy)


# ------------------------------------------------------------------------------------------------
# errors

def _vector(**f):
    base = dict(op=VectorOp.ADD, dtype=1, length=4, rows=2, a_addr=0, a_stride=2, b_addr=100, b_stride=2,
                o_addr=200, o_stride=2)
    return isa.encode(isa.Opcode.VECTOR, **{**base, **f})


def _softmax(**f):
    base = dict(dtype=0, rows=2, length=4, a_addr=0, a_stride=2, o_addr=200, o_stride=2, scale=1 << 15, shift=20,
                valid_len=4)
    return isa.encode(isa.Opcode.SOFTMAX, **{**base, **f})


#: The error code of each kind of check (docs/isa.md, "Errors").
KIND = {"field": ChipError.BAD_FIELD, "spad": ChipError.SPAD_RANGE}
SPAD_END = CFG.memory.spad_words * CFG.memory.spad_banks
BAD = {   # one instruction per check, in the order of CHECKS[opcode]
    isa.Opcode.VECTOR: [
        _vector(rows=0), _vector(length=0), _vector(length=MAX_LEN + 1), _vector(op=8),
        _vector(op=VectorOp.QUANT_TOKEN, dtype=0), _vector(flags=2),
        _vector(op=VectorOp.ROPE, length=12, head_dim=6), _vector(op=VectorOp.ROPE, length=12, head_dim=8),
        _vector(a_addr=SPAD_END - 3), _vector(b_addr=SPAD_END - 4, b_stride=3),
        _vector(op=VectorOp.ROPE, length=16, head_dim=8, rows=3, p_addr=SPAD_END - 6, p_stride=3),
        _vector(op=VectorOp.REQUANT, rows=3, s_in_addr=SPAD_END - 2),
        _vector(o_addr=SPAD_END - 3),
        _vector(op=VectorOp.QUANT_TOKEN, rows=5, s_out_addr=SPAD_END - 4),
    ],
    isa.Opcode.SOFTMAX: [
        _softmax(rows=0), _softmax(length=0), _softmax(length=CFG.softmax.max_len + 1),
        _softmax(a_addr=SPAD_END - 2, a_stride=1), _softmax(o_addr=SPAD_END - 3),
    ],
}


def test_every_vector_and_softmax_decode_check_stops_the_program_with_its_code_and_detail():
    """One program per check: a good instruction of the opcode, the bad one (index 1), an END.
    The same fields one step inside every limit pass (the good instruction's neighbours)."""
    cases = [(op, d, word) for op, words in BAD.items() for d, word in enumerate(words)]
    assert [len(BAD[op]) for op in BAD] == [len(CHECKS[op]) for op in BAD]
    good = {isa.Opcode.VECTOR: [_vector(a_addr=SPAD_END - 4), _vector(op=VectorOp.ROPE, length=16, head_dim=8)],
            isa.Opcode.SOFTMAX: [_softmax(length=CFG.softmax.max_len, a_stride=32, o_addr=300, o_stride=32)]}
    programs = [Program([good[op][0], word, END], addr=0x100 * i) for i, (op, _, word) in enumerate(cases)]
    programs.append(Program([*good[isa.Opcode.VECTOR], *good[isa.Opcode.SOFTMAX], END], addr=0x100 * len(cases)))
    res = SIM.run({}, programs, seed=25)
    for r, (op, detail, _) in enumerate(cases):
        want = (KIND[CHECKS[op][detail][0]], detail, 1)
        assert SIM.error_of(res, r) == want, (op.name, CHECKS[op][detail][1])
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)


def test_a_vector_unit_error_stops_the_program_drops_the_queued_instructions_and_leaves_the_chip_clean():
    """RMSNORM with a NaN eps and int8 ROPE with shift 0 reach the unit (the dispatcher leaves the
    immediates to it): ChipError.VECTOR with the unit's status BAD_SCALE as detail, at the
    instruction's index, after the words read ahead for it were dropped; the VECTOR and STORE
    queued behind it never run (their output stays untouched); a good program runs after each."""
    rng = np.random.default_rng(26)
    print("seed 26")
    rows, n = 3, 8
    x = np.asarray(random_case(rng, "rmsnorm", "bf16", rows, n, **KW)[0]["a"])
    img = {0x8000: b"".join(r.astype("<u2").tobytes() for r in x), 0x9000: bytes([0xEE]) * 64}
    w = n // V
    load = isa.encode(isa.Opcode.LOAD, ext_addr=0x8000, ext_stride=2 * n, spad_addr=0, spad_stride=w, rows=rows,
                      elems=n, elem_bytes=isa.ElemBytes.B2)
    nan = 0x7FC00000
    bad = [
        isa.encode(isa.Opcode.VECTOR, wait={U.LOAD: 1}, op=VectorOp.RMSNORM, dtype=1, length=n, rows=rows, a_addr=0,
                   a_stride=w, p_addr=1024, p_stride=0, o_addr=2048, o_stride=w, imm0=nan, imm1=0x3E000000),
        isa.encode(isa.Opcode.VECTOR, wait={U.LOAD: 1}, op=VectorOp.ROPE, dtype=0, length=n, rows=rows, head_dim=4,
                   shift=0, imm0=1 << 30, a_addr=0, a_stride=w, p_addr=1024, p_stride=1, o_addr=2048, o_stride=w),
    ]
    after = [isa.encode(isa.Opcode.VECTOR, op=VectorOp.ADD, dtype=1, length=n, rows=rows, a_addr=0, a_stride=w,
                        b_addr=0, b_stride=w, o_addr=3072, o_stride=w),
             isa.encode(isa.Opcode.STORE, wait={U.VECTOR: 2}, ext_addr=0x9000, ext_stride=4, spad_addr=3072,
                        spad_stride=w, rows=1, elems=2, elem_bytes=isa.ElemBytes.B2)]
    good = Program([load, isa.encode(isa.Opcode.VECTOR, wait={U.LOAD: 1}, op=VectorOp.ADD, dtype=1, length=n,
                                     rows=rows, a_addr=0, a_stride=w, b_addr=0, b_stride=w, o_addr=3072, o_stride=w),
                    isa.encode(isa.Opcode.STORE, wait={U.VECTOR: 1}, ext_addr=0xA000, ext_stride=2 * n,
                               spad_addr=3072, spad_stride=w, rows=rows, elems=n, elem_bytes=isa.ElemBytes.B2), END],
                   addr=0x800)
    programs = []
    for i, word in enumerate(bad):
        programs += [Program([load, word, *after, END], addr=0x200 * i), good]
    res = SIM.run(img, programs, read_back=[("untouched", 0x9000, 64), ("sum", 0xA000, rows * 2 * n)], seed=26)
    for i in range(len(bad)):
        assert SIM.error_of(res, 2 * i) == (ChipError.VECTOR, VectorStatus.BAD_SCALE, 1)
        assert SIM.error_of(res, 2 * i + 1) == (ChipError.OK, 0, 0)
        c = dict(zip(SIM.chip().counter_names, (int(x) for x in res.outputs[f"run{2 * i}_counters"]), strict=True))
        assert c["vector_exec_instrs"] == 1 and c["store_exec_instrs"] == 0
    assert res.outputs["untouched"].tobytes() == bytes([0xEE]) * 64
    want = as_bf16_bits(golden.residual_add_bf16(golden.fp.bf16_from_bits(x.astype(np.uint16)),
                                                 golden.fp.bf16_from_bits(x.astype(np.uint16))))
    assert np.array_equal(np.frombuffer(res.outputs["sum"].tobytes(), "<u2").reshape(rows, n), want)
