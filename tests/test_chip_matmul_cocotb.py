"""The MATMUL unit through the chip (hdl/chip.py, sim.chip_api.ChipSim): LOAD A from external
memory, MATMUL with weights and parameters from external memory in every layout of
spec.matmul_layout, STORE the result; every result bit for bit against golden.matmul_int8 /
matmul_bf16 (+ requantize, fp32_to_bf16), random shapes with partial tiles, every output format,
with and without random AXI latency and backpressure (identical results). Back-to-back matmuls
with and without waits (a MATMUL reads the result of the one before it without a wait); the
weights of the next matmul are read while the current one runs (counters); errors: AXI errors on
weights and parameters, the engine's BAD_REQUANT, an abort that drops taken instructions, each
followed by a clean program whose results are right."""

import ml_dtypes
import numpy as np
import pytest

import golden
from hdl.exec_matmul import AXI_DETAIL_PARAMS, AXI_DETAIL_WEIGHTS
from sim.chip_api import ChipSim
from sim.chip_matmul import MatmulProgram, matmul_expected
from spec import isa
from spec.codes import ChipError, MatmulStatus

SIM = ChipSim("tiny")       # 2×2 array, 2 lanes, 32-bit AXI
BF16 = ml_dtypes.bfloat16
DONE, ERROR = 2, 3


def operands(rng, M, K, N, kind):
    """(a, w, bias, requant) of a case: kind is (a dtype, out, bias?)."""
    a_dt, out, with_bias = kind
    if a_dt == "bf16":
        a = rng.standard_normal((M, K)).astype(BF16)
        w = rng.standard_normal((K, N)).astype(BF16)
        bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
        return a, w, bias, None
    a = (rng.integers(0, 256, (M, K)).astype(np.uint8) if a_dt == "uint8"
         else rng.integers(-128, 128, (M, K)).astype(np.int8))
    w = rng.integers(-128, 128, (K, N)).astype(np.int8)
    bias = rng.integers(-5000, 5000, N).astype(np.int32) if with_bias else None
    requant = None
    if out == "int8":
        requant = (rng.integers(1 << 29, 1 << 31, N), rng.integers(8, 20, N))
    return a, w, bias, requant


def add_case(prog, rng, M, K, N, kind, w_format, name, wait_load=True, interleave=0):
    """LOAD A, MATMUL (waiting for the LOAD), STORE (waiting for the MATMUL); the expectation."""
    a, w, bias, requant = operands(rng, M, K, N, kind)
    at = prog.load(a)
    o = prog.matmul(at, w, out=kind[1], bias=bias, requant=requant, w_format=w_format,
                    wait={"load": prog.count("load")} if wait_load else None, interleave=interleave)
    prog.store(o, name, wait={"matmul": prog.count("matmul")})
    return matmul_expected(a, w, bias, requant, kind[1])


CASES = [  # (a dtype, out, bias), weight format
    (("int8", "int32", False), "rows"), (("int8", "int32", True), "transposed"), (("int8", "int8", True), "wide"),
    (("uint8", "int32", False), "wide"), (("int8", "int8", False), "rows"), (("bf16", "fp32", True), "rows"),
    (("bf16", "bf16", False), "transposed"), (("bf16", "bf16", True), "rows"), (("bf16", "fp32", False), "transposed"),
    (("int8", "int32", True), "rows"),
]


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["no_stalls", "random_axi_stalls"])
def test_every_format_and_layout_matches_golden_bit_for_bit(stall):
    seed = 101
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    prog = MatmulProgram(SIM.config)
    want = {}
    for i, (kind, w_format) in enumerate(CASES):
        M, K, N = (int(x) for x in rng.integers(1, 8, 3))
        if i < 2:
            M, K, N = 9, 7, 5      # several tiles, partial last ones, on the 2×2 array
        want[f"y{i}"] = add_case(prog, rng, M, K, N, kind, w_format, f"y{i}")
    res = SIM.run(prog.memory, prog.program(), read_back=prog.read_back, stall=stall, backpressure=stall, seed=seed)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    for name, w in want.items():
        np.testing.assert_array_equal(prog.result(res, name), w, err_msg=name)
    c = res.counters
    assert c["matmul_exec_instrs"] == c["matmul_exec_started"] == len(CASES)
    assert c["matmul_macs_int8"] + c["matmul_macs_bf16"] > 0 and c["spad_bad_addr"] == 0


def test_back_to_back_matmuls_with_and_without_waits_and_a_chain_through_the_scratchpad():
    """Four MATMULs on one A with no waits between them, then a chain: MATMUL 5 reads what
    MATMUL 4 wrote (int8) without a wait (a MATMUL reads the results of the ones before it);
    then a bf16 MATMUL right after the int8 ones."""
    seed = 202
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    prog = MatmulProgram(SIM.config)
    a = rng.integers(-128, 128, (6, 9)).astype(np.int8)
    at = prog.load(a)
    xb = rng.standard_normal((3, 10)).astype(BF16)
    xt = prog.load(xb)
    ws = [rng.integers(-128, 128, (9, n)).astype(np.int8) for n in (3, 8, 5, 4)]
    want = {}
    for i, w in enumerate(ws):
        o = prog.matmul(at, w, w_format=("rows", "wide", "transposed", "rows")[i],
                        wait={"load": 1} if i == 0 else None)
        prog.store(o, f"y{i}", wait={"matmul": i + 1})
        want[f"y{i}"] = golden.matmul_int8(a, w)
    w1 = rng.integers(-128, 128, (9, 7)).astype(np.int8)
    mult, shift = rng.integers(1 << 30, 1 << 31, 7), rng.integers(14, 18, 7)
    h = prog.matmul(at, w1, out="int8", requant=(mult, shift))
    h.dtype = np.int8                                       # read back as the A of the next MATMUL
    w2 = rng.integers(-128, 128, (7, 6)).astype(np.int8)
    o = prog.matmul(h, w2)
    prog.store(o, "chain", wait={"matmul": prog.count("matmul")})
    mid = golden.requantize(golden.matmul_int8(a, w1), mult, shift)
    want["chain"] = golden.matmul_int8(mid, w2)
    wb = rng.standard_normal((10, 5)).astype(BF16)
    ob = prog.matmul(xt, wb)
    prog.store(ob, "bf16", wait={"matmul": prog.count("matmul")})
    want["bf16"] = golden.as_fp32_bits(golden.matmul_bf16(xb, wb))
    res = SIM.run(prog.memory, prog.program(), read_back=prog.read_back, seed=seed)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    for name, w in want.items():
        np.testing.assert_array_equal(prog.result(res, name), w, err_msg=name)


def test_the_next_weights_are_read_while_the_current_matmul_runs():
    """Six MATMULs with different weights: every command's first weight beat is already waiting
    when the engine accepts it (w_ready_at_start), and the engine is busy nearly all of the
    time from the first command to the last result."""
    seed = 303
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    prog = MatmulProgram(SIM.config)
    a = rng.integers(-128, 128, (16, 8)).astype(np.int8)
    at = prog.load(a)
    want = {}
    for i in range(6):
        w = rng.integers(-128, 128, (8, 6)).astype(np.int8)
        o = prog.matmul(at, w, wait={"load": 1} if i == 0 else None)
        want[i] = (o, golden.matmul_int8(a, w))
    for i, (o, _) in enumerate(want.values()):
        prog.store(o, f"y{i}", wait={"matmul": i + 1})
    res = SIM.run(prog.memory, prog.program(), read_back=prog.read_back, seed=seed)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    for i, (_, w) in want.items():
        np.testing.assert_array_equal(prog.result(res, f"y{i}"), w)
    c = res.counters
    assert c["matmul_exec_w_ready_at_start"] == 6
    assert c["matmul_exec_stall_weight"] == 0
    assert c["matmul_exec_w_words"] == 6 * 12      # 3 N tiles × 8 rows × 2 bytes, 4 bytes a word
    print(f"cycles {c['cycles']}, engine busy {c['matmul_busy']}, rows {c['matmul_rows']}")


def test_axi_errors_on_weights_and_parameters_and_bad_requant_stop_with_their_codes_then_a_clean_run():
    seed = 404
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    progs, windows, want_err = [], [], []
    # 0: the weights of the second MATMUL answer SLVERR
    # 1: the parameters of the first MATMUL answer DECERR
    # 2: a requantization multiplier ≥ 2**31: the engine answers BAD_REQUANT
    # 3: clean, with every format the errors used
    for p in range(4):
        prog = MatmulProgram(SIM.config, ext_base=0x10000 + 0x10000 * p)
        a = rng.integers(-128, 128, (5, 6)).astype(np.int8)
        at = prog.load(a)
        w0, w1 = (rng.integers(-128, 128, (6, 5)).astype(np.int8) for _ in range(2))
        bias = rng.integers(-100, 100, 5).astype(np.int32)
        mult, shift = rng.integers(1 << 30, 1 << 31, 5), np.full(5, 16)
        if p == 2:
            mult[3] = 1 << 31
        o0 = prog.matmul(at, w0, out="int8", bias=bias, requant=(mult, shift), wait={"load": 1})
        o1 = prog.matmul(at, w1, w_format="wide")
        prog.store(o0, "y0", wait={"matmul": 1})
        prog.store(o1, "y1", wait={"matmul": 2})
        if p == 0:
            windows.append((o1.w_addr, o1.w_addr + 4, 2))
            want_err.append((ChipError.AXI_READ, AXI_DETAIL_WEIGHTS, 2))
        elif p == 1:
            windows.append((o0.p_addr + 8, o0.p_addr + 12, 3))
            want_err.append((ChipError.AXI_READ, AXI_DETAIL_PARAMS, 1))
        elif p == 2:
            want_err.append((ChipError.MATMUL, MatmulStatus.BAD_REQUANT, 1))
        else:
            want_err.append((ChipError.OK, 0, 0))
            clean = (prog, golden.requantize(golden.matmul_int8(a, w0, bias), mult, shift), golden.matmul_int8(a, w1))
        progs.append(prog)
    memory = {}
    for prog in progs:
        memory.update(prog.memory)
    programs = [prog.program() for prog in progs]
    for i, p in enumerate(programs):
        p.addr = 0x1000 * i
    res = SIM.run(memory, programs, read_back=progs[-1].read_back, errors=windows, seed=seed)
    for r, want in enumerate(want_err):
        assert SIM.error_of(res, r) == want, f"program {r}"
        assert int(res.outputs[f"run{r}_status"]) == (DONE if want[0] == ChipError.OK else ERROR)
    prog, y0, y1 = clean
    np.testing.assert_array_equal(prog.result(res, "y0"), y0)
    np.testing.assert_array_equal(prog.result(res, "y1"), y1)


def test_an_abort_drops_the_matmuls_taken_but_not_started_and_the_next_program_is_right():
    """MATMUL 3 waits for LOAD 2, which fails while MATMUL 1 runs: MATMUL 3 and 4 (taken, their
    weights being read) are dropped, their weight words read and discarded; MATMUL 1 ends; the
    next program's MATMUL gets exactly its own weights."""
    seed = 505
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    bad = MatmulProgram(SIM.config, ext_base=0x10000)
    a = rng.integers(-128, 128, (12, 10)).astype(np.int8)
    at = bad.load(a)
    big = rng.integers(-128, 128, (10, 40)).astype(np.int8)
    bad.matmul(at, big, wait={"load": 1})
    fail_at = bad.ext_alloc(64, bytes(64))
    bad.raw(isa.Opcode.LOAD, ext_addr=fail_at, ext_stride=4, spad_addr=2000, spad_stride=1, rows=1, elems=2,
            elem_bytes=isa.ElemBytes.B1)
    bad.matmul(at, big, wait={"load": 2})
    bad.matmul(at, big, out="int8", requant=(np.full(40, 1 << 30), np.full(40, 20)))
    good = MatmulProgram(SIM.config, ext_base=0x40000)
    a2 = rng.integers(-128, 128, (4, 5)).astype(np.int8)
    at2 = good.load(a2)
    w2 = rng.integers(-128, 128, (5, 3)).astype(np.int8)
    o = good.matmul(at2, w2, w_format="wide", wait={"load": 1})
    good.store(o, "y", wait={"matmul": 1})
    p0, p1 = bad.program(), good.program()
    p1.addr = 0x2000
    res = SIM.run({**bad.memory, **good.memory}, [p0, p1], read_back=good.read_back,
                  errors=[(fail_at, fail_at + 64, 2)], seed=seed)
    assert SIM.error_of(res, 0) == (ChipError.AXI_READ, 0, 2)   # detail 0: a LOAD's read
    assert SIM.error_of(res, 1) == (ChipError.OK, 0, 0)
    c0 = dict(zip(SIM.chip().counter_names, (int(x) for x in res.outputs["run0_counters"]), strict=True))
    assert c0["matmul_exec_instrs"] == 3 and c0["matmul_exec_started"] == 1 and c0["matmul_exec_dropped"] == 2
    np.testing.assert_array_equal(good.result(res, "y"), golden.matmul_int8(a2, w2))


INTERLEAVED = [  # (a dtype, out, bias), weight format, interleave (G − 1): several K and N tiles on the 2×2 array
    (("int8", "int32", True), "rows", 1), (("int8", "int8", True), "wide", 2),
    (("uint8", "int32", False), "transposed", 3), (("bf16", "fp32", True), "rows", 2),
    (("bf16", "bf16", False), "transposed", 15), (("int8", "int32", False), "rows", 4),
]


def test_interleaved_matmuls_take_their_weights_in_tile_order_and_match_golden_bit_for_bit():
    """MATMULs with ``interleave`` G − 1 > 0, weights packed in spec.matmul_layout.tile_order
    (the last group short, G past the N tiles there are), back to back without waits between
    them, each result bit-exact."""
    seed = 207
    rng = np.random.default_rng(seed)
    prog = MatmulProgram(SIM.config)
    want = {}
    for i, (kind, w_format, il) in enumerate(INTERLEAVED):
        M, K, N = int(rng.integers(1, 5)), int(rng.integers(5, 12)), int(rng.integers(5, 14))
        want[f"y{i}"] = add_case(prog, rng, M, K, N, kind, w_format, f"y{i}", interleave=il)
    res = SIM.run(prog.memory, prog.program(), read_back=prog.read_back, stall=0.2, backpressure=0.2, seed=seed)
    assert SIM.error_of(res) == (ChipError.OK, 0, 0)
    for name, w in want.items():
        np.testing.assert_array_equal(prog.result(res, name), w, err_msg=name)


SIM_DEFAULT = ChipSim("default")   # 8×8 array, 8 lanes, 128-bit AXI (built on first use)


def test_default_chip_matmuls_match_golden_with_random_axi_stalls():
    """int8 (wide, requantized), then bf16 right after it (the engine's int8 → bf16 hazard: this
    sequence hung before the unit held the bf16 command), then uint8 activations."""
    seed = 606
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    prog = MatmulProgram(SIM_DEFAULT.config)
    want = {}
    for i, (M, K, N, kind, w_format, il) in enumerate([(3, 40, 20, ("int8", "int8", True), "wide", 0),
                                                       (2, 24, 13, ("bf16", "bf16", True), "transposed", 0),
                                                       (5, 17, 9, ("uint8", "int32", False), "rows", 0),
                                                       (1, 40, 30, ("int8", "int32", True), "rows", 2),
                                                       (1, 24, 20, ("bf16", "fp32", False), "rows", 2)]):
        want[f"y{i}"] = add_case(prog, rng, M, K, N, kind, w_format, f"y{i}", interleave=il)
    res = SIM_DEFAULT.run(prog.memory, prog.program(), read_back=prog.read_back, stall=0.2, backpressure=0.2,
                          seed=seed)
    assert SIM_DEFAULT.error_of(res) == (ChipError.OK, 0, 0)
    for name, w in want.items():
        np.testing.assert_array_equal(prog.result(res, name), w, err_msg=name)
