"""Reference models of the scratchpad and its movers (docs/scratchpad.md): the walk of a
descriptor and the memory as a numpy array.

A descriptor is ``base`` plus three nested loops (innermost ``count0``), each with an unsigned
stride in words: ``addr = base + i2·stride2 + i1·stride1 + i0·stride0``. A count of 0 makes the
walk empty. Addresses at or past ``2**addr_width`` are given as ``2**addr_width − 1`` (the
hardware's running sums saturate instead of wrapping); the scratchpad reads zeros there and
drops writes, like at every address past its last bank.
"""

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Descriptor", "walk", "ScratchpadModel", "address_width"]


def address_width(*, words, banks):
    """Bits of a global word address: log2(words) + ceil(log2(banks)) + 1 guard bit."""
    return (words - 1).bit_length() + (banks - 1).bit_length() + 1


@dataclass(frozen=True)
class Descriptor:
    """A walk: ``base``, ``count0..2`` (≥ 0; 0 = empty), ``stride0..2`` (≥ 0, words)."""
    base: int
    count0: int = 1
    count1: int = 1
    count2: int = 1
    stride0: int = 1
    stride1: int = 0
    stride2: int = 0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Descriptor.{name} must be an int ≥ 0, not {value!r}")

    @property
    def size(self):
        """Addresses of the walk."""
        return self.count0 * self.count1 * self.count2

    def to_dict(self):
        return {k: int(v) for k, v in asdict(self).items()}


def _as_descriptor(desc):
    return desc if isinstance(desc, Descriptor) else Descriptor(**desc)


def walk(desc, *, addr_width=None):
    """``(addr, last0, last1, last)``: the walk's addresses (int64, in order, saturated at
    ``2**addr_width − 1`` when ``addr_width`` is given) and its loop-end flags (bool)."""
    d = _as_descriptor(desc)
    i2, i1, i0 = np.meshgrid(np.arange(d.count2, dtype=np.int64), np.arange(d.count1, dtype=np.int64),
                             np.arange(d.count0, dtype=np.int64), indexing="ij")
    addr = d.base + i2 * d.stride2 + i1 * d.stride1 + i0 * d.stride0
    if addr_width is not None:
        addr = np.minimum(addr, (1 << addr_width) - 1)
    last0 = i0 == d.count0 - 1
    last1 = last0 & (i1 == d.count1 - 1)
    last = last1 & (i2 == d.count2 - 1)
    return addr.ravel(), last0.ravel(), last1.ravel(), last.ravel()


class ScratchpadModel:
    """The scratchpad's contents: ``banks · words`` words of ``lanes`` uint32 lanes, 0 at
    first. Writes past the end are dropped and reads there give zeros, as in the hardware;
    a word's lanes are written where the mask bit is 1."""

    def __init__(self, *, lanes, words, banks):
        self.lanes, self.words, self.banks = lanes, words, banks
        self.addr_width = address_width(words=words, banks=banks)
        self.mem = np.zeros((banks * words, lanes), np.uint32)

    @property
    def capacity(self):
        return self.banks * self.words

    def write(self, addr, data, mask=None):
        """Write words in order (a later write of an address wins): ``addr`` [n], ``data``
        [n, lanes], ``mask`` [n] lane-enable bits (default: all lanes)."""
        addr = np.atleast_1d(np.asarray(addr, np.int64))
        data = np.asarray(data, np.uint32).reshape(len(addr), self.lanes)
        mask = np.full(len(addr), (1 << self.lanes) - 1) if mask is None else np.atleast_1d(mask)
        for a, word, m in zip(addr, data, mask, strict=True):
            if a < self.capacity:
                lanes = (int(m) >> np.arange(self.lanes)) & 1 == 1
                self.mem[a, lanes] = word[lanes]

    def read(self, addr):
        """The words at ``addr`` [n] as [n, lanes] (zeros past the end)."""
        addr = np.atleast_1d(np.asarray(addr, np.int64))
        out = np.zeros((len(addr), self.lanes), np.uint32)
        ok = addr < self.capacity
        out[ok] = self.mem[addr[ok]]
        return out

    def write_walk(self, desc, data, mask=None):
        """Write ``data`` (one word per address of the walk) along ``desc``."""
        self.write(walk(desc, addr_width=self.addr_width)[0], data, mask)

    def read_walk(self, desc):
        """The words along ``desc``, [size, lanes]."""
        return self.read(walk(desc, addr_width=self.addr_width)[0])
