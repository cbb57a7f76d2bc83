# amaranth: UnusedElaboratable=no
"""amaranth.sim tests of the matmul engine's parts alone (hdl/matmul_*.py), each against a model
of its neighbours: the command sequencer's checks (the interleave's G·M ≤ acc_depth included),
sizes, start and response; the activation buffer's words in the interleaved issue order; the
weight loader's tiles in every format and tile order and its slot rules; the parameter ring and
the requantization check; the accumulator banks and drain, per group, with every output format;
the issue's interleaved order, slots, bias entries and read-after-write rule. Random stimulus is
seeded (the seed is printed); the streams run with valid gaps and backpressure."""

import ml_dtypes
import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

import golden
from hdl.matmul import MatmulEngine
from hdl.matmul_abuf import ActivationBuffer
from hdl.matmul_acc import AccumulatorDrain
from hdl.matmul_common import PARAM_ENTRIES
from hdl.matmul_issue import IssueControl
from hdl.matmul_params import ParamSlots
from hdl.matmul_seq import SETUP_CYCLES, CommandSequencer
from hdl.matmul_wload import WeightLoader
from sim.matmul_api import prepare_job
from spec.codes import MatmulStatus as Status
from spec.codes import OutFormat
from spec.matmul_layout import tile_order

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


def _shape(m, k, n, R, C, a_depth, need_p=0, interleave=0):
    return dict(m_last=m - 1, m_last2=(m - 2) & 0xFFFF, m_one=int(m == 1), k_one=int(k <= R),
                n_one=int(n <= C), g_one=int(interleave == 0), need_p=need_p, words=m * -(-k // R))


def _issue_order(M, Kt, Nt, interleave):
    """(nt, kt, m, g) of every row in issue order: groups of G = interleave + 1 N tiles, ``for
    group: for kt: for nt in group: for m``; g is nt's place in its group."""
    G = interleave + 1
    return [(nt, kt, m, nt - n0) for n0 in range(0, Nt, G) for kt in range(Kt)
            for nt in range(n0, min(n0 + G, Nt)) for m in range(M)]


# ---------------------------------------------------------------- command sequencer

@pytest.mark.parametrize("cmd, code, answer_after", [
    (dict(m=0, k=3, n=3, dtype=0, out_fmt=0), Status.ZERO_DIM, 2),
    (dict(m=65, k=1, n=1, dtype=0, out_fmt=0), Status.M_TOO_LARGE, 2),
    (dict(m=64, k=2 * 33, n=1, dtype=0, out_fmt=0), Status.A_TOO_LARGE, 8),
    (dict(m=1, k=1, n=1, dtype=1, out_fmt=OutFormat.INT8), Status.BAD_FORMAT, 2),
    (dict(m=1, k=1, n=1, dtype=0, out_fmt=OutFormat.FP32), Status.BAD_FORMAT, 2),
    (dict(m=1, k=1, n=1, dtype=1, out_fmt=OutFormat.FP32, w_wide=1), Status.BAD_W_FORMAT, 2),
    (dict(m=1, k=1, n=1, dtype=0, out_fmt=OutFormat.INT32, w_transposed=1, w_wide=1), Status.BAD_W_FORMAT, 2),
    (dict(m=33, k=1, n=1, dtype=0, out_fmt=0, interleave=1), Status.GROUP_TOO_LARGE, 2),
    (dict(m=5, k=9, n=99, dtype=1, out_fmt=OutFormat.FP32, interleave=15), Status.GROUP_TOO_LARGE, 2),
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


@pytest.mark.parametrize("m, interleave", [(64, 0), (32, 1), (4, 15), (21, 2)])
def test_sequencer_starts_a_command_whose_groups_fit_the_accumulator_banks(m, interleave):
    """G·M ≤ acc_depth (64 here) runs, G = interleave + 1."""
    dut = CommandSequencer(rows=2, cols=2, acc_depth=64, a_depth=2048)
    seen = {}

    async def bench(ctx):
        ctx.set(dut.cmd.payload, dict(m=m, k=3, n=5, dtype=0, out_fmt=0, interleave=interleave))
        ctx.set(dut.cmd.valid, 1)
        for t in range(20):
            if ctx.get(dut.cmd.ready):
                await ctx.tick()
                ctx.set(dut.cmd.valid, 0)
                continue
            assert not ctx.get(dut.resp.valid), f"answered at cycle {t}"
            if ctx.get(dut.start):
                await ctx.tick()
                seen["g_one"] = ctx.get(dut.shape.g_one)
                break
            await ctx.tick()

    _sim(dut, bench)
    assert seen["g_one"] == (interleave == 0)


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

@pytest.mark.parametrize("interleave, N", [(0, 6), (1, 6), (2, 9), (3, 3)],
                         ids=["g1", "g2", "g3_partial", "g4_n_short"])
def test_activation_buffer_gives_the_words_in_issue_order_with_gaps(interleave, N):
    """Words in issue order: for each group of G N tiles, each K tile's M words once per N tile
    of the group (the first group reads each word when it has been written)."""
    seed = 5301 + interleave
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C, a_depth = 3, 2, 32
    M, K = 4, 7                    # lanes of the last K tile past K are written as 0
    Kt, Nt = -(-K // R), -(-N // C)
    dut = ActivationBuffer(rows=R, cols=C, a_depth=a_depth)
    beats = rng.integers(0, 1 << 16, (M * Kt, R))
    words = beats.copy()
    for j in range(M * Kt):
        kt = j // M
        words[j, max(0, K - kt * R):] = 0
    order = _issue_order(M, Kt, Nt, interleave)
    want = np.array([words[kt * M + m] for _, kt, m, _ in order])
    got = []

    async def bench(ctx):
        ctx.set(dut.k, K)
        ctx.set(dut.n, N)
        ctx.set(dut.interleave, interleave)
        ctx.set(dut.shape, _shape(M, K, N, R, C, a_depth, interleave=interleave))
        await _start(ctx, dut)
        sent, cnt, taken = 0, 0, []
        for t in range(600):
            a_fire = _offer(ctx, dut.a, beats, sent, rng)
            # the issue: takes a word when the FIFO holds one, with gaps
            take = cnt > 0 and len(taken) < len(order) and rng.random() < 0.6
            ctx.set(dut.take, take)
            ctx.set(dut.take_lanes, take)
            if take:
                taken.append(t)
            cnt += ctx.get(dut.word_in) - take
            if t - 2 in taken:
                got.append([ctx.get(dut.word[r]) for r in range(R)])
            if a_fire:
                sent += 1
            await ctx.tick()
        assert len(got) == len(order)

    _sim(dut, bench)
    np.testing.assert_array_equal(np.array(got), want)


def test_activation_buffer_word_can_be_taken_five_cycles_after_its_beat():
    R, a_depth = 2, 16
    dut = ActivationBuffer(rows=R, cols=2, a_depth=a_depth)
    seen = {}

    async def bench(ctx):
        ctx.set(dut.k, 2)
        ctx.set(dut.n, 1)
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


@pytest.mark.parametrize("transposed, wide, interleave", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 2), (1, 0, 1),
                                                          (0, 1, 3)],
                         ids=["rows", "transposed", "wide", "rows_g3", "transposed_g2", "wide_g4"])
def test_weight_loader_writes_each_tile_into_the_next_slot_and_reuses_a_slot_only_after_its_hold(
        transposed, wide, interleave):
    """The loader's writes, applied to a model of the PEs' slot memories: tile i of the stream
    (in the command's tile order) is in slot i mod slots when ``loaded`` says so, padding
    included, and no PE of a slot is written before the hold after the slot's release has
    passed (with four slots the loader waits)."""
    seed = 5302 + transposed + 2 * wide + 4 * interleave
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C, K, N, S = 4, 2, 7, 5, 4   # ⌈R/C⌉ = 2 beats per column, edge tiles in K (odd) and N
    if wide:
        # int8 weights, two rows per beat; the PEs hold them sign-extended
        W8 = rng.integers(-128, 128, (K, N)).astype(np.int8)
        beats = prepare_job(np.zeros((1, K), np.int8), W8, rows=R, cols=C, w_wide=True, interleave=interleave).w_beats
        W = W8.astype(np.int16).view(np.uint16)
    else:
        W = rng.integers(0, 1 << 16, (K, N)).astype(np.uint16)
        # the beats as sim.matmul_api builds them (bf16 lanes are the 16-bit values themselves)
        beats = prepare_job(np.zeros((1, K), BF16), W.view(BF16), rows=R, cols=C, bf16=True,
                            w_transposed=bool(transposed), interleave=interleave).w_beats
    hold, hold8 = 9, 5
    dut = WeightLoader(rows=R, cols=C, slots=S, weight_hold=hold, int8_weight_hold=hold8)
    tiles = _expected_tiles(W.astype(np.int64), R, C)
    Kt, Nt = -(-K // R), -(-N // C)
    want = [tiles[nt * Kt + kt] for nt, kt in tile_order(Kt, Nt, interleave)]
    mem = np.full((S, R, C), 0x1234, np.int64)       # not 0x8000: the padding must be written
    loads = []

    async def bench(ctx):
        ctx.set(dut.command, dict(k=K, n=N, w_transposed=transposed, w_wide=wide, dtype=0, interleave=interleave))
        await _start(ctx, dut)
        sent, released = 0, 0
        release_at, writable_from = {}, [0] * S
        for t in range(800):
            fire = _offer(ctx, dut.w, beats, sent, rng)
            # the issue: a loaded tile is issued for a while, then released (in slot order)
            rel = release_at.get(released) == t
            ctx.set(dut.release, rel)
            en, slots = ctx.get(dut.w_en), [ctx.get(dut.w_slot[r]) for r in range(R)]
            for r in range(R):
                for c in range(C):
                    if en >> (r * C + c) & 1:
                        assert t >= writable_from[slots[r]], f"cycle {t}: slot {slots[r]} written during its hold"
                        mem[slots[r], r, c] = ctx.get(dut.w_data[r * C + c])
            loaded = ctx.get(dut.loaded)
            if loaded:
                release_at[len(loads)] = max(t + int(rng.integers(1, 12)), release_at.get(len(loads) - 1, 0) + 1)
            if rel:
                # the released row enters the array 2 cycles later and passes the array's hold
                writable_from[released % S] = t + 2 + hold8
                released += 1
            if fire:
                sent += 1
            await ctx.tick()
            if loaded:
                loads.append(mem[len(loads) % S].copy())
        assert sent == len(beats)

    _sim(dut, bench)
    assert len(loads) == len(want)
    for i, (got, exp) in enumerate(zip(loads, want, strict=True)):
        np.testing.assert_array_equal(got, exp, err_msg=f"tile {i}")


# ---------------------------------------------------------------- parameter slots

@pytest.mark.parametrize("out_fmt, bad, err", [
    (OutFormat.INT8, None, 0), (OutFormat.INT8, "inside", 1), (OutFormat.INT8, "past", 0),
    (OutFormat.INT32, "inside", 0)],
    ids=["int8_ok", "int8_bad_inside_n", "int8_bad_past_n", "int32_not_checked"])
def test_param_slots_fill_a_ring_read_by_issue_and_drain_and_check_requant(out_fmt, bad, err):
    """N tile nt's beat lands in entry nt mod PARAM_ENTRIES (``loaded`` once per beat); the
    issue's port reads its bias and the drain's port its multiplier and shift, one cycle after
    the address; the ring takes no beat while all its entries wait for the drain; the
    requantization check covers the columns inside N of an INT8 command."""
    seed = 5304
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    C = 3
    n_tiles = PARAM_ENTRIES + 4
    N = C * n_tiles - 2            # the last beat's lanes 1, 2 are past N
    dut = ParamSlots(cols=C)
    beats = [dict(bias=[int(x) for x in rng.integers(0, 2**32, C)],
                  multiplier=[int(x) for x in rng.integers(0, 2**31, C)],
                  shift=[int(x) for x in rng.integers(1, 63, C)]) for _ in range(n_tiles)]
    if bad == "inside":
        beats[2]["shift"][0] = 0          # column 6
    elif bad == "past":
        beats[-1]["shift"][1] = 0         # column N: past N
    seen = {"loaded": [], "bias": [], "rq": [], "full_wait": 0}

    async def bench(ctx):
        ctx.set(dut.command, dict(n=N, out_fmt=out_fmt))
        ctx.set(dut.need_p, 1)
        await _start(ctx, dut)
        sent, drained, bias_rd, rq_rd = 0, 0, None, None
        for t in range(400):
            fire = _offer(ctx, dut.p, beats, sent, rng)
            if ctx.get(dut.p.valid) and not ctx.get(dut.p.ready) and sent < n_tiles:
                assert sent - drained == PARAM_ENTRIES, f"cycle {t}: not ready with a free entry"
                seen["full_wait"] += 1
            if ctx.get(dut.loaded):
                seen["loaded"].append(t)
            # the reads of the cycle before
            if bias_rd is not None:
                seen["bias"].append((bias_rd, [int(x) for x in ctx.get(dut.bias)]))
            if rq_rd is not None:
                seen["rq"].append((rq_rd, [int(x) for x in ctx.get(dut.multiplier)],
                                   [int(x) for x in ctx.get(dut.shift)]))
            bias_rd = rq_rd = None
            # the issue reads the bias of a loaded entry; the drain reads and frees the oldest
            # one after a while
            if len(seen["loaded"]) > len(seen["bias"]) and seen["loaded"][len(seen["bias"])] < t:
                bias_rd = len(seen["bias"])
                ctx.set(dut.bias_addr, bias_rd % PARAM_ENTRIES)
            free_now = drained < len(seen["bias"]) and t > 60 and rng.random() < 0.5
            ctx.set(dut.tile_drained, free_now)
            if free_now:
                rq_rd = drained
                ctx.set(dut.rq_addr, drained % PARAM_ENTRIES)
                drained += 1
            if fire:
                sent += 1
            await ctx.tick()
        seen["err"] = ctx.get(dut.requant_err)

    _sim(dut, bench)
    assert len(seen["loaded"]) == n_tiles and seen["full_wait"] > 0
    for i, bias in seen["bias"]:
        assert bias == beats[i]["bias"], f"entry of N tile {i}"
    assert len(seen["rq"]) == n_tiles
    for i, mult, shift in seen["rq"]:
        assert mult == beats[i]["multiplier"] and shift == beats[i]["shift"], f"N tile {i}"
    assert seen["err"] == err


# ---------------------------------------------------------------- accumulator and drain

@pytest.mark.parametrize("out_fmt, interleave",
                         [(f, 0) for f in OutFormat] + [(OutFormat.INT8, 2), (OutFormat.BF16, 1)],
                         ids=[f.name.lower() for f in OutFormat] + ["int8_g3", "bf16_g2"])
def test_accumulator_drain_outputs_every_bank_in_order_in_each_format_with_backpressure(out_fmt, interleave):
    """Groups of G = interleave + 1 N tiles go through banks 0, 1, 0, …; each bank is drained
    once its group's last row has been issued and written, N tile by N tile with that tile's
    parameters, onto ``o`` in N-tile order (``last`` on the last beat)."""
    seed = 5310 + out_fmt + 10 * interleave
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C, AB, M, N = 2, 2, 3, 2, 9          # five N tiles
    G = interleave + 1
    Nt = -(-N // C)
    groups = [list(range(n0, min(n0 + G, Nt))) for n0 in range(0, Nt, G)]
    dut = AccumulatorDrain(rows=R, cols=C, acc_bits=AB, a_depth=64)
    acc = rng.integers(-2**31, 2**31, (Nt, M, C))
    mult = rng.integers(2**29, 2**31, (Nt, C))
    shift = rng.integers(30, 40, (Nt, C))
    got, drained, tiles_drained = [], [], [0]

    async def bench(ctx):
        ctx.set(dut.command, dict(n=N, out_fmt=out_fmt, interleave=interleave))
        ctx.set(dut.shape, _shape(M, R, N, R, C, 64, interleave=interleave))
        await _start(ctx, dut)
        gi, rows, free, rq_addr = 0, None, [1, 1], None
        for _ in range(1000):
            # the parameters: entry rq_addr of the cycle before (past the last N tile: none)
            if rq_addr is not None and rq_addr < Nt:
                ctx.set(dut.multiplier, [int(x) for x in mult[rq_addr]])
                ctx.set(dut.shift, [int(x) for x in shift[rq_addr]])
            # the issue: a group's rows go into a free bank, one per cycle (for g: for m; the
            # K tiles of a zero-latency array leave only the last one's results)
            ctx.set(dut.res_valid, 0)
            ctx.set(dut.issued, 0)
            ctx.set(dut.group_issued, 0)
            if rows is None and gi < len(groups) and free[gi % 2]:
                free[gi % 2] = 0
                rows = [(g, m) for g in range(len(groups[gi])) for m in range(M)]
            if rows:
                b = gi % 2
                g, m = rows.pop(0)
                nt = groups[gi][g]
                ctx.set(dut.issued, 1)
                ctx.set(dut.bank, b)
                ctx.set(dut.res_valid, 0b11)
                ctx.set(dut.res_tag, [(g * M + m) | b << AB] * 2)
                ctx.set(dut.result, [int(x) & 0xFFFFFFFF for x in acc[nt, m]])
                if not rows:
                    ctx.set(dut.group_issued, 1)
                    gi, rows = gi + 1, None
            ctx.set(dut.issue_active, gi < len(groups))
            ctx.set(dut.o.ready, rng.random() < 0.6)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                got.append(([ctx.get(dut.o.payload.data[c]) for c in range(C)], ctx.get(dut.o.payload.last)))
            if ctx.get(dut.drained):
                drained.append(ctx.get(dut.drained_bank))
                free[ctx.get(dut.drained_bank)] = 1
            tiles_drained[0] += ctx.get(dut.tile_drained)
            rq_addr = ctx.get(dut.rq_addr) % PARAM_ENTRIES
            await ctx.tick()
            if len(got) == Nt * M:
                break
        for _ in range(3):
            await ctx.tick()
        assert ctx.get(dut.idle)

    _sim(dut, bench, limit=20000)
    assert drained == [i % 2 for i in range(len(groups))]
    assert tiles_drained[0] == Nt
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

@pytest.mark.parametrize("M, K, N, interleave", [(3, 5, 3, 0), (2, 5, 7, 1), (1, 7, 7, 2), (2, 3, 3, 4)],
                         ids=["g1", "g2", "g3_m1", "g5_n_short"])
def test_issue_order_weight_slots_bias_select_and_read_after_write_with_a_model_array(M, K, N, interleave):
    """Rows come out in the interleaved order (for group: for kt: for nt in group: for m), each
    tile from the next weight slot, into bank (group mod 2) at row g·M + m; the first K tile
    with the bias of its N tile's parameter entry, the others with the accumulator; a row of K
    tile kt ≥ 1 issues only after its accumulator row of kt − 1 has been written; a group's
    first row waits for its bank to be drained."""
    seed = 5320 + interleave
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    R, C, AB, LAT, S = 2, 2, 4, 9, 4
    Kt, Nt = -(-K // R), -(-N // C)
    G = interleave + 1
    dut = IssueControl(rows=R, cols=C, acc_bits=AB, slots=S, a_depth=64)
    order = _issue_order(M, Kt, Nt, interleave)
    index = {(nt, kt, m): i for i, (nt, kt, m, _) in enumerate(order)}
    group_last = {}
    for i, (nt, _, _, _) in enumerate(order):
        group_last[nt // G] = i
    rows, written, drained_at = [], {}, {}

    async def bench(ctx):
        ctx.set(dut.command, dict(m=M, k=K, n=N, has_bias=1, interleave=interleave))
        ctx.set(dut.shape, _shape(M, K, N, R, C, 64, need_p=1, interleave=interleave))
        ctx.set(dut.psum_data, [7, 7])
        await _start(ctx, dut)
        inflight, tiles_loaded, released, fifo, p_loaded, bias_rd = [], 0, 0, 0, 0, None
        for t in range(1500):
            # neighbours: the bias of the entry read in the cycle before; a weight tile into the
            # next slot while one is free; parameter entries; activation words; results LAT
            # cycles after a row entered the array; the drain empties a group's bank 20 cycles
            # after the group's last row was written
            if bias_rd is not None:
                ctx.set(dut.bias, [1000 * (bias_rd + 1) + c for c in range(C)])
            load = tiles_loaded < Kt * Nt and tiles_loaded - released < S and rng.random() < 0.5
            ctx.set(dut.w_loaded, load)
            tiles_loaded += load
            released += ctx.get(dut.release)
            pl = p_loaded < Nt and rng.random() < 0.3
            ctx.set(dut.p_loaded, pl)
            p_loaded += pl
            word_in = fifo < 5 and rng.random() < 0.7
            ctx.set(dut.word_in, word_in)
            fifo += word_in - ctx.get(dut.take)
            bias_rd = ctx.get(dut.bias_addr) if ctx.get(dut.take) else None
            if ctx.get(dut.valid):
                rows.append((t, ctx.get(dut.tag), ctx.get(dut.slot), [ctx.get(dut.psum[c]) for c in range(C)]))
                inflight.append((t + LAT, ctx.get(dut.tag), len(rows) - 1))
            done = [x for x in inflight if x[0] == t]
            inflight = [x for x in inflight if x[0] != t]
            ctx.set(dut.res_valid, 0b11 if done else 0)
            if done:
                _, tag, i = done[0]
                ctx.set(dut.res_tag, [tag] * 2)
                written[i] = t
                gi = order[i][0] // G
                if group_last[gi] == i:
                    drained_at[gi] = t + 20
            drain = [gi for gi, at in drained_at.items() if at == t]
            ctx.set(dut.drained, bool(drain))
            ctx.set(dut.drained_bank, drain[0] % 2 if drain else 0)
            await ctx.tick()

    _sim(dut, bench, limit=2000)
    assert len(rows) == len(order)
    tiles = [(nt, kt) for nt, kt, m, _ in order if m == 0]
    first_row_t = {}
    for i, ((t, tag, slot, psum), (nt, kt, m, g)) in enumerate(zip(rows, order, strict=True)):
        gi = nt // G
        assert tag == ((g * M + m) | (gi % 2) << AB), f"row {i}"
        assert slot == tiles.index((nt, kt)) % S, f"row {i}"
        if kt == 0:
            assert psum == [1000 * (nt % PARAM_ENTRIES + 1) + c for c in range(C)], f"row {i}"
        else:
            assert psum == [7, 7], f"row {i}"
            prev = written[index[(nt, kt - 1, m)]]
            assert t - 2 > prev, f"row {i} issued at {t - 2}, its partial sum written at {prev}"
        first_row_t.setdefault(gi, t)
    for gi, t in first_row_t.items():
        if gi >= 2:
            assert t - 2 > drained_at[gi - 2], f"group {gi} started before its bank was drained"


def test_interleave_for_covers_the_read_after_write_wait_with_the_fewest_cycles():
    """sim.run_matmul's choice of G: enough N tiles per group that a pass over a K tile lasts the
    read-after-write wait (``dependency_latency``, which the built engine reports too), the
    smallest G of the fewest cycles (the short last group included), within 16, N's tiles and
    acc_depth // M; G = 1 for one K tile or an M that covers the wait alone."""
    from amaranth.hdl import Fragment

    from hdl.config import get_config
    from hdl.systolic import SystolicArray
    tiny = MatmulEngine.from_config(get_config("tiny"))
    Fragment.get(tiny, None)        # elaborated: the latencies are the built engine's
    for bf16, dep in ((True, tiny.dependency_latency), (False, tiny.int8_dependency_latency)):
        assert dep == 2 + SystolicArray.latency_for(2, 2, bf16=bf16) + 1
    cfg = get_config("default")
    assert SystolicArray.latency_for(8, 8, bf16=True) + 3 == 72
    assert SystolicArray.latency_for(8, 8, bf16=False) + 3 == 32

    def g(m, k, n, bf16, beats):
        return MatmulEngine.interleave_for(cfg, m, k, n, bf16=bf16, tile_beats=beats) + 1
    assert g(1, 576, 576, True, 8) == 9            # 9 tiles × 8 beats ≥ 72
    assert g(1, 576, 576, False, 4) == 8           # 8 × 4 ≥ 32 (wide int8)
    assert g(1, 576, 1536, True, 8) == 12          # 192 tiles: 16 groups of 12, not 21 of 9 and one of 3
    assert g(24, 576, 576, True, 8) == 3
    assert g(72, 576, 576, True, 8) == g(256, 256, 256, True, 8) == 1
    assert g(1, 8, 576, True, 8) == 1              # one K tile: no wait
    assert g(1, 576, 24, True, 8) == 3             # only 3 N tiles
    assert g(1, 576, 512, True, 1) == 16           # at most 16 (64 N tiles: 4 groups of 16)
    assert g(20, 576, 576, True, 1) == 4           # 4 × 20 ≥ 72, and ≤ acc_depth // M
    with pytest.raises(ValueError, match="m must be a positive int, not 0"):
        g(0, 8, 8, True, 8)


def test_engine_marks_its_register_copies_keep_in_the_verilog():
    """Each copy of a control register carries the keep attribute where it is defined (make fpga
    keeps the flip-flops of every such signal apart: bench.fpga.KEEP_SELECTION)."""
    import re
    engine = MatmulEngine(rows=2, cols=2, acc_depth=4, a_depth=16)
    text = verilog.convert(engine, name="e", emit_src=False)
    lines = text.splitlines()
    # the attribute is on the line before the register, or before its output declaration when
    # the register is also a port of its module
    kept = {m.group(1) for i, line in enumerate(lines[2:], 2)
            for m in [re.match(r"\s*reg\s+(?:\[[^\]]*\]\s*)?(\w+)", line)] if m
            if "keep" in lines[i - 1] or (re.match(rf"\s*output\s+(?:\[[^\]]*\]\s*)?{m.group(1)};", lines[i - 1])
                                          and "keep" in lines[i - 2])}
    for name in ("start_a", "running_w", "iss_l_w_ok", "iss_i_a_nz", "a_pf1_li", "a_pfi_anz", "wb_en1_1",
                 "psum_sel1_b", "psum_sel1_acc", "out_sel0_q", "wl_row1_slot", "wl_row1_tr", "a_rd1", "a_wp0_en",
                 f"valid_d{engine.array.latency}_c1", "ctl_1_1", "slot_out", "bf16_q", "slot_skew1_d3"):
        assert name in kept, name


@pytest.mark.parametrize("make, message", [
    (lambda: CommandSequencer(rows=0, cols=2, acc_depth=4, a_depth=16), "rows must be in 1..64, not 0"),
    (lambda: CommandSequencer(rows=2, cols=2, acc_depth=4, a_depth=1), "a_depth must be in 2..1048576"),
    (lambda: ActivationBuffer(rows=65, cols=2, a_depth=16), "rows must be in 1..64, not 65"),
    (lambda: WeightLoader(rows=2, cols=2, slots=4, weight_hold=5, int8_weight_hold=6),
     "int8_weight_hold must be in 1..5"),
    (lambda: WeightLoader(rows=2, cols=2, slots=6, weight_hold=5, int8_weight_hold=4),
     "slots must be a power of two, not 6"),
    (lambda: ParamSlots(cols=0), "cols must be in 1..64"),
    (lambda: IssueControl(rows=2, cols=2, acc_bits=0, slots=4, a_depth=16), "acc_bits must be in 1..16"),
    (lambda: AccumulatorDrain(rows=2, cols=99, acc_bits=2, a_depth=16), "cols must be in 1..64, not 99"),
    (lambda: MatmulEngine(rows=2, cols=2, acc_depth=3, a_depth=16), "acc_depth must be a power of two"),
], ids=["seq_rows", "seq_a_depth", "abuf_rows", "wload_hold", "wload_slots", "params_cols", "issue_acc_bits",
        "acc_cols",
        "engine_acc_depth"])
def test_parts_reject_parameters_outside_their_ranges_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_parts_reject_a_parameter_that_is_not_an_int():
    with pytest.raises(TypeError, match="cols must be an int, not 2.0"):
        ParamSlots(cols=2.0)
