"""The arithmetic units in Verilator through cocotb, bit-exact against golden/.

* Bulk tests (one Verilator build of sim.tb.arith.bulk_verilog, the four cores as Amaranth
  generates them): per unit, 1,000,000 biased random vectors, and every special-value class
  (sim.tb.arith.special_vectors) with random ``en`` gaps.
* Stream tests (one build holding the four real stream tops of hdl/tops.py, config default):
  special and random vectors through each stream unit with and without random valid gaps and
  ready backpressure; both runs must equal golden (and so each other).

Seeds are fixed, printed, and can be changed with TFA_ARITH_SEED to explore more vectors.
"""

import os

import numpy as np
import pytest

from sim.runner import build, run
from sim.streams import run_streams
from sim.tb.arith import (
    UNITS,
    bulk_build_params,
    bulk_verilog,
    core_latency,
    expected,
    pack_inputs,
    random_vectors,
    special_vectors,
    streams_build_params,
    streams_top,
)

SEED = int(os.environ.get("TFA_ARITH_SEED", "20260126"))
RANDOM_VECTORS = 1_000_000

def _bulk_design():
    return build(bulk_verilog, "arith_bulk", params=bulk_build_params())


def _check(unit, v, got, seed):
    want = expected(unit, v).astype(np.uint64)
    got = np.asarray(got).astype(np.uint64)
    assert got.shape == want.shape, f"{unit}: {got.size} results for {want.size} vectors"
    bad = np.flatnonzero(got != want)
    if bad.size:
        lines = []
        for k in bad[:8]:
            operands = ", ".join(f"{name}=0x{int(v[name][k]):X}" for name in UNITS[unit][2])
            lines.append(f"  {operands}: got 0x{int(got[k]):X}, want 0x{int(want[k]):X}")
        pytest.fail(f"{unit}: {bad.size} of {got.size} results wrong (seed {seed}):\n" + "\n".join(lines))


def _bulk(unit, v, *, gap, seed):
    words = pack_inputs(unit, v)
    return run(_bulk_design(), "sim.tb.arith", testcase="bulk_vectors",
               data={"inputs": words, "unit": unit, "gap": gap, "seed": seed})


@pytest.mark.xdist_group("arith_bulk")
@pytest.mark.parametrize("unit", list(UNITS))
def test_core_matches_golden_on_a_million_biased_random_vectors(unit):
    seed = SEED + list(UNITS).index(unit)
    print(f"{unit}: seed {seed} (TFA_ARITH_SEED={SEED})")
    v = random_vectors(unit, RANDOM_VECTORS, seed)
    out = _bulk(unit, v, gap=0, seed=seed)
    _check(unit, v, out["y"], seed)
    # one vector per cycle: the whole run takes the vectors plus the pipeline latency
    assert int(out["cycles"]) <= RANDOM_VECTORS + core_latency(unit) + 2


@pytest.mark.xdist_group("arith_bulk")
@pytest.mark.parametrize("unit", list(UNITS))
def test_core_matches_golden_on_every_special_value_class_with_en_gaps(unit):
    seed = SEED + 100 + list(UNITS).index(unit)
    print(f"{unit}: en-gap seed {seed}")
    v = special_vectors(unit)
    out = _bulk(unit, v, gap=5, seed=seed)
    _check(unit, v, out["y"], seed)
    # en was low in some cycles, so the run took longer than one vector per cycle
    assert int(out["cycles"]) > v[next(iter(v))].size + core_latency(unit)


def _stream_vectors(unit, seed):
    sp = special_vectors(unit)
    rng = np.random.default_rng(seed)
    total = sp[next(iter(sp))].size
    idx = np.sort(rng.choice(total, size=min(1000, total), replace=False))
    rv = random_vectors(unit, 1500, seed)
    return {k: np.concatenate([sp[k][idx], rv[k]]) for k in sp}


@pytest.mark.xdist_group("arith_streams")
@pytest.mark.parametrize("unit", list(UNITS))
def test_stream_unit_matches_golden_with_and_without_valid_gaps_and_backpressure(unit):
    seed = SEED + 200 + list(UNITS).index(unit)
    print(f"{unit}: stream seed {seed}")
    # the four real stream tops (config default) side by side in one build
    design = build(streams_top, "arith_streams", params=streams_build_params())
    v = _stream_vectors(unit, seed)
    words = pack_inputs(unit, v)
    results = []
    for stall, backpressure in ((0.0, 0.0), (0.4, 0.5)):
        # every beat sent comes out once: the sink stays ready for 32 cycles after the last one
        out = run_streams(design, sources={f"{unit}__i": words}, sinks={f"{unit}__o": len(words)},
                          stall=stall, backpressure=backpressure, seed=seed, timeout_cycles=1000)
        _check(unit, v, out.beats[f"{unit}__o"], seed)
        results.append(out.beats[f"{unit}__o"])
    assert results[0] == results[1]
