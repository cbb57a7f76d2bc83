"""Chip configuration: one frozen :class:`ChipConfig` made of per-block configs, and its presets.

Every block reads its parameters from its own part of a :class:`ChipConfig`:

=============  =====================  ==========================================================
part           class                  block
=============  =====================  ==========================================================
``array``      :class:`ArrayConfig`   systolic array and matmul engine (hdl/matmul.py)
``softmax``    :class:`SoftmaxConfig` softmax unit (hdl/softmax.py)
``kvcache``    :class:`KVCacheConfig` paged KV-cache controller (hdl/kvcache.py)
``vector``     :class:`VectorConfig`  vector unit (hdl/vector.py)
``memory``     :class:`MemoryConfig`  scratchpads, DMA and the AXI ports of the chip
=============  =====================  ==========================================================

Presets (:data:`PRESETS`):

``tiny``
    Small enough that a Verilator build and a unit test take seconds. Used by unit tests.
``default``
    The FPGA prototyping configuration (an 8×8 array), used by ``make sim`` and integration tests.
``large``
    An ASIC study configuration (a 16×16 array, more lanes, a bigger KV cache).
``fpga``
    The whole chip on one Lattice ECP5 LFE5U-85F (83,640 LUT4, 208 DP16KD block RAMs of 18 kbit,
    156 18×18 multipliers; ``make fpga TOP=chip CONFIG=fpga``): a 2×2 array, 2 scratchpad lanes,
    a 64-bit AXI master. Synthesized inside its board wrapper (yosys ``synth_ecp5``, docs/chip.md
    "FPGA") it takes 35,106 LUT4 and 7,237 carry cells (71 % of the logic cells after packing),
    31,853 flip-flops, 76 multipliers and 175 DP16KD, and places and routes at 31.3 MHz (the
    median of 3 seeds; the vector unit's fp32 row-sum loop is the critical path). A 4×4 array with
    4 lanes does not fit: 61,315 LUT4 and 13,780 carry cells (about 89k LUT sites) and 212
    DP16KD with these memories. It keeps a SmolLM2-135M layer's shapes: a KV cache of 3 heads × 64 (int8),
    16 pages of 16 = 256 positions of one layer (96 KiB, 48 DP16KD), for up to 4 sequences;
    vector rows up to 1536 (d_ff; d_model + 2·kv_dim = 960 too), RMSNorm's reciprocal square
    root sequential (``rsqrt_steps=2``); softmax rows of 256 keys (the whole cache); a
    scratchpad of 2 banks × 8192 words × 2 lanes (32768 elements, 64 DP16KD; two banks rather
    than four halve its crossbar), which holds a step of up to 3 token rows in int8 mode and 4
    in bf16 mode (prefill in chunks of 3, decode batches of up to 3; the compiler's
    CompileError says when a step does not fit). A bf16 KV cache (``kvcache.dtype``) doubles
    the cache's block RAMs (212 in all: it does not fit).

A bad value raises ``TypeError``/``ValueError`` naming the parameter as ``part.field`` and its
allowed range, e.g. ``array.rows must be in 2..64, not 1``.
"""

from dataclasses import asdict, dataclass, fields, replace

from .dsp import check_dsp

__all__ = ["ArrayConfig", "SoftmaxConfig", "KVCacheConfig", "VectorConfig", "MemoryConfig",
           "ChipConfig", "PRESETS", "get_config"]


def _is_pow2(x):
    return x >= 1 and (x & (x - 1)) == 0


class _Part:
    """Shared validation and copying of one part of the configuration."""

    _prefix = ""

    def _name(self, field):
        return f"{self._prefix}.{field}" if self._prefix else field

    def _int(self, field, lo, hi, *, pow2=False):
        value = getattr(self, field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{self._name(field)} must be an int, not {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{self._name(field)} must be in {lo}..{hi}, not {value}")
        if pow2 and not _is_pow2(value):
            raise ValueError(f"{self._name(field)} must be a power of two, not {value}")

    def _choice(self, field, choices):
        value = getattr(self, field)
        if value not in choices:
            raise ValueError(f"{self._name(field)} must be one of {', '.join(map(repr, choices))}, "
                             f"not {value!r}")

    def replace(self, **changes):
        """A copy with some parameters changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            names = ", ".join(self._name(n) for n in sorted(unknown))
            raise TypeError(f"unknown configuration parameter(s): {names}")
        return replace(self, **changes)

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class ArrayConfig(_Part):
    """The systolic array and matmul engine.

    Parameters
    ----------
    rows, cols : int
        Array size R×C (R along the reduction dimension K, C along N). 2..64 each.
    dsp : str
        How multipliers are built: ``"generic"`` (plain HDL, any tool; simulation and ``make
        verilog``) or ``"ecp5"`` (Lattice ECP5 DSP blocks with their internal registers; ``make
        fpga``, ``make verilog DSP=ecp5``). See :mod:`hdl.dsp`.
    """

    _prefix = "array"
    rows: int = 8
    cols: int = 8
    dsp: str = "generic"

    def __post_init__(self):
        self._int("rows", 2, 64)
        self._int("cols", 2, 64)
        try:
            check_dsp(self.dsp)
        except ValueError as exc:
            raise ValueError(f"array.{exc}") from None


@dataclass(frozen=True)
class SoftmaxConfig(_Part):
    """The softmax unit.

    Parameters
    ----------
    lanes : int
        Elements per cycle P. Power of two, 1..64.
    max_len : int
        Longest row L_max. Power of two, ≥ lanes, ≤ 65536.
    """

    _prefix = "softmax"
    lanes: int = 4
    max_len: int = 4096

    def __post_init__(self):
        self._int("lanes", 1, 64, pow2=True)
        self._int("max_len", 1, 1 << 16, pow2=True)
        if self.max_len < self.lanes:
            raise ValueError(f"softmax.max_len ({self.max_len}) must be ≥ softmax.lanes ({self.lanes})")


@dataclass(frozen=True)
class KVCacheConfig(_Part):
    """The paged KV-cache controller.

    Parameters
    ----------
    page_size : int
        Tokens per page. Power of two, 1..256.
    pages : int
        Pages in the pool. 2..65536.
    heads : int
        KV heads per token. 1..64.
    head_dim : int
        Elements per head row. 1..1024.
    max_seqs : int
        Sequences tracked at once. 1..1024.
    beat_elems : int
        Elements per read/append beat (the default sets it to the matmul weight loader's width,
        ``array.cols``). Must divide head_dim.
    dtype : str
        ``"int8"`` or ``"bf16"``.
    """

    _prefix = "kvcache"
    page_size: int = 16
    pages: int = 256
    heads: int = 3
    head_dim: int = 64
    max_seqs: int = 16
    beat_elems: int = 8
    dtype: str = "int8"

    def __post_init__(self):
        self._int("page_size", 1, 256, pow2=True)
        self._int("pages", 2, 65536)
        self._int("heads", 1, 64)
        self._int("head_dim", 1, 1024)
        self._int("max_seqs", 1, 1024)
        self._int("beat_elems", 1, 1024)
        if self.head_dim % self.beat_elems:
            raise ValueError(f"kvcache.beat_elems ({self.beat_elems}) must divide kvcache.head_dim "
                             f"({self.head_dim})")
        self._choice("dtype", ("int8", "bf16"))

    @property
    def max_tokens(self):
        """Tokens the pool holds: pages · page_size."""
        return self.pages * self.page_size


@dataclass(frozen=True)
class VectorConfig(_Part):
    """The vector unit (RMSNorm, RoPE, SiLU·up, residual add, the int8 conversions).

    Parameters
    ----------
    lanes : int
        Elements per cycle V. Power of two, 1..64.
    max_len : int
        Longest row (elements) of any vector command; the row buffer of RMSNorm and per-token
        quantization holds 4·lanes rows of it. 1..65536.
    rsqrt_steps : int
        RMSNorm's reciprocal square root (one per row): 0 for the pipelined core (one row per
        cycle, 34 register stages); 1..8 for a sequential core doing that many of its 64 steps
        per cycle, one row at a time (2 + ⌈25/k⌉ + ⌈39/k⌉ cycles), in a fraction of the area —
        fast enough while a group of ``lanes`` rows of D elements takes D cycles to sum
        (docs/vector.md "Row engine").
    """

    _prefix = "vector"
    lanes: int = 8
    max_len: int = 1536
    rsqrt_steps: int = 0

    def __post_init__(self):
        self._int("lanes", 1, 64, pow2=True)
        self._int("max_len", 1, 1 << 16)
        self._int("rsqrt_steps", 0, 8)


@dataclass(frozen=True)
class MemoryConfig(_Part):
    """On-chip scratchpads and the chip's AXI ports.

    Parameters
    ----------
    spad_lanes : int
        32-bit elements per scratchpad word (every element, int8 to fp32, takes one 32-bit
        lane). Power of two, 1..64.
    spad_words : int
        Words per scratchpad bank. Power of two, 16..2**20.
    spad_banks : int
        Scratchpad banks; each has one read and one write port. 1..16.
    axi_data_bits : int
        Data width of the AXI4 master (external memory): 32, 64, 128, 256 or 512.
    axi_addr_bits : int
        Address width of the AXI4 master. 16..64.
    """

    _prefix = "memory"
    spad_lanes: int = 8
    spad_words: int = 8192
    spad_banks: int = 4
    axi_data_bits: int = 128
    axi_addr_bits: int = 32

    def __post_init__(self):
        self._int("spad_lanes", 1, 64, pow2=True)
        self._int("spad_words", 16, 1 << 20, pow2=True)
        self._int("spad_banks", 1, 16)
        self._choice("axi_data_bits", (32, 64, 128, 256, 512))
        self._int("axi_addr_bits", 16, 64)


_PARTS = {"array": ArrayConfig, "softmax": SoftmaxConfig, "kvcache": KVCacheConfig,
          "vector": VectorConfig, "memory": MemoryConfig}


@dataclass(frozen=True)
class ChipConfig:
    """The whole chip: a name (used for build folders) and one config per block.

    ``ChipConfig(name=..., array=ArrayConfig(...), ...)``; parts left out take their defaults.
    :meth:`replace` takes a part as a config object or as a dict of the fields to change::

        get_config("tiny").replace(name="tiny_bf16", kvcache={"dtype": "bf16"})
    """

    name: str = "default"
    array: ArrayConfig = ArrayConfig()
    softmax: SoftmaxConfig = SoftmaxConfig()
    kvcache: KVCacheConfig = KVCacheConfig()
    vector: VectorConfig = VectorConfig()
    memory: MemoryConfig = MemoryConfig()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, not {self.name!r}")
        for part, cls in _PARTS.items():
            value = getattr(self, part)
            if isinstance(value, dict):
                object.__setattr__(self, part, cls().replace(**value))
            elif not isinstance(value, cls):
                raise TypeError(f"{part} must be a {cls.__name__} or a dict, not {type(value).__name__}")

    def replace(self, **changes):
        """A copy with some parameters changed (validated again); a part given as a dict
        changes only the fields it names."""
        unknown = set(changes) - {"name", *_PARTS}
        if unknown:
            raise TypeError(f"unknown configuration part(s): {', '.join(sorted(unknown))} "
                            f"(parts: name, {', '.join(_PARTS)})")
        for part, value in changes.items():
            if part != "name" and isinstance(value, dict):
                changes[part] = getattr(self, part).replace(**value)
        return replace(self, **changes)

    def to_dict(self):
        return {"name": self.name, **{part: getattr(self, part).to_dict() for part in _PARTS}}

    @classmethod
    def from_dict(cls, d):
        """The inverse of :meth:`to_dict`."""
        d = dict(d)
        return cls(name=d.pop("name", "default"), **{k: _PARTS[k](**v) if k in _PARTS else v
                                                     for k, v in d.items()})


PRESETS = {
    "tiny": ChipConfig(
        name="tiny",
        array=ArrayConfig(rows=2, cols=2),
        softmax=SoftmaxConfig(lanes=2, max_len=64),
        kvcache=KVCacheConfig(page_size=4, pages=16, heads=2, head_dim=16, max_seqs=4, beat_elems=2),
        vector=VectorConfig(lanes=2, max_len=128),
        memory=MemoryConfig(spad_lanes=2, spad_words=2048, spad_banks=4, axi_data_bits=32)),
    "default": ChipConfig(),
    "large": ChipConfig(
        name="large",
        array=ArrayConfig(rows=16, cols=16),
        softmax=SoftmaxConfig(lanes=16, max_len=8192),
        kvcache=KVCacheConfig(page_size=16, pages=1024, heads=8, head_dim=128, max_seqs=32, beat_elems=16),
        vector=VectorConfig(lanes=16, max_len=11008),
        memory=MemoryConfig(spad_lanes=16, spad_words=32768, spad_banks=8, axi_data_bits=256)),
    "fpga": ChipConfig(
        name="fpga",
        array=ArrayConfig(rows=2, cols=2),
        softmax=SoftmaxConfig(lanes=2, max_len=256),
        kvcache=KVCacheConfig(page_size=16, pages=16, heads=3, head_dim=64, max_seqs=4, beat_elems=2),
        vector=VectorConfig(lanes=2, max_len=1536, rsqrt_steps=2),
        memory=MemoryConfig(spad_lanes=2, spad_words=8192, spad_banks=2, axi_data_bits=64)),
}


def get_config(name):
    """The preset called ``name`` (a :class:`ChipConfig` passes through); raises ``ValueError``
    naming the known presets."""
    if isinstance(name, ChipConfig):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown CONFIG {name!r}: choose one of {', '.join(PRESETS)}") from None
