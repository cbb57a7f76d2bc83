"""The CSR bank in Verilator behind cocotbext-axi's AxiLiteMaster (sim/tb/csr.py): concurrent
reads and writes of every access kind, with and without random valid gaps and backpressure on
all five AXI4-Lite channels."""

import os
import random

import pytest

from sim.runner import run
from sim.tb.csr_top import csr_design


def new_seed():
    """A random seed, or ``TFA_DMA_SEED`` to repeat a run; printed."""
    seed = int(os.environ.get("TFA_DMA_SEED") or random.randrange(1 << 30))
    print("seed", seed, "(repeat with TFA_DMA_SEED)")
    return seed


@pytest.mark.cocotb
@pytest.mark.xdist_group("csr")
@pytest.mark.parametrize("stall, backpressure", [(0.0, 0.0), (0.4, 0.5)])
def test_concurrent_reads_and_writes_of_every_access_kind_through_axi_lite(stall, backpressure):
    seed = new_seed()
    run(csr_design(), "sim.tb.csr", testcase="csr_concurrent",
        data={"seed": seed, "stall": stall, "backpressure": backpressure, "n": 60})
