# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the matmul engine's parts alone (hdl/matmul_*.py), each against a model
of its neighbours: the command sequencer's checks, sizes, start and response; the activation
buffer's words in issue order; the weight loader's tiles in both orientations and its bank
rules; the parameter slots and the requantization check; the accumulator banks and drain with
every output format; the issue's order and read-after-write rule. Random stimulus is seeded (the
seed is printed); the streams run with valid gaps and backpressure."""

import ml_dtypes
import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

import golden
from hdl.matmul import MatmulEngine
from hdl.matmul_abuf import ActivationBuffer
from hdl.matmul_acc import AccumulatorDrain
from hdl.matmul_issue import IssueControl
from hdl.matmul_params import ParamSlots
from hdl.matmul_seq import SETUP_CYCLES, CommandSequencer
from hdl.matmul_wload import WeightLoader
from sim.matmul_api import prepare_job
from spec.codes import MatmulStatus as Status
from spec.codes import OutFormat

BF16 = ml_dtypes.bfloat16


def _sim(dut, bench, limit=5000):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run_until(limit * 1e-8)


async def _start(ctx, dut):
    """The sequencer's one-cycle start, then the cycle in which the parts register it."""
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    await ctx.tick()


def _offer(ctx, port, beats, sent, rng, rate=0.7):
    """Drive stream ``port`` with beat ``sent`` of ``beats``: a beat already offered and not yet
    taken stays (valid and payload held); a new one comes after a valid gap with probability
    1 − rate. Returns whether the beat is taken in this cycle."""
    held = getattr(port, "_offered", None) == sent
    if sent < len(beats) and (held or rng.random() < rate):
        ctx.set(port.valid, 1)
        beat = beats[sent]
        ctx.set(port.payload, beat if isinstance(beat, dict) else [int(x) for x in beat])
        port._offered = sent
    else:
        ctx.set(port.valid, 0)
    return bool(ctx.get(port.valid) and ctx.get(port.ready))


def _shape(m, k, n, R, C, a_depth, need_p=0):
    return dict(m_last=m - 1, m_last2=(m - 2) & 0xFFFF, m_one=int(m == 1), k_one=int(k <= R),
                n_one=int(n <= C), need_p=need_p, words=m * -(-k // R))


# ---------------------------------------------------------------- command sequencer

@pytest.mark.parametrize("cmd, code, answer_after", [
    (dict(m=0, k=3, n=3, dtype=0, out_fmt=0), Status.ZERO_DIM, 2),
    (dict(m=65, k=1, n=1, dtype=0, out_fmt=0), Status.M_TOO_LARGE, 2),
    (dict(m=64, k=2 * 33, n=1, dtype=0, out_fmt=0), Status.A_TOO_LARGE, 8),
    (dict(m=1, k=1, n=1, dtype=1, out_fmt=OutFormat.INT8), Status.BAD_FORMAT, 2),
    (dict(m=1, k=1, n=1, dtype=0, out_fmt=OutFormat.FP32), Status.BAD_FORMAT, 2),
    (dict(m=1, k=1, n=1, dtype=1, out_fmt=OutFormat.FP32, w_wide=1), Status.BAD_W_FORMAT, 2),
    (dict(m=1, k=1, n=1, dtype=0, out_fmt=OutFormat.INT32, w_transposed=1, w_wide=1), Status.BAD_W_FORMAT, 2),
])
def test_sequencer_answers_a_bad_command_with_its_code_and_starts_nothing(cmd, code, answer_after):
    dut = CommandSequencer(rows=2, cols=2, acc_depth=64, a_depth=2048)
    seen = {}

    async def bench(ctx):
        ctx.set(dut.cmd.payload, cmd)
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.resp.ready, 1)
        for t in range(40):
            if ctx.get(dut.cmd.ready) and ctx.get(dut.cmd.valid):
                seen.setdefault("accept", t)
                await ctx.tick()
                ctx.set(dut.cmd.valid, 0)
                continue
            assert not ctx.get(dut.start), f"start at cycle {t}"
            if ctx.get(dut.resp.valid):
                seen["resp"] = (t, ctx.get(dut.resp.payload.code), ctx.get(dut.resp.payload.cycles))
                break
            await ctx.tick()

    _sim(dut, bench)
    t, got, cycles = seen["resp"]
    assert got == code
    assert t - seen["accept"] == answer_after
    assert cycles == answer_after - 1       # the cycles before the response


@pytest.mark.parametrize("requant_err", [0, 1], ids=["ok", "bad_requant"])
def test_sequencer_starts_a_good_command_with_its_sizes_holds_cmd_until_done_and_responds(requant_err):
    R, C = 3, 2
    dut = CommandSequencer(rows=R, cols=C, acc_depth=64, a_depth=2048)
    M, K, N = 5, 7, 3
    seen = {"start": []}

    async def bench(ctx):
        ctx.set(dut.cmd.payload, dict(m=M, k=K, n=N, dtype=0, out_fmt=OutFormat.INT8, has_bias=0))
        ctx.set(dut.cmd.valid, 1)
        accepted = False
        for t in range(60):
            if not accepted and ctx.get(dut.cmd.ready):
                seen["accept"] = t
                accepted = True
                await ctx.tick()
                # a second command waits: ready stays low while busy
                continue
            assert not ctx.get(dut.cmd.ready), f"ready while busy, cycle {t}"
            assert ctx.get(dut.busy)
            if ctx.get(dut.start):
                seen["start"].append(t)
                seen["shape"] = {k: ctx.get(getattr(dut.shape, k)) for k, _ in dut.shape.shape()}
            ctx.set(dut.done, t == 30)
            ctx.set(dut.requant_err, requant_err and t == 30)
            if ctx.get(dut.stop):
                seen["stop"] = t
            if ctx.get(dut.resp.valid):
                seen["resp"] = (t, ctx.get(dut.resp.payload.code))
                ctx.set(dut.resp.ready, 1)
                await ctx.tick()
                seen["ready_after"] = ctx.get(dut.cmd.ready)
                break
            await ctx.tick()

    _sim(dut, bench)
    assert seen["start"] == [seen["accept"] + SETUP_CYCLES - 1]    # the parts run from + 9
    shape = dict(seen["shape"])
    # the sizes are registered in the cycle of the start pulse, so read them from the next
    assert shape["m_last"] == M - 1 and shape["m_one"] == 0 and shape["k_one"] == 0
    assert shape["n_one"] == 0 and shape["need_p"] == 1
    assert seen["stop"] == 30 and seen["resp"] == (31, Status.BAD_REQUANT if requant_err else Status.OK)
    assert seen["ready_after"] == 1


# ---------------------------------------------------------------- activation buffer

def test_activation_buffer_gives_the_words_in_issue_order_for_every_n_tile_with_gaps():
    seed = 5301
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, a_depth = 3, 32
    M, K, n_tiles = 4, 7, 3          # lanes of the last K tile past K are written as 0
    Kt = -(-K // R)
    dut = ActivationBuffer(rows=R, a_depth=a_depth)
    beats = rng.integers(0, 1 << 16, (M * Kt, R))
    want = beats.copy()
    for j in range(M * Kt):
        kt = j // M
        want[j, max(0, K - kt * R):] = 0
    got, timing = [], []

    async def bench(ctx):
        ctx.set(dut.k, K)
        ctx.set(dut.shape, _shape(M, K, 1, R, 2, a_depth))
        await _start(ctx, dut)
        sent, cnt, taken = 0, 0, []
        for t in range(400):
            a_fire = _offer(ctx, dut.a, beats, sent, rng)
            # the issue: takes a word when the FIFO holds one, with gaps
            take = cnt > 0 and len(taken) < n_tiles * M * Kt and rng.random() < 0.6
            ctx.set(dut.take, take)
            ctx.set(dut.take_lanes, take)
            if take:
                taken.append(t)
            cnt += ctx.get(dut.word_in) - take
            for i, tt in enumerate(taken):
                if tt == t - 2:
                    got.append([ctx.get(dut.word[r]) for r in range(R)])
                    timing.append(i)
            if a_fire:
                sent += 1
            await ctx.tick()
        assert len(got) == n_tiles * M * Kt

    _sim(dut, bench)
    np.testing.assert_array_equal(np.array(got), np.concatenate([want] * n_tiles))


def test_activation_buffer_word_can_be_taken_five_cycles_after_its_beat():
    R, a_depth = 2, 16
    dut = ActivationBuffer(rows=R, a_depth=a_depth)
    seen = {}

    async def bench(ctx):
        ctx.set(dut.k, 2)
        ctx.set(dut.shape, _shape(1, 2, 1, R, 2, a_depth))
        await _start(ctx, dut)
        ctx.set(dut.a.valid, 1)
        ctx.set(dut.a.payload, [7, 9])
        for t in range(10):
            if ctx.get(dut.a.ready) and "taken" not in seen:
                seen["taken"] = t
            if ctx.get(dut.word_in):
                seen.setdefault("word_in", t)
            await ctx.tick()
            if "taken" in seen:
                ctx.set(dut.a.valid, 0)

    _sim(dut, bench)
    assert seen["word_in"] - seen["taken"] == 4     # takeable from the cycle after: t + 5


# ---------------------------------------------------------------- weight loader

def _expected_tiles(W, R, C):
    K, N = W.shape
    Kt, Nt = -(-K // R), -(-N // C)
    tiles = []
    for nt in range(Nt):
        for kt in range(Kt):
            t = np.full((R, C), 0x8000, np.int64)
            blk = W[kt * R:(kt + 1) * R, nt * C:(nt + 1) * C]
            t[:blk.shape[0], :blk.shape[1]] = blk
            tiles.append(t)
    return tiles


@pytest.mark.parametrize("transposed, wide", [(0, 0), (1, 0), (0, 1)], ids=["rows", "transposed", "wide"])
def test_weight_loader_copies_each_tile_into_alternate_banks_only_when_free(transposed, wide):
    seed = 5302 + transposed + 2 * wide
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C, K, N = 4, 2, 7, 5         # ⌈R/C⌉ = 2 beats per column, edge tiles in K (odd) and N
    if wide:
        # int8 weights, two rows per beat; the staging words hold them sign-extended
        W8 = rng.integers(-128, 128, (K, N)).astype(np.int8)
        beats = prepare_job(np.zeros((1, K), np.int8), W8, rows=R, cols=C, w_wide=True).w_beats
        W = W8.astype(np.int16).view(np.uint16)
    else:
        W = rng.integers(0, 1 << 16, (K, N)).astype(np.uint16)
        # the beats as sim.matmul_api builds them (bf16 lanes are the 16-bit values themselves)
        beats = prepare_job(np.zeros((1, K), BF16), W.view(BF16), rows=R, cols=C, bf16=True,
                            w_transposed=bool(transposed)).w_beats
    hold, hold8, load_cycles = 9, 5, R + C - 1
    dut = WeightLoader(rows=R, cols=C, weight_hold=hold, int8_weight_hold=hold8, load_cycles=load_cycles)
    loads = []

    async def bench(ctx):
        ctx.set(dut.command, dict(k=K, n=N, w_transposed=transposed, w_wide=wide, dtype=0))
        await _start(ctx, dut)
        sent, full, busy_until = 0, [0, 0], [0, 0]
        release_at = {}
        for t in range(600):
            fire = _offer(ctx, dut.w, beats, sent, rng)
            # the issue: a loaded bank is issued from for a while, then released
            rel = [b for b in (0, 1) if release_at.get(b) == t]
            ctx.set(dut.release, bool(rel))
            ctx.set(dut.release_bank, rel[0] if rel else 0)
            loaded = None
            if ctx.get(dut.load):
                b = loaded = ctx.get(dut.load_bank)
                assert not full[b], f"cycle {t}: bank {b} loaded while full"
                assert t >= busy_until[b], f"cycle {t}: bank {b} loaded during its hold"
                release_at[b] = t + int(rng.integers(1, 12))
            if fire:
                sent += 1
            await ctx.tick()
            # the array reads the tile from the cycle after the load on (its control chain), for
            # load_cycles cycles: the register holds it then
            if loaded is not None:
                tile = np.array([ctx.get(dut.tile[i]) for i in range(R * C)]).reshape(R, C)
                loads.append((loaded, tile))
            # the issue's flags are registers: they change in the cycle after the load / release
            if loaded is not None:
                full[loaded] = 1
            if rel:
                full[rel[0]] = 0
                busy_until[rel[0]] = t + 1 + hold8 + 1
            ctx.set(dut.bank_full, full[0] | full[1] << 1)

    _sim(dut, bench)
    want = _expected_tiles(W.astype(np.int64), R, C)
    assert [b for b, _ in loads] == [i % 2 for i in range(len(want))]
    for i, ((_, got), exp) in enumerate(zip(loads, want, strict=True)):
        np.testing.assert_array_equal(got, exp, err_msg=f"tile {i}")


# ---------------------------------------------------------------- parameter slots

@pytest.mark.parametrize("out_fmt, bad_lane, err", [
    (OutFormat.INT8, None, 0), (OutFormat.INT8, 6, 1), (OutFormat.INT8, 7, 0), (OutFormat.INT32, 6, 0)],
    ids=["int8_ok", "int8_bad_inside_n", "int8_bad_past_n", "int32_not_checked"])
def test_param_slots_fill_alternately_wait_for_a_free_slot_and_check_requant(out_fmt, bad_lane, err):
    seed = 5304
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    C, N = 3, 7                     # three beats; lanes 7, 8 of the last one are past N
    dut = ParamSlots(cols=C)
    beats = [dict(bias=[int(x) for x in rng.integers(0, 2**32, C)],
                  multiplier=[int(x) for x in rng.integers(0, 2**31, C)],
                  shift=[int(x) for x in rng.integers(1, 63, C)]) for _ in range(3)]
    if bad_lane is not None:
        beats[bad_lane // C]["shift"][bad_lane % C] = 0
    seen = {"slots": []}

    async def bench(ctx):
        ctx.set(dut.command, dict(n=N, out_fmt=out_fmt))
        ctx.set(dut.need_p, 1)
        await _start(ctx, dut)
        sent, full, drain_at = 0, [0, 0], {}
        for t in range(120):
            _offer(ctx, dut.p, beats, sent, rng)
            if ctx.get(dut.p.ready):
                assert not full[ctx.get(dut.loaded_slot)], f"cycle {t}: ready with its slot full"
            loaded = None
            if ctx.get(dut.loaded):
                loaded = ctx.get(dut.loaded_slot)
                drain_at[loaded] = t + 15
                seen["slots"].append((loaded, t))
                sent += 1
            drained = [s for s in (0, 1) if drain_at.get(s) == t]
            for s in drained:
                seen.setdefault("values", []).append(
                    (ctx.get(dut.bias[s]), ctx.get(dut.multiplier[s]), ctx.get(dut.shift[s])))
            await ctx.tick()
            # the issue's flags are registers: they change in the cycle after
            if loaded is not None:
                full[loaded] = 1
            for s in drained:
                full[s] = 0
            ctx.set(dut.full, full[0] | full[1] << 1)
        seen["err"] = ctx.get(dut.requant_err)

    _sim(dut, bench)
    assert [s for s, _ in seen["slots"]] == [0, 1, 0]
    assert seen["slots"][2][1] >= seen["slots"][0][1] + 15       # waited for slot 0 to drain
    for (bias, mult, shift), beat in zip(seen["values"], beats, strict=True):
        assert [int(bias[c]) for c in range(C)] == beat["bias"]
        assert [int(mult[c]) for c in range(C)] == beat["multiplier"]
        assert [int(shift[c]) for c in range(C)] == beat["shift"]
    assert seen["err"] == err


# ---------------------------------------------------------------- accumulator and drain

@pytest.mark.parametrize("out_fmt", list(OutFormat), ids=[f.name.lower() for f in OutFormat])
def test_accumulator_drain_outputs_every_bank_in_order_in_each_format_with_backpressure(out_fmt):
    seed = 5310 + out_fmt
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C, AB, M, N = 2, 2, 3, 3, 5          # three N tiles through banks 0, 1, 0
    Nt = -(-N // C)
    dut = AccumulatorDrain(rows=R, cols=C, acc_bits=AB, a_depth=64)
    acc = rng.integers(-2**31, 2**31, (Nt, M, C))
    mult = rng.integers(2**29, 2**31, (Nt, C))
    shift = rng.integers(30, 40, (Nt, C))
    got, drained = [], []

    async def bench(ctx):
        ctx.set(dut.command, dict(n=N, out_fmt=out_fmt))
        ctx.set(dut.shape, _shape(M, R, N, R, C, 64))
        await _start(ctx, dut)
        nt, row, free = 0, None, [1, 1]
        for _ in range(800):
            # the issue: an N tile's rows go into a free bank, one per cycle, and their results
            # come back at once (a zero-latency array)
            ctx.set(dut.tile_start, 0)
            ctx.set(dut.res_valid, 0)
            ctx.set(dut.tile_issued, 0)
            if row is None and nt < Nt and free[nt % 2]:
                b = nt % 2
                free[b] = 0
                ctx.set(dut.multiplier[b], [int(x) for x in mult[nt]])
                ctx.set(dut.shift[b], [int(x) for x in shift[nt]])
                ctx.set(dut.tile_start, 1)
                ctx.set(dut.bank, b)
                row = -1
            elif row is not None:
                row += 1
                b = nt % 2
                ctx.set(dut.res_valid, 0b11)
                ctx.set(dut.res_tag, [row | b << AB] * 2)
                ctx.set(dut.result, [int(x) & 0xFFFFFFFF for x in acc[nt, row]])
                if row == M - 1:
                    ctx.set(dut.tile_issued, 1)
                    nt, row = nt + 1, None
            ctx.set(dut.issue_active, nt < Nt)
            ctx.set(dut.o.ready, rng.random() < 0.6)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                got.append(([ctx.get(dut.o.payload.data[c]) for c in range(C)], ctx.get(dut.o.payload.last)))
            if ctx.get(dut.drained):
                drained.append(ctx.get(dut.drained_bank))
                free[ctx.get(dut.drained_bank)] = 1
            await ctx.tick()
        for _ in range(3):
            await ctx.tick()
        assert ctx.get(dut.idle)

    _sim(dut, bench, limit=20000)
    assert drained == [0, 1, 0]
    assert [last for _, last in got] == [0] * (Nt * M - 1) + [1]
    lanes = np.array([d for d, _ in got], np.uint64).reshape(Nt, M, C)
    acc32 = acc.astype(np.int64)
    if out_fmt in (OutFormat.INT32, OutFormat.FP32):
        want = acc32 & 0xFFFFFFFF
    elif out_fmt == OutFormat.INT8:
        want = np.stack([golden.requantize(acc32[i], mult[i], shift[i]) for i in range(Nt)]).astype(np.int64)
        want &= 0xFFFFFFFF
    else:
        want = golden.fp32_to_bf16((acc32 & 0xFFFFFFFF).astype(np.uint32)).astype(np.int64)
    np.testing.assert_array_equal(lanes.astype(np.int64), want)


# ---------------------------------------------------------------- issue

def test_issue_order_weight_banks_bias_select_and_read_after_write_with_a_model_array():
    """Rows come out in tile order (for nt: for kt: for m), each K tile from its weight bank,
    the first K tile with the bias of its slot, the others with the accumulator, and no row of
    K tile kt ≥ 1 issues before its accumulator row of kt − 1 has been written."""
    seed = 5320
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C, AB, M, K, N, LAT = 2, 2, 3, 3, 5, 3, 9
    Kt, Nt = -(-K // R), -(-N // C)
    dut = IssueControl(rows=R, cols=C, acc_bits=AB, a_depth=64)
    rows, written = [], {}

    async def bench(ctx):
        ctx.set(dut.command, dict(m=M, k=K, n=N, has_bias=1))
        ctx.set(dut.shape, _shape(M, K, N, R, C, 64, need_p=1))
        ctx.set(dut.bias, [[1000 + c for c in range(C)], [2000 + c for c in range(C)]])
        ctx.set(dut.psum_data, [7, 7])
        await _start(ctx, dut)
        # both N tiles' parameters (two slots, so no drain is needed)
        for slot in (0, 1):
            ctx.set(dut.p_loaded, 1)
            ctx.set(dut.p_loaded_slot, slot)
            await ctx.tick()
        ctx.set(dut.p_loaded, 0)
        inflight, tiles_loaded, fifo = [], 0, 0
        for t in range(600):
            # neighbours: a weight tile whenever its bank is empty, activation words, results
            # LAT cycles after a row entered the array
            load = (tiles_loaded < Kt * Nt and not (ctx.get(dut.w_full) >> (tiles_loaded % 2)) & 1
                    and rng.random() < 0.5)
            ctx.set(dut.w_loaded, load)
            ctx.set(dut.w_loaded_bank, tiles_loaded % 2)
            tiles_loaded += load
            word_in = fifo < 5 and rng.random() < 0.7
            ctx.set(dut.word_in, word_in)
            fifo += word_in - ctx.get(dut.take)
            if ctx.get(dut.valid):
                rows.append((t, ctx.get(dut.tag), ctx.get(dut.w_bank),
                             [ctx.get(dut.psum[c]) for c in range(C)]))
                inflight.append((t + LAT, ctx.get(dut.tag)))
            done = [x for x in inflight if x[0] == t]
            inflight = [x for x in inflight if x[0] != t]
            ctx.set(dut.res_valid, 0b11 if done else 0)
            if done:
                ctx.set(dut.res_tag, [done[0][1]] * 2)
                written.setdefault(done[0][1], []).append(t)
            await ctx.tick()

    _sim(dut, bench, limit=1000)
    assert len(rows) == M * Kt * Nt
    order = [(nt, kt, m) for nt in range(Nt) for kt in range(Kt) for m in range(M)]
    for (t, tag, wbank, psum), (nt, kt, m), i in zip(rows, order, range(len(rows)), strict=True):
        assert tag == (m | (nt % 2) << AB), f"row {i}"
        assert wbank == (nt * Kt + kt) % 2, f"row {i}"
        if kt == 0:
            assert psum == [(1000 if nt % 2 == 0 else 2000) + c for c in range(C)], f"row {i}"
        else:
            assert psum == [7, 7], f"row {i}"
            prev = written[tag][kt - 1]        # each (bank, m) tag belongs to one N tile here
            assert t - 2 >= prev, f"row {i} issued at {t - 2}, its partial sum written at {prev}"


def test_engine_marks_its_register_copies_keep_in_the_verilog():
    """Each copy of a control register carries the keep attribute where it is defined (make fpga
    keeps the flip-flops of every such signal apart: bench.fpga.KEEP_SELECTION)."""
    import re
    engine = MatmulEngine(rows=2, cols=2, acc_depth=4, a_depth=16)
    text = verilog.convert(engine, name="e", emit_src=False)
    lines = text.splitlines()
    kept = {m.group(1) for i, line in enumerate(lines[1:], 1) if "keep" in lines[i - 1]
            for m in [re.match(r"\s*reg\s+(?:\[[^\]]*\]\s*)?(\w+)", line)] if m}
    for name in ("start_a", "running_w", "iss_l_w_ok", "iss_i_a_nz", "a_pf1_li", "a_pfi_anz", "wb_en1_1",
                 "p_ld0_1", "psum_sel1_acc", "out_sel0_q", "stg_row1_clr", "a_rd1", "a_wp0_en",
                 f"valid_d{engine.array.latency}_c1", "ctl_1_1", "bank_q", "bf16_q", "bank_skew1_d3"):
        assert name in kept, name


@pytest.mark.parametrize("make, message", [
    (lambda: CommandSequencer(rows=0, cols=2, acc_depth=4, a_depth=16), "rows must be in 1..64, not 0"),
    (lambda: CommandSequencer(rows=2, cols=2, acc_depth=4, a_depth=1), "a_depth must be in 2..1048576"),
    (lambda: ActivationBuffer(rows=65, a_depth=16), "rows must be in 1..64, not 65"),
    (lambda: WeightLoader(rows=2, cols=2, weight_hold=5, int8_weight_hold=6, load_cycles=3),
     "int8_weight_hold must be in 1..5"),
    (lambda: ParamSlots(cols=0), "cols must be in 1..64"),
    (lambda: IssueControl(rows=2, cols=2, acc_bits=0, a_depth=16), "acc_bits must be in 1..16"),
    (lambda: AccumulatorDrain(rows=2, cols=99, acc_bits=2, a_depth=16), "cols must be in 1..64, not 99"),
    (lambda: MatmulEngine(rows=2, cols=2, acc_depth=3, a_depth=16), "acc_depth must be a power of two"),
], ids=["seq_rows", "seq_a_depth", "abuf_rows", "wload_hold", "params_cols", "issue_acc_bits", "acc_cols",
        "engine_acc_depth"])
def test_parts_reject_parameters_outside_their_ranges_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_parts_reject_a_parameter_that_is_not_an_int():
    with pytest.raises(TypeError, match="cols must be an int, not 2.0"):
        ParamSlots(cols=2.0)
