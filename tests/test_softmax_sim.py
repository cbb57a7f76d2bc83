# amaranth: UnusedElaboratable=no
"""Fast amaranth.sim tests of the softmax unit (hdl/softmax.py): a few rows of both paths
against golden, the command checks, and the component's parameters and properties."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

import golden
from hdl.config import get_config
from hdl.softmax import COUNTERS, SoftmaxUnit
from hdl.tops import top_class
from sim.softmax_api import expected_rows

SEED = 7


def _simulate(unit, rows, *, stall=0.0, backpressure=0.0, seed=SEED, max_cycles=5000):
    """Drive ``rows`` (dicts as sim.softmax_api.run_softmax_rows takes) through ``unit`` in
    amaranth.sim; return (outputs per accepted row, counters, error pulses)."""
    lanes = unit.lanes
    rand = random.Random(seed)
    cmds, beats, n_out, lengths = [], [], 0, []
    for r in rows:
        length = r.get("length", len(r.get("scores", [])))
        cmds.append({"length": length, "valid_len": min(r.get("valid_len", length), unit.max_len),
                     "causal_pos": min(r.get("causal_pos", unit.max_len), unit.max_len),
                     "dtype": 0 if r["dtype"] == "int8" else 1, "scale": int(r.get("scale", 0)),
                     "shift": int(r.get("shift", 0))})
        if 1 <= length <= unit.max_len:
            s = (np.asarray(r["scores"]).astype(np.int64) & 0xFFFFFFFF).tolist()
            nb = -(-length // lanes)
            s += [0] * (nb * lanes - length)
            beats += [s[i * lanes:(i + 1) * lanes] for i in range(nb)]
            n_out += nb
            lengths.append(length)
    out, errors, result = [], [], {}

    async def drive(ctx, stream, payloads):
        for p in payloads:
            while stall and rand.random() < stall:
                ctx.set(stream.valid, 0)
                await ctx.tick()
            ctx.set(stream.valid, 1)
            ctx.set(stream.payload, p)
            await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)

    async def cmd_tb(ctx):
        await drive(ctx, unit.cmd, cmds)

    async def in_tb(ctx):
        await drive(ctx, unit.i, beats)

    async def out_tb(ctx):
        cycles = 0
        while len(out) < n_out:
            ready = not (backpressure and rand.random() < backpressure)
            ctx.set(unit.o.ready, int(ready))
            _, _, valid, payload, err = await ctx.tick().sample(unit.o.valid, unit.o.payload, unit.error)
            if ready and valid:
                out.append(([int(payload.data[j]) for j in range(lanes)], int(payload.last)))
            if err:
                errors.append(cycles)
            cycles += 1
            assert cycles < max_cycles, "timeout: the unit hangs"
        for _ in range(20):
            _, _, valid, err = await ctx.tick().sample(unit.o.valid, unit.error)
            assert not valid, "an output beat beyond the expected count"
            if err:
                errors.append(cycles)
        result["counters"] = {name: int(ctx.get(getattr(unit.counters, name))) for name in COUNTERS}

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(cmd_tb, background=True)
    sim.add_testbench(in_tb, background=True)
    sim.add_testbench(out_tb)
    sim.run()
    flat = [v for beat, _ in out for v in beat]
    outputs, pos = [], 0
    for length in lengths:
        nb = -(-length // lanes)
        outputs.append(np.array(flat[pos * lanes:pos * lanes + length], dtype=np.uint16))
        assert not any(flat[pos * lanes + length:(pos + nb) * lanes]), "lanes past the row's end"
        assert [last for _, last in out[pos:pos + nb]] == [0] * (nb - 1) + [1]
        pos += nb
    return outputs, result["counters"], errors


def _rows(rng, lengths):
    rows = []
    for i, length in enumerate(lengths):
        if i % 2 == 0:
            s = rng.integers(-(1 << 20), 1 << 20, length).astype(np.int32)
            m, sh = golden.softmax_scale_int8(float(rng.uniform(1e-6, 2e-5)))
            rows.append({"scores": s, "dtype": "int8", "scale": m, "shift": sh,
                         "valid_len": int(rng.integers(0, length + 1)), "causal_pos": int(rng.integers(0, length))})
        else:
            s = rng.normal(0, 4, length).astype(np.float32).view(np.uint32)
            c = golden.softmax_scale_bf16(float(rng.uniform(0.2, 2)))
            rows.append({"scores": s, "dtype": "bf16", "scale": int(c.view(np.uint32)),
                         "valid_len": int(rng.integers(1, length + 1))})
    return rows


@pytest.mark.parametrize("stalls", [(0.0, 0.0), (0.3, 0.4)], ids=["no_stalls", "stalls"])
def test_rows_of_both_paths_match_golden_in_amaranth_sim(stalls):
    print(f"seed {SEED}")
    rng = np.random.default_rng(SEED)
    unit = SoftmaxUnit(lanes=2, max_len=8)
    rows = _rows(rng, [1, 2, 3, 8, 5, 8, 1, 7])
    outputs, counters, errors = _simulate(unit, rows, stall=stalls[0], backpressure=stalls[1])
    for i, (got, want) in enumerate(zip(outputs, expected_rows(rows), strict=True)):
        assert np.array_equal(got, want), f"row {i}"
    assert counters["rows_done"] == counters["rows_accepted"] == len(rows) and not errors


def test_a_bad_length_command_pulses_error_and_is_dropped():
    rng = np.random.default_rng(SEED + 1)
    unit = SoftmaxUnit(lanes=4, max_len=8)
    good = _rows(rng, [3, 8])
    rows = [good[0], {"length": 9, "dtype": "int8"}, {"length": 0, "dtype": "bf16"}, good[1]]
    outputs, counters, errors = _simulate(unit, rows)
    assert all(np.array_equal(g, w) for g, w in zip(outputs, expected_rows(good), strict=True))
    assert counters["rows_rejected"] == 2 and counters["rows_accepted"] == 2 and len(errors) == 2


def test_from_config_and_properties():
    cfg = get_config("default")
    unit = SoftmaxUnit.from_config(cfg)
    assert (unit.lanes, unit.max_len, unit.throughput) == (cfg.softmax.lanes, cfg.softmax.max_len,
                                                           cfg.softmax.lanes)
    assert unit.row_latency(64) == 3 * 16 + unit.latency
    assert top_class("softmax_unit") is SoftmaxUnit
    with pytest.raises(TypeError, match="config must be a ChipConfig"):
        SoftmaxUnit.from_config("tiny")


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(lanes=3, max_len=64), ValueError, "lanes must be a power of two in 1..64"),
    (dict(lanes=128, max_len=256), ValueError, "lanes must be a power of two in 1..64"),
    (dict(lanes=4, max_len=2), ValueError, r"max_len \(2\) must be ≥ lanes \(4\)"),
    (dict(lanes=4, max_len=1 << 17), ValueError, "max_len must be a power of two in 1..65536"),
    (dict(lanes=4.0, max_len=64), TypeError, "lanes must be an int"),
    (dict(lanes=True, max_len=64), TypeError, "lanes must be an int"),
])
def test_illegal_parameters_raise_naming_the_parameter(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        SoftmaxUnit(**kwargs)
