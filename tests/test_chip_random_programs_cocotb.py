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
More seeds: ``python -m sim.chip_random --seeds 100`` (docs/chip.md)."""

import os

import pytest

from golden.chip import races
from sim.chip_api import ChipSim
from sim.chip_random import RandomPrograms
from spec.codes import ChipError

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
