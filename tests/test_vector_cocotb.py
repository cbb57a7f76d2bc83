# amaranth: UnusedElaboratable=no
"""The vector unit (hdl/vector.py) in Verilator through cocotb, bit-exact against golden.

Unit tests use the ``tiny`` preset (V = 2, max_len 128), one build shared through the xdist group;
the real-row tests use ``default`` (V = 8, max_len 1536) on rows captured from golden.DecoderLayer
runs of SmolLM2 layers 0, 15 and 29 in both modes. Every stream test runs with and without random
valid gaps on every input and ready backpressure on every output. Seeds are printed.
"""

import numpy as np
import pytest
from vector_cases import MU, NU, bf16, command, quant_token_model, random_case, table_cases

import golden
from golden.fp import as_bf16_bits
from golden.layer import quantize_per_token_scaled
from hdl.config import get_config
from hdl.vector import VectorUnit
from sim.vector_api import make_command, make_table_commands, run_commands, run_vector
from spec.vector import HADAMARD_BLOCK, SCALE_BITS, VectorOp, VectorStatus, VectorTable, row_word

pytestmark = pytest.mark.cocotb

TINY = get_config("tiny")
V, LMAX = TINY.vector.lanes, TINY.vector.max_len
STALLS = [pytest.param((0.0, 0.0), id="no_stalls"), pytest.param((0.3, 0.4), id="stalls")]
TABLE = golden.rope_table(head_dim=8, max_pos=40, base=10000.0)
ALL = [(op, dt) for op in ("add", "swiglu", "rmsnorm", "rope", "dequant", "requant", "quant_static",
                           "quant_token") for dt in ("bf16", "int8")]


def _seed(request, base):
    seed = base + sum(map(ord, request.node.name)) % 1000
    print(f"seed {seed}")
    return seed


def _check(cases, res):
    assert res["status"] == res["expected_status"]
    for i, ((cmd, want, want_s), got, got_s, got_j) in enumerate(zip(cases, res["o"], res["s_out"], res["j"],
                                                                     strict=True)):
        if want is None:
            assert got is None
            continue
        assert np.array_equal(got, want), (i, VectorOp(cmd["op"]).name, np.argwhere(got != want)[:4].tolist())
        if isinstance(want_s, tuple):
            assert np.array_equal(got_s, want_s[0]) and np.array_equal(got_j, want_s[1]), (i, got_s, got_j, want_s)
        elif want_s is not None:
            assert np.array_equal(got_s, want_s) and got_j is None, (i, got_s, want_s)


@pytest.mark.xdist_group("vector_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_every_op_in_both_modes_back_to_back_at_lengths_1_v_minus_1_v_v_plus_1_and_max(request, stalls):
    seed = _seed(request, 300)
    rng = np.random.default_rng(seed)
    cases = []
    for op, dt in ALL:
        lengths = [8, 16, LMAX] if op == "rope" else [1, V - 1, V, V + 1, 7, LMAX]
        for length in lengths:
            rows = int(rng.integers(1, 2 * V + 3))
            cases.append(random_case(rng, op, dt, rows, length, lanes=V, max_len=LMAX, table=TABLE))
    order = rng.permutation(len(cases))
    cases = [cases[i] for i in order]
    res = run_commands([c[0] for c in cases], config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(cases, res)
    c = res["counters"]
    assert c["beats_out"] == sum(-(-cmd["length"] // V) * cmd["rows"] for cmd, _, _ in cases)
    if stalls[1]:
        assert c["stall_output"] > 0 and c["stall_input"] > 0


def _f32(vals):
    return np.array(vals, np.float32)


@pytest.mark.xdist_group("vector_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_special_values_zeros_subnormals_inf_nan_and_saturation(request, stalls):
    seed = _seed(request, 400)
    sub, big = 1e-39, 3.0e38
    sp = [0.0, -0.0, sub, -sub, np.inf, -np.inf, np.nan, big, -big, 1.0, -2.5, 1e-30, 65504.0, -7.0]
    x32 = _f32(sp)
    y32 = _f32(sp[::-1])
    xb, yb = bf16(x32), bf16(y32)
    fin = np.array([v for v in sp if np.isfinite(v)], np.float32)
    cases = [
        command("add", "bf16", xb[None], yb[None], lanes=V, max_len=LMAX),
        command("add", "int8", x32[None], y32[None], lanes=V, max_len=LMAX),
        command("add", "bf16", bf16([[big, -big, 1.0]]), bf16([[big, big, -1.0]]), lanes=V, max_len=LMAX),
        command("swiglu", "bf16", xb[None], yb[None], lanes=V, max_len=LMAX),
        command("swiglu", "int8", x32[None], y32[None], lanes=V, max_len=LMAX),
        command("rmsnorm", "bf16", xb[None], lanes=V, max_len=LMAX, gain=bf16(np.ones(len(sp))), eps=1e-5),
        command("rmsnorm", "bf16", bf16(np.zeros((2, 5))), lanes=V, max_len=LMAX, gain=bf16(np.ones(5)), eps=0.0),
        command("rmsnorm", "int8", _f32([[3e38, 3e38, -3e38, 1.0]]), lanes=V, max_len=LMAX,
                gain=bf16([1, 2, 3, 4]), eps=1e-6),
        command("quant_static", "int8", fin[None] * np.float32(1e-30), lanes=V, max_len=LMAX, scale=1e-29),
        command("quant_static", "bf16", bf16(fin[None]), lanes=V, max_len=LMAX, scale=4.0),
        command("quant_token", "bf16", bf16(fin[None]), lanes=V, max_len=LMAX),
        command("quant_token", "bf16", bf16(np.zeros((1, 3))), lanes=V, max_len=LMAX),
        command("quant_token", "bf16", bf16([[sub, -sub, 2.0 ** -126]]), lanes=V, max_len=LMAX),
        command("dequant", "int8", np.array([[2**31 - 1, -2**31, 0, 1, -1]], np.int32), lanes=V, max_len=LMAX,
                multiplier=np.array([2**31 - 1] * 5), shift=np.array([0, 0, 5, 63, 63]), row_exp=np.array([122])),
        command("dequant", "int8", np.array([[2**31 - 1, -2**31, 7, 1, -1]], np.int32), lanes=V, max_len=LMAX,
                multiplier=np.array([1 << 30] * 5), shift=np.array([63] * 5), row_exp=np.array([-133])),
        command("requant", "int8", np.array([[2**31 - 1, -2**31, 100, -100, 3]], np.int32), lanes=V, max_len=LMAX,
                multiplier=np.array([2**31 - 1] * 5), shift=np.array([1, 1, 62, 0, 40]), row_exp=np.array([-5])),
        command("rope", "int8", np.full((2, 8), 127, np.int8), lanes=V, max_len=LMAX, table=TABLE,
                pos=np.array([1, 39])),
        command("rope", "int8", np.full((1, 8), -128, np.int8), lanes=V, max_len=LMAX, table=TABLE,
                pos=np.array([3]), multiplier=(1 << 31) - 1, shift=40),
        command("rope", "bf16", bf16([[np.inf, 0, 1, -0.0, np.nan, 2, 3, big]]), lanes=V, max_len=LMAX,
                table=TABLE, pos=np.array([5])),
    ]
    res = run_commands([c[0] for c in cases], config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(cases, res)


@pytest.mark.xdist_group("vector_tiny")
def test_bad_commands_are_answered_with_their_code_take_no_data_and_the_next_command_runs(request):
    seed = _seed(request, 500)
    rng = np.random.default_rng(seed)
    good = lambda op="add", dt="bf16", n=5: random_case(rng, op, dt, 2, n, lanes=V, max_len=LMAX, table=TABLE)
    bad = [
        (make_command(11, length=4, rows=1), VectorStatus.BAD_OP),
        (make_command(15, length=4, rows=1), VectorStatus.BAD_OP),
        (make_command(VectorOp.ADD, length=0, rows=1), VectorStatus.BAD_LENGTH),
        (make_command(VectorOp.SWIGLU, length=LMAX + 1, rows=1), VectorStatus.BAD_LENGTH),
        (make_command(VectorOp.ADD, length=4, rows=0), VectorStatus.BAD_ROWS),
        (make_command(VectorOp.ROPE, length=16, rows=1, head_dim=6), VectorStatus.BAD_HEAD_DIM),
        (make_command(VectorOp.ROPE, length=12, rows=1, head_dim=8), VectorStatus.BAD_HEAD_DIM),
        (make_command(VectorOp.ROPE, length=16, rows=1, head_dim=2), VectorStatus.BAD_HEAD_DIM),
        (make_command(VectorOp.ROPE, length=16, rows=1, head_dim=0), VectorStatus.BAD_HEAD_DIM),
        (make_command(VectorOp.ROPE, dtype=0, length=8, rows=1, head_dim=8, imm0=1 << 31, shift=10),
         VectorStatus.BAD_SCALE),
        (make_command(VectorOp.ROPE, dtype=0, length=8, rows=1, head_dim=8, imm0=1 << 30, shift=0),
         VectorStatus.BAD_SCALE),
        (make_command(VectorOp.QUANT_STATIC, length=4, rows=1, imm0=0x7F800000), VectorStatus.BAD_SCALE),
        (make_command(VectorOp.QUANT_STATIC, length=4, rows=1, imm0=0xBF800000), VectorStatus.BAD_SCALE),
        (make_command(VectorOp.QUANT_STATIC, length=4, rows=1, imm0=0x00000001), VectorStatus.BAD_SCALE),
        (make_command(VectorOp.RMSNORM, length=4, rows=1, imm0=0xBF800000, imm1=0x3E800000), VectorStatus.BAD_SCALE),
        (make_command(VectorOp.RMSNORM, length=4, rows=1, imm0=0x7FC00000, imm1=0x3E800000), VectorStatus.BAD_SCALE),
        (make_command(VectorOp.RMSNORM, length=4, rows=1, imm0=0, imm1=0), VectorStatus.BAD_SCALE),
    ]
    cases, want_status = [], []
    ops = ["add", "swiglu", "rmsnorm", "rope", "quant_token", "requant"]
    for i, (cmd, status) in enumerate(bad):
        cases.append((cmd, None, None))
        want_status.append(status)
        op = ops[i % len(ops)]
        cases.append(good(op, "bf16" if op not in ("requant",) else "int8", 8 if op == "rope" else 5))
        want_status.append(VectorStatus.OK)
    res = run_commands([c[0] for c in cases], config="tiny", stall=0.2, backpressure=0.2, seed=seed)
    assert res["status"] == [int(s) for s in want_status]
    _check(cases, res)
    assert res["counters"]["beats_in"] == sum(-(-c[0]["length"] // V) * c[0]["rows"] for c in cases if c[1] is not None)


@pytest.mark.xdist_group("vector_tiny")
def test_silu_of_every_bf16_input_through_the_unit_equals_golden():
    gate = golden.fp.bf16_from_bits(np.arange(1 << 16, dtype=np.uint16)).reshape(-1, LMAX)
    up = bf16(np.ones(gate.shape))
    res = run_vector("swiglu", gate, up, config="tiny", seed=7)
    assert np.array_equal(as_bf16_bits(res.output), as_bf16_bits(golden.swiglu_bf16(gate, up)))
    assert res.counters["mul_bf16"] == gate.size


@pytest.mark.xdist_group("vector_tiny")
def test_elementwise_latency_and_rate_are_the_documented_ones():
    unit = VectorUnit.from_config(TINY)
    a, b = bf16(np.ones((16, LMAX))), bf16(np.ones((16, LMAX)))
    cmd, _, _ = command("add", "bf16", a, b, lanes=V, max_len=LMAX)
    res = run_commands([cmd], config="tiny", seed=1)
    assert res["o_cycle"][0] - res["a_cycle"][0] == unit.latency
    beats = len(res["o_cycle"])
    assert res["o_cycle"][-1] - res["o_cycle"][0] == beats - 1  # one beat per cycle


def test_api_raises_naming_the_problem_before_anything_runs():
    x = bf16(np.ones((2, 8)))
    with pytest.raises(ValueError, match="unknown vector op"):
        run_vector("softmax", x, config="tiny")
    with pytest.raises(ValueError, match="row length"):
        run_vector("quant_token", bf16(np.ones((2, LMAX + 1))), config="tiny")
    with pytest.raises(ValueError, match="row length"):
        run_vector("quant_token", bf16(np.ones((2, 0))), config="tiny")
    with pytest.raises(ValueError, match="pos must be"):
        run_vector("rope", x, config="tiny", table=TABLE, pos=np.array([0, 40]))
    with pytest.raises(ValueError, match="scale must be"):
        run_vector("quant_static", x, config="tiny", scale=0.0)
    with pytest.raises(ValueError, match="shift must be in"):
        run_vector("rope", np.ones((1, 8), np.int8), dtype="int8", config="tiny", table=TABLE, pos=0, shift=63)
    with pytest.raises(ValueError, match="multiplier must be in"):
        run_vector("requant", np.ones((1, 4), np.int32), dtype="int8", config="tiny",
                   multiplier=np.array([1 << 31] * 4), shift=np.ones(4, np.int64), row_exp=0)
    with pytest.raises(ValueError, match="head_dim"):
        run_vector("rope", bf16(np.ones((1, 12))), config="tiny", table=golden.rope_table(head_dim=6, max_pos=4,
                                                                                           base=1e4), pos=0)
    with pytest.raises(TypeError, match="ml_dtypes.bfloat16"):
        run_vector("add", np.ones((1, 4), np.float32), np.ones((1, 4), np.float32), config="tiny")


# ---------------------------------------------------------------- the int8 scheme's ops (HADAMARD,
# QUANT_TOKEN with ROW_SCALE and fp32 rows, DEQUANT with ROW_SCALE, TABLE)

KW = dict(lanes=V, max_len=LMAX)


def _mixed_cases(rng):
    """The new ops at 64 (= max_len, whole Hadamard blocks) and shorter rows and a third of the
    other ops, in random order, after the layer's tables."""
    new = [("hadamard", dt, False, [HADAMARD_BLOCK]) for dt in ("bf16", "int8")]
    new += [("quant_token", dt, True, [1, V + 1, 7, LMAX]) for dt in ("bf16", "int8")]
    new += [("quant_token", "int8", False, [V + 1, LMAX]), ("dequant", "int8", True, [1, V + 1, LMAX])]
    cases = []
    for op, dt, scaled, lengths in new:
        for length in lengths:
            rows = int(rng.integers(1, 2 * V + 3))
            cases.append(random_case(rng, op, dt, rows, length, scaled=scaled, **KW))
    # many one-beat rows through the token buffer's row-scalar FIFO
    cases.append(random_case(rng, "quant_token", "bf16", 40, 1, scaled=True, **KW))
    for op, dt in ALL[::3]:
        length = 16 if op == "rope" else int(rng.choice([V + 1, LMAX]))
        cases.append(random_case(rng, op, dt, int(rng.integers(1, 2 * V + 3)), length, table=TABLE, **KW))
    return table_cases(**KW) + [cases[i] for i in rng.permutation(len(cases))]


def _special_cases(rng):
    """±0, subnormals, ±Inf, NaN, overflow to Inf in the butterflies; rows whose smallest elements
    underflow when scaled, all-zero and all-subnormal rows, Inf/NaN rows and a table that
    saturates to ±127 in the quantizer; nu entries Inf, NaN, 0, subnormal, huge in DEQUANT."""
    sub, big = 1e-39, 3.0e38
    sp = np.array([0.0, -0.0, sub, -sub, np.inf, -np.inf, np.nan, big, big, -big, 1.0, -2.5, 1e-30, 65504.0],
                  np.float32)
    had = rng.normal(0, 1, (3, HADAMARD_BLOCK)).astype(np.float32)
    had[0, :len(sp)] = sp
    had[1, ::2] = big                                  # partial sums overflow to ±Inf
    had[2] = 0.0
    had[2, 1::2] = -0.0
    fin = rng.normal(0, 1, (6, LMAX)).astype(np.float32)
    fin[0, :4] = [3.0e38, 1e-30, -1e-38, sub]          # elements that underflow below 2**-126 when scaled
    fin[1] = 0.0
    fin[2] = sub
    fin[3, :3] = [2.0 ** -126, -(2.0 ** -126), 1e-38]
    fin[4] *= np.float32(1e-37)
    fin[5, 7] = -(2.0 ** 127) * 1.9921875
    nonfin = rng.normal(0, 1, (3, 9)).astype(np.float32)
    nonfin[0, 2], nonfin[1, 4], nonfin[2, :2] = np.inf, np.nan, [-np.inf, np.nan]
    nu = NU.copy()
    nu[:8] = [np.inf, np.nan, 0.0, sub, -1.0, big, -0.0, 2.0 ** -126]
    acc = np.array([[2**31 - 1, -2**31, 12345, -1, 0, 7]] * 8, np.int32)
    dq = dict(multiplier=np.full(6, (1 << 31) - 1), shift=np.array([0, 0, 20, 40, 5, 63]), scale_table=nu,
              scale_index=np.arange(8), row_exp=np.array([100, 3, -20, 0, -133, 122, 5, -7]))
    sat = np.full(128, 2.0, np.float32)
    saturating = command("quant_token", "int8", fin, scale_table=sat, **KW)   # |q| saturates at 127
    assert {int(w) for w in saturating[1].reshape(-1)} >= {127, 0x100000000 - 127}
    return table_cases(**KW, mu=sat, nu=nu) + [
        saturating,
        command("quant_token", "int8", nonfin, scale_table=sat, **KW),
    ] + table_cases(**KW, nu=nu) + [
        command("hadamard", "int8", had, **KW),
        command("hadamard", "bf16", bf16(had), **KW),
        command("quant_token", "int8", fin, scale_table=MU, **KW),
        command("quant_token", "bf16", bf16(fin), scale_table=MU, **KW),
        command("quant_token", "int8", nonfin, scale_table=MU, **KW),
        command("quant_token", "int8", nonfin, **KW),                        # ±Inf → ±127, NaN → 0
        command("quant_token", "int8", fin, **KW),
        command("dequant", "int8", acc, **dq, **KW),
        command("dequant", "int8", acc, **{**dq, "row_exp": None}, **KW),
    ]


@pytest.mark.xdist_group("vector_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_hadamard_scaled_quant_token_and_row_scaled_dequant_equal_golden_on_special_values_and_mixed_with_other_ops(
        request, stalls):
    """Special values (:func:`_special_cases`, with their own tables), then the layer's tables and
    the new ops interleaved at random with the other ops (:func:`_mixed_cases`)."""
    seed = _seed(request, 600)
    rng = np.random.default_rng(seed)
    cases = _special_cases(rng) + _mixed_cases(rng)
    res = run_commands([c[0] for c in cases], config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(cases, res)


def test_the_units_hadamard_block_and_scale_bits_are_golden_s():
    assert HADAMARD_BLOCK == golden.vector.HADAMARD_BLOCK and SCALE_BITS == golden.layer.TOKEN_SCALE_BITS
    assert np.array_equal(MU, golden.layer.token_scale_table(SCALE_BITS)[0]) and MU.size == 1 << SCALE_BITS


def test_the_quant_token_model_of_the_tests_is_golden_where_golden_is_defined():
    """tests/vector_cases.quant_token_model (the expectation for Inf/NaN rows and other tables)
    equals golden's quantize_per_token_scaled on finite rows with the layer's table."""
    rng = np.random.default_rng(5)
    x = (rng.normal(0, 1, (64, 96)) * 10.0 ** rng.integers(-40, 37, (64, 1))).astype(np.float32)
    x[0], x[1, ::3], x[2] = 0, 1e-39, -3.0e38
    for a in (x, bf16(x)):
        q, e, j = quantize_per_token_scaled(a, bits=SCALE_BITS)
        mq, me, mj = quant_token_model(a, MU)
        assert np.array_equal(q, mq) and np.array_equal(e, me) and np.array_equal(j, mj)


@pytest.mark.xdist_group("vector_tiny")
def test_bad_int8_scheme_commands_are_answered_with_their_code_take_no_data_and_the_next_command_runs(request):
    """From reset: ROW_SCALE before its table is written, bad HADAMARD lengths, bad TABLE fields
    and unknown ops, each followed by a good command; then the tables and the refused ROW_SCALE
    commands again, which now run."""
    seed = _seed(request, 800)
    rng = np.random.default_rng(seed)
    scaled_q = random_case(rng, "quant_token", "int8", 3, 5, scaled=True, **KW)
    scaled_d = random_case(rng, "dequant", "int8", 3, 5, scaled=True, **KW)
    table = make_table_commands(VectorTable.QUANT, MU, **KW)[0]
    p64 = table["p"][:1]
    bad = [
        ((scaled_q[0], None, None), VectorStatus.BAD_TABLE),
        ((scaled_d[0], None, None), VectorStatus.BAD_TABLE),
        ((make_command(VectorOp.HADAMARD, length=HADAMARD_BLOCK // 2, rows=2), None, None), VectorStatus.BAD_LENGTH),
        ((make_command(VectorOp.HADAMARD, length=HADAMARD_BLOCK - 1, rows=1), None, None), VectorStatus.BAD_LENGTH),
        ((make_command(VectorOp.HADAMARD, length=0, rows=1), None, None), VectorStatus.BAD_LENGTH),
        ((make_command(VectorOp.TABLE, length=3, rows=43, p=np.zeros((43, 3))), None, None), VectorStatus.BAD_LENGTH),
        ((make_command(VectorOp.TABLE, length=64, rows=1, p=p64), None, None), VectorStatus.BAD_ROWS),
        ((make_command(VectorOp.TABLE, length=64, rows=2, imm0=2, p=table["p"]), None, None), VectorStatus.BAD_TABLE),
        ((make_command(VectorOp.TABLE, length=64, rows=2, imm0=1 << 31, p=table["p"]), None, None),
         VectorStatus.BAD_TABLE),
        ((make_command(11, length=4, rows=1), None, None), VectorStatus.BAD_OP),
        ((make_command(14, length=HADAMARD_BLOCK, rows=1), None, None), VectorStatus.BAD_OP),
    ]
    goods = ["hadamard", "quant_token", "dequant", "add", "rope", "rmsnorm"]
    cases, want = [], []
    for i, (case, status) in enumerate(bad):
        cases.append(case)
        want.append(status)
        op = goods[i % len(goods)]
        length = HADAMARD_BLOCK if op == "hadamard" else 8
        dt = "int8" if op in ("dequant", "quant_token") else "bf16"
        cases.append(random_case(rng, op, dt, 2, length, table=TABLE, **KW))
        want.append(VectorStatus.OK)
    cases += table_cases(**KW) + [scaled_q, scaled_d]
    want += [VectorStatus.OK] * 4
    res = run_commands([c[0] for c in cases], config="tiny", stall=0.2, backpressure=0.2, seed=seed)
    assert res["status"] == [int(s) for s in want]
    _check(cases, res)
    ran = [c[0] for c, s in zip(cases, want, strict=True) if s == VectorStatus.OK and c[0]["op"] != VectorOp.TABLE]
    assert res["counters"]["beats_in"] == sum(-(-c["length"] // V) * c["rows"] for c in ran)


@pytest.mark.xdist_group("vector_tiny")
def test_int8_scheme_ops_latency_and_rate_are_the_documented_ones():
    """No stalls, 16 rows of 64: first output after VectorUnit.first_out_latency, then one beat
    per cycle (V elements per cycle) to the end of the command."""
    unit = VectorUnit.from_config(TINY)
    rng = np.random.default_rng(3)
    plan = [("hadamard", "bf16", False), ("quant_token", "int8", True), ("quant_token", "bf16", False),
            ("dequant", "int8", True)]
    cases = [random_case(rng, op, dt, 16, LMAX, scaled=sc, **KW) for op, dt, sc in plan]
    res = run_commands([c[0] for c in table_cases(**KW) + cases], config="tiny", seed=3)
    _check(table_cases(**KW) + cases, res)
    beats = 16 * LMAX // V
    for i, (op, _, _) in enumerate(plan):
        oc = res["o_cycle"][i * beats:(i + 1) * beats]
        ac = res["a_cycle"][i * beats:(i + 1) * beats]
        assert oc[0] - ac[0] == unit.first_out_latency(VectorOp[op.upper()], length=LMAX), op
        assert oc[-1] - oc[0] == beats - 1, op                         # one beat per cycle
        print(f"{op}: latency {oc[0] - ac[0]}, end to end {16 * LMAX / (oc[-1] - ac[0] + 1):.2f} elements/cycle")


@pytest.mark.xdist_group("vector_default")
def test_int8_scheme_ops_at_lengths_64_128_and_max_on_default_with_stalls(request):
    """The new ops at 64, 128 and 1536 (max_len) on `default` (V = 8, three in-beat Hadamard
    stages; the build tests/test_vector_real_rows.py uses), with stalls and backpressure."""
    seed = _seed(request, 900)
    rng = np.random.default_rng(seed)
    cfg = get_config("default")
    kw = dict(lanes=cfg.vector.lanes, max_len=cfg.vector.max_len)
    cases = []
    for length in (64, 128, cfg.vector.max_len):
        rows = 3 if length < 1000 else 2
        for dt in ("bf16", "int8"):
            cases.append(random_case(rng, "hadamard", dt, rows, length, **kw))
            cases.append(random_case(rng, "quant_token", dt, rows, length, scaled=True, **kw))
        cases.append(random_case(rng, "dequant", "int8", rows, length, scaled=True, **kw))
    cases = table_cases(**kw) + [cases[i] for i in rng.permutation(len(cases))]
    res = run_commands([c[0] for c in cases], config="default", stall=0.3, backpressure=0.4, seed=seed)
    _check(cases, res)


def test_api_raises_naming_the_problem_of_the_new_ops_before_anything_runs():
    x = bf16(np.ones((2, HADAMARD_BLOCK)))
    with pytest.raises(ValueError, match="multiple of 64"):
        run_vector("hadamard", bf16(np.ones((2, 32))), config="tiny")
    with pytest.raises(TypeError, match="float32 for dtype 'int8'"):
        run_vector("hadamard", x, dtype="int8", config="tiny")
    with pytest.raises(ValueError, match=r"scale_table must have shape \(128,\)"):
        run_vector("quant_token", x, config="tiny", scale_table=MU[:64])
    with pytest.raises(TypeError, match="scale_table must be float32"):
        run_vector("quant_token", x, config="tiny", scale_table=MU.astype(np.float64))
    acc = np.ones((2, 4), np.int32)
    dq = dict(dtype="int8", config="tiny", multiplier=np.ones(4, np.int64), shift=np.ones(4, np.int64))
    with pytest.raises(ValueError, match="scale_index must be in"):
        run_vector("dequant", acc, scale_table=NU, scale_index=np.array([0, 128]), **dq)
    with pytest.raises(TypeError, match="scale_table and scale_index together"):
        run_vector("dequant", acc, scale_index=np.array([0, 1]), **dq)
    with pytest.raises(TypeError, match="unexpected argument"):
        run_vector("hadamard", x, config="tiny", scale_table=MU)
    with pytest.raises(ValueError, match="unknown vector op"):
        run_vector("table", x, config="tiny")


@pytest.mark.xdist_group("vector_tiny")
def test_run_vector_writes_the_table_and_returns_the_scaled_quantizers_e_and_j():
    x = (np.random.default_rng(9).normal(0, 4, (3, 2 * V + 1)) * [[1], [1e-3], [1e5]]).astype(np.float32)
    res = run_vector("quant_token", x, dtype="int8", config="tiny", scale_table=MU, seed=9)
    q, e, j = quantize_per_token_scaled(x, bits=SCALE_BITS)
    assert np.array_equal(res.output, q) and np.array_equal(res.outputs["s_out"], e)
    assert np.array_equal(res.outputs["j"], j)
    assert [row_word(ei, ji) >> 16 for ei, ji in zip(e, j, strict=True)] == j.tolist()
    assert res.counters["mul_fp32"] == x.size


# ---------------------------------------------------------------- RMSNORM_FP32 (rmsnorm_fp32_in)


@pytest.mark.xdist_group("vector_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_rmsnorm_fp32_equals_golden_at_lengths_1_v_minus_1_v_v_plus_1_64_and_max_back_to_back_with_other_ops(
        request, stalls):
    """rmsnorm_fp32_in bit for bit, 1 .. 2V + 2 rows (so consecutive row groups share the
    buffer's slot pairs), interleaved with RMSNORM of both dtypes, ADD and QUANT_TOKEN."""
    seed = _seed(request, 1000)
    rng = np.random.default_rng(seed)
    cases = []
    for length in (1, V - 1, V, V + 1, 64, LMAX):
        rows = int(rng.integers(1, 2 * V + 3))
        cases.append(random_case(rng, "rmsnorm_fp32", "int8", rows, length, **KW))
        op, dt = [("rmsnorm", "bf16"), ("rmsnorm", "int8"), ("add", "int8"), ("quant_token", "bf16")][length % 4]
        cases.append(random_case(rng, op, dt, int(rng.integers(1, 4)), length, **KW))
    cases.append(random_case(rng, "rmsnorm_fp32", "bf16", 9, 64, **KW))      # dtype is ignored
    res = run_commands([c[0] for c in cases], config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(cases, res)
    assert res["counters"]["rsqrt"] == sum(c[0]["rows"] for c in cases if c[0]["op"] in (
        VectorOp.RMSNORM, VectorOp.RMSNORM_FP32))
    # fp32 multiplies of a command of `rows` rows of `length`: RMSNORM_FP32 x·r and t·g per element,
    # the squares V per column cycle (a group of up to V rows takes `length` of them) and
    # s·(1/D) per row; RMSNORM x·r per element and s·(1/D) per row; QUANT_TOKEN one per element
    def mul_fp32(op, rows, length):
        squares = -(-rows // V) * V * length
        return {VectorOp.RMSNORM_FP32: 2 * rows * length + squares + rows, VectorOp.RMSNORM: rows * length + rows,
                VectorOp.QUANT_TOKEN: rows * length, VectorOp.ADD: 0}[op]
    assert res["counters"]["mul_fp32"] == sum(mul_fp32(c[0]["op"], c[0]["rows"], c[0]["length"]) for c in cases)


@pytest.mark.xdist_group("vector_tiny")
@pytest.mark.parametrize("stalls", STALLS)
def test_rmsnorm_fp32_special_values_zeros_subnormals_inf_nan_overflow_and_rounding(request, stalls):
    seed = _seed(request, 1100)
    rng = np.random.default_rng(seed)
    sub = 1e-39
    g = lambda n: bf16(1 + 0.3 * rng.normal(size=n))  # noqa: E731
    rows = [
        ([0.0, -0.0, sub, -sub, 1.0, -2.5, 1e-30, 3.0], 1e-5),       # ±0 and subnormals (DAZ)
        ([1.0, np.inf, -3.0, 0.5, 0.0, -0.0, 2.0, 1.0], 1e-5),       # Inf: NaN there, ±0 elsewhere
        ([1.0, 2.0, np.nan, -1.0, 0.0, 5.0, 1.0, 1.0], 1e-5),        # NaN: the whole row NaN
        ([2.0 ** 64, -1.0, 3.0, 0.0, 1.0, 1.0, 1.0, -1.0], 1e-5),    # a square overflows: ±0
        ([3e38, -3e38, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0], 1e-6),
        ([0.0] * 8, 0.0),                                             # 0 · Inf = NaN with eps = 0
        ([-0.0] * 8, 1e-5),
        ([1e-20, -3e-21, 2e-20, 5e-22, 1e-20, 1e-20, 7e-21, 1e-19], 0.0),   # squares below 2**-126
        ([1.0 + 2.0 ** -20, 1.0 - 2.0 ** -22, 3.0000002, -7.9999995, 1.0, 1.0, 1.0, 1.0], 1e-5),
    ]
    cases = [random_case(rng, "add", "bf16", 1, 8, **KW)]
    for vals, eps in rows:
        cases.append(command("rmsnorm_fp32", "int8", _f32([vals]), gain=g(8), eps=eps, **KW))
    gains = bf16([1.0, -1.0, sub, 0.0, np.inf, 3.0e38, 1e-30, 2.0])   # bf16 gain specials
    cases.append(command("rmsnorm_fp32", "int8", _f32([[1.5, -2.0, 3.0, 1.0, 2.0, 3.0e20, 4.0, 1.0]]), gain=gains,
                         eps=1e-5, **KW))
    # t·g rounds once: fp32 values whose bf16 rounding would change the result
    x = (rng.normal(0, 1, (4, 64)) * (1 + 2.0 ** -9 * rng.integers(1, 127, (4, 64)))).astype(np.float32)
    x[1, 5] = 2.0e4                                                      # an outlier channel
    cases.append(command("rmsnorm_fp32", "int8", x, gain=g(64), eps=1e-5, **KW))
    res = run_commands([c[0] for c in cases], config="tiny", stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(cases, res)
    bf = command("rmsnorm", "int8", x, gain=bf16(np.ones(64)), eps=1e-5, **KW)[1]
    fp = command("rmsnorm_fp32", "int8", x, gain=bf16(np.ones(64)), eps=1e-5, **KW)[1]
    assert (bf != fp).any()            # the mode differs from RMSNORM of the rows rounded to bf16


@pytest.mark.xdist_group("vector_tiny")
def test_bad_rmsnorm_fp32_commands_are_answered_with_their_code_take_no_data_and_the_next_command_runs(request):
    seed = _seed(request, 1200)
    rng = np.random.default_rng(seed)
    inv = int(golden.fp.as_fp32_bits(np.float32(1 / 8)))
    r32 = VectorOp.RMSNORM_FP32
    bad = [
        (make_command(r32, length=0, rows=1, imm1=inv), VectorStatus.BAD_LENGTH),
        (make_command(r32, length=LMAX + 1, rows=1, imm1=inv), VectorStatus.BAD_LENGTH),
        (make_command(r32, length=8, rows=0, imm1=inv), VectorStatus.BAD_ROWS),
        (make_command(r32, length=8, rows=1, imm0=0xBF800000, imm1=inv), VectorStatus.BAD_SCALE),   # eps −1
        (make_command(r32, length=8, rows=1, imm0=0x7F800000, imm1=inv), VectorStatus.BAD_SCALE),   # eps Inf
        (make_command(r32, length=8, rows=1, imm1=0), VectorStatus.BAD_SCALE),                     # 1/D 0
        (make_command(11, length=8, rows=1), VectorStatus.BAD_OP),
    ]
    cases, want = [], []
    for cmd, status in bad:
        cases += [(cmd, None, None), random_case(rng, "rmsnorm_fp32", "int8", 3, 8, **KW)]
        want += [status, VectorStatus.OK]
    res = run_commands([c[0] for c in cases], config="tiny", stall=0.2, backpressure=0.2, seed=seed)
    assert res["status"] == [int(s) for s in want]
    _check(cases, res)
    assert res["counters"]["beats_in"] == len(bad) * 3 * (8 // V)


@pytest.mark.xdist_group("vector_tiny")
def test_rmsnorm_fp32_latency_is_the_documented_one_and_its_rate_is_v_elements_per_cycle_on_rows_of_64():
    """No stalls: one row's first output after VectorUnit.first_out_latency (RMSNORM's + 1, the
    fp32 square's stage); 16 rows of 64 and 8 of max_len at one beat per cycle from the first
    output to the last (V elements per cycle sustained), after and before a bf16 RMSNORM."""
    unit = VectorUnit.from_config(TINY)
    rng = np.random.default_rng(4)
    plan = [(1, 64), (16, 64), (8, LMAX), (1, LMAX)]
    cases = [random_case(rng, "rmsnorm_fp32", "int8", rows, n, **KW) for rows, n in plan]
    cases.insert(3, random_case(rng, "rmsnorm", "bf16", 16, 64, **KW))
    cases.insert(4, random_case(rng, "rmsnorm", "bf16", 1, 64, **KW))
    res = run_commands([c[0] for c in cases], config="tiny", seed=4)
    _check(cases, res)
    pos = 0
    for cmd, _, _ in cases:
        beats = cmd["rows"] * cmd["length"] // V
        oc, ac = res["o_cycle"][pos:pos + beats], res["a_cycle"][pos:pos + beats]
        pos += beats
        lat = oc[0] - ac[0]
        if cmd["rows"] == 1:
            assert lat == unit.first_out_latency(cmd["op"], length=cmd["length"]), (VectorOp(cmd["op"]).name, lat)
        sustained = beats / (oc[-1] - oc[0] + 1)                   # beats per cycle, first to last output
        if cmd["op"] == VectorOp.RMSNORM:
            assert sustained == 1.0
        else:
            assert sustained >= 0.9, sustained                    # ≥ 0.9·V elements per cycle
        print(f"{VectorOp(cmd['op']).name} {cmd['rows']} x {cmd['length']}: sustained {sustained * V:.3f} "
              f"elements/cycle, latency {lat}, end to end "
              f"{cmd['rows'] * cmd['length'] / (oc[-1] - ac[0] + 1):.2f} elements/cycle")


def test_api_raises_naming_the_problem_of_rmsnorm_fp32_before_anything_runs():
    x = np.ones((2, 8), np.float32)
    with pytest.raises(TypeError, match="float32 for rmsnorm_fp32"):
        run_vector("rmsnorm_fp32", bf16(x), config="tiny", gain=bf16(np.ones(8)), eps=1e-5)
    with pytest.raises(ValueError, match=r"gain must be a bfloat16 array of shape \(8,\)"):
        run_vector("rmsnorm_fp32", x, config="tiny", gain=bf16(np.ones(7)), eps=1e-5)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        run_vector("rmsnorm_fp32", x, config="tiny", gain=bf16(np.ones(8)), eps=-1.0)
    with pytest.raises(TypeError, match="takes no b"):
        run_vector("rmsnorm_fp32", x, x, config="tiny", gain=bf16(np.ones(8)), eps=1e-5)
    with pytest.raises(ValueError, match="row length"):
        run_vector("rmsnorm_fp32", np.ones((1, LMAX + 1), np.float32), config="tiny",
                   gain=bf16(np.ones(LMAX + 1)), eps=1e-5)


@pytest.mark.xdist_group("vector_tiny")
def test_run_vector_rmsnorm_fp32_returns_golden_rmsnorm_fp32_in():
    x = (np.random.default_rng(8).normal(0, 3, (3, 2 * V + 1)) * [[1], [1e-3], [1e5]]).astype(np.float32)
    gain = bf16(np.linspace(0.5, 2.0, 2 * V + 1))
    res = run_vector("rmsnorm_fp32", x, config="tiny", gain=gain, eps=1e-5, stall=0.3, backpressure=0.3, seed=8)
    assert np.array_equal(as_bf16_bits(res.output), as_bf16_bits(golden.rmsnorm_fp32_in(x, gain, eps=1e-5)))


# ---------------------------------------------------------------- the sequential rsqrt (vector.rsqrt_steps)


@pytest.mark.xdist_group("vector_tiny_rsqrt_seq")
@pytest.mark.parametrize("stalls", STALLS)
def test_rmsnorm_with_the_sequential_rsqrt_equals_golden_and_its_single_row_latency_is_the_documented_one(
        request, stalls):
    """vector.rsqrt_steps = 2 (the fpga preset's): RMSNORM (both dtypes) and RMSNORM_FP32 bit for
    bit at 1 .. 2V + 2 rows and lengths 1 .. max_len, back to back with ADD (the root's special
    inputs are RsqrtSeq's own test); without stalls a one-row command's first output comes after
    first_out_latency."""
    cfg = TINY.replace(name="tiny_rsqrt_seq", vector={"rsqrt_steps": 2})
    unit = VectorUnit.from_config(cfg)
    seed = _seed(request, 1200)
    rng = np.random.default_rng(seed)
    cases = []
    for length in (1, V + 1, 64, LMAX):
        for op, dt in (("rmsnorm", "bf16"), ("rmsnorm", "int8"), ("rmsnorm_fp32", "int8")):
            cases.append(random_case(rng, op, dt, int(rng.integers(1, 2 * V + 3)), length, **KW))
        cases.append(random_case(rng, "add", "int8", 2, length, **KW))
    singles = [random_case(rng, "rmsnorm", "bf16", 1, 64, **KW), random_case(rng, "rmsnorm_fp32", "int8", 1, 64, **KW)]
    cases += singles
    res = run_commands([c[0] for c in cases], config=cfg, stall=stalls[0], backpressure=stalls[1], seed=seed)
    _check(cases, res)
    assert res["counters"]["rsqrt"] == sum(c[0]["rows"] for c in cases if c[0]["op"] in (
        VectorOp.RMSNORM, VectorOp.RMSNORM_FP32))
    if stalls == (0.0, 0.0):
        pos = sum(c[0]["rows"] * -(-c[0]["length"] // V) for c in cases[:-2])
        for cmd, _, _ in singles:
            lat = res["o_cycle"][pos] - res["a_cycle"][pos]
            assert lat == unit.first_out_latency(cmd["op"], length=cmd["length"]), (VectorOp(cmd["op"]).name, lat)
            pos += cmd["length"] // V
