"""Simulation flow: Amaranth → Verilog → Verilator → cocotb, and Python APIs that run one
operation on the Verilated RTL (``sim.run_matmul``, ``sim.run_softmax``, ``sim.run_kvcache``,
``sim.run_spad``, ``sim.run_vector``), each returning a :class:`sim.SimResult`."""
from .kvcache_api import run_kvcache  # noqa: F401
from .matmul_api import run_matmul  # noqa: F401
from .result import SimResult  # noqa: F401
from .softmax_api import run_softmax  # noqa: F401
from .spad_api import run_spad  # noqa: F401
from .vector_api import run_vector  # noqa: F401
