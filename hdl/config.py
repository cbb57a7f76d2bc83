"""Accelerator configuration: one frozen dataclass and its named presets.

Every block reads its parameters from an :class:`AccelConfig`. Presets:

``tiny``
    Small enough that a Verilator build and a unit test take seconds. Used by unit tests.
``default``
    The FPGA prototyping configuration (an 8×8 array), used by ``make sim`` and integration tests.
``large``
    An ASIC study configuration (a 16×16 array, more lanes, a bigger KV cache).
"""

from dataclasses import asdict, dataclass, fields, replace

from .dsp import check_dsp

__all__ = ["AccelConfig", "PRESETS", "get_config"]


def _is_pow2(x):
    return x >= 1 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class AccelConfig:
    """Parameters of every block.

    Parameters
    ----------
    name : str
        Preset name, used for build folders.
    array_rows, array_cols : int
        Systolic array size R×C (R along the reduction dimension K, C along N). 2..64 each.
    softmax_lanes : int
        Softmax elements per cycle P. Power of two, 1..64.
    softmax_max_len : int
        Longest row L_max the softmax unit accepts. Power of two, ≥ softmax_lanes.
    kv_page_size : int
        Tokens per KV-cache page. Power of two, 1..256.
    kv_pages : int
        Pages in the KV cache. 2..65536.
    kv_heads : int
        KV heads per token. 1..64.
    kv_head_dim : int
        Elements per head row. 1..1024.
    kv_max_seqs : int
        Sequences the KV cache tracks at once. 1..1024.
    kv_beat_elems : int
        Elements per KV read/append beat; the default configuration sets it to the matmul
        weight loader's width (array_cols). Must divide kv_head_dim.
    kv_dtype : str
        ``"int8"`` or ``"bf16"``.
    dsp : str
        How multipliers are built: ``"generic"`` (plain HDL, any tool; simulation and ``make
        verilog``) or ``"ecp5"`` (Lattice ECP5 DSP blocks with their internal registers; ``make
        fpga``, ``make verilog DSP=ecp5``). See :mod:`hdl.dsp`.
    """

    name: str = "default"
    array_rows: int = 8
    array_cols: int = 8
    softmax_lanes: int = 4
    softmax_max_len: int = 4096
    kv_page_size: int = 16
    kv_pages: int = 256
    kv_heads: int = 3
    kv_head_dim: int = 64
    kv_max_seqs: int = 16
    kv_beat_elems: int = 8
    kv_dtype: str = "int8"
    dsp: str = "generic"

    def __post_init__(self):
        def check_range(field, lo, hi):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{field} must be an int, not {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{field} must be in {lo}..{hi}, not {value}")

        check_range("array_rows", 2, 64)
        check_range("array_cols", 2, 64)
        check_range("softmax_lanes", 1, 64)
        check_range("softmax_max_len", 1, 1 << 16)
        check_range("kv_page_size", 1, 256)
        check_range("kv_pages", 2, 65536)
        check_range("kv_heads", 1, 64)
        check_range("kv_head_dim", 1, 1024)
        check_range("kv_max_seqs", 1, 1024)
        check_range("kv_beat_elems", 1, 1024)
        for field in ("softmax_lanes", "softmax_max_len", "kv_page_size"):
            if not _is_pow2(getattr(self, field)):
                raise ValueError(f"{field} must be a power of two, not {getattr(self, field)}")
        if self.softmax_max_len < self.softmax_lanes:
            raise ValueError(
                f"softmax_max_len ({self.softmax_max_len}) must be ≥ softmax_lanes ({self.softmax_lanes})")
        if self.kv_head_dim % self.kv_beat_elems:
            raise ValueError(
                f"kv_beat_elems ({self.kv_beat_elems}) must divide kv_head_dim ({self.kv_head_dim})")
        check_dsp(self.dsp)
        if self.kv_dtype not in ("int8", "bf16"):
            raise ValueError(f"kv_dtype must be 'int8' or 'bf16', not {self.kv_dtype!r}")

    def replace(self, **changes):
        """A copy with some parameters changed (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown configuration parameter(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)

    def to_dict(self):
        return asdict(self)


PRESETS = {
    "tiny": AccelConfig(
        name="tiny", array_rows=2, array_cols=2, softmax_lanes=2, softmax_max_len=64,
        kv_page_size=4, kv_pages=16, kv_heads=2, kv_head_dim=8, kv_max_seqs=4, kv_beat_elems=4),
    "default": AccelConfig(),
    "large": AccelConfig(
        name="large", array_rows=16, array_cols=16, softmax_lanes=16, softmax_max_len=8192,
        kv_page_size=16, kv_pages=1024, kv_heads=8, kv_head_dim=128, kv_max_seqs=32,
        kv_beat_elems=16),
}


def get_config(name):
    """The preset called ``name``; raises ``ValueError`` naming the known presets."""
    if isinstance(name, AccelConfig):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown CONFIG {name!r}: choose one of {', '.join(PRESETS)}") from None
