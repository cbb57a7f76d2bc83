"""The top-level designs that `make verilog`, `make lint` and `make fpga` know.

Each entry names a module and a class with a ``from_config(config)`` classmethod; the module is
imported only when the design is asked for.
"""

import importlib

from .config import get_config

__all__ = ["TOPS", "elaborate_top"]

#: name → (module, class). The name is also the Verilog module name.
TOPS = {
    "int8_mac": ("hdl.arith", "Int8Mac"),
    "bf16_mul": ("hdl.arith", "Bf16Multiplier"),
    "fp32_add": ("hdl.arith", "Fp32Adder"),
    "fp32_to_bf16": ("hdl.arith", "Fp32ToBf16"),
    "matmul_engine": ("hdl.matmul", "MatmulEngine"),
    "softmax_unit": ("hdl.softmax", "SoftmaxUnit"),
    "kv_cache": ("hdl.kvcache", "KVCacheController"),
    "kv_exec": ("hdl.exec_kv", "KVExec"),
    "scratchpad": ("hdl.scratchpad", "Scratchpad"),
    "spad_reader": ("hdl.agu", "SpadReader"),
    "spad_writer": ("hdl.agu", "SpadWriter"),
    "axi_read_engine": ("hdl.dma", "AxiReadEngine"),
    "axi_write_engine": ("hdl.dma", "AxiWriteEngine"),
    "load_unit": ("hdl.loadstore", "LoadUnit"),
    "store_unit": ("hdl.loadstore", "StoreUnit"),
    "csr_bank": ("hdl.csr", "CsrBank"),
    "vector_unit": ("hdl.vector", "VectorUnit"),
    "chip": ("hdl.chip", "Chip"),
}


def top_class(name):
    try:
        module, cls = TOPS[name]
    except KeyError:
        raise ValueError(f"unknown top {name!r}: choose one of {', '.join(TOPS)}") from None
    return getattr(importlib.import_module(module), cls)


def elaborate_top(name, config):
    """The component ``name`` built for ``config`` (a preset name or a ChipConfig)."""
    return top_class(name).from_config(get_config(config))
