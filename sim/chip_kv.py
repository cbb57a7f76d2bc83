"""The chip's KV cache seen from a testbench: :class:`KVTraceChip` and the decoding of its traces.

``ChipSim(config, kv_trace=True)`` simulates :class:`KVTraceChip`: the chip (hdl/chip.py)
unchanged, with two more outputs that the testbench (sim/tb/chip.py) records in every cycle
their ``valid`` is 1:

* ``kv_resp``: every response the KV-cache controller gives (to the KV unit and to the matmul
  unit): ``status``, ``op``, ``length``, ``pages``, ``free_pages`` — the STATUS of the
  addressed sequence after each command;
* ``kv_write``: every write of the K/V data memory: word address and data.

:func:`kv_trace` decodes them; :func:`kv_memory_words` gives the memory words a
:class:`golden.PagedKVCache` holds, in the controller's layout (hdl/kvcache.py), so a test
compares the chip's cache with golden's word for word.
"""

import numpy as np
from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from golden.kvcache import KVResponse

from .packing import unpack_fields

__all__ = ["KVTraceChip", "TRACES", "kv_trace", "kv_memory_words", "kv_word_address"]

#: The trace outputs of :class:`KVTraceChip`, in the testbench's order.
TRACES = ("kv_resp", "kv_write")


def _trace_signature(width):
    return wiring.Signature({"valid": Out(1), "data": Out(width)})


class KVTraceChip(wiring.Component):
    """``chip`` (an :class:`hdl.chip.Chip`) with the trace outputs ``kv_resp`` and ``kv_write``
    (each ``valid``, ``data``; see the module docstring). Every port of the chip is kept under
    its name."""

    def __init__(self, chip):
        self._chip = chip
        cache = chip.kv_exec.cache
        self._resp_bits = cache.resp_layout.size
        self._addr_bits = cache.mem_addr_bits
        self._data_bits = cache.mem_signature.data_width
        members = dict(chip.signature.members)
        members["kv_resp"] = Out(_trace_signature(self._resp_bits))
        members["kv_write"] = Out(_trace_signature(self._addr_bits + self._data_bits))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.chip = chip = self._chip
        outer = {path: value for path, _, value in self.signature.flatten(self)}
        for path, member, value in chip.signature.flatten(chip):
            if member.flow == wiring.In:
                m.d.comb += value.eq(outer[path])
            else:
                m.d.comb += outer[path].eq(value)
        cache = chip.kv_exec.cache
        m.d.comb += [self.kv_resp.valid.eq(cache.resp.valid & cache.resp.ready),
                     self.kv_resp.data.eq(cache.resp.payload),
                     self.kv_write.valid.eq(cache.mem.wen),
                     self.kv_write.data.eq(Cat(cache.mem.waddr, cache.mem.wdata))]
        return m


def _ints(rows):
    """[n, nbytes] uint8 (little-endian) → list of Python ints."""
    return [int.from_bytes(bytes(r), "little") for r in np.asarray(rows, np.uint8)]


def kv_trace(result, config, run=None):
    """The traces of a ``ChipSim(config, kv_trace=True).run`` result: ``(responses, writes)``.

    ``responses``: list of ``golden.KVResponse`` (ints) in the order the controller gave them;
    ``writes``: list of ``(word address, data int)``. ``run``: only that program's (index in
    the ``programs`` list; ``None``: all, in order)."""
    from hdl.kvcache import KVCacheParams
    p = KVCacheParams.from_config(config)
    out = result.outputs
    keep = {}
    for name in TRACES:
        runs = out.get(f"trace_{name}_run", np.zeros(0, np.int64))
        keep[name] = np.ones(len(runs), bool) if run is None else runs == run
    resp_words = [w for w, k in zip(_ints(out.get("trace_kv_resp_data", np.zeros((0, 1)))), keep["kv_resp"],
                                    strict=True) if k]
    fields = unpack_fields(p.resp_layout, resp_words) if resp_words else {n: [] for n in KVResponse._fields}
    responses = [KVResponse(*(int(fields[n][i]) for n in KVResponse._fields)) for i in range(len(resp_words))]
    aw = p.mem_addr_bits
    writes = [(w & ((1 << aw) - 1), w >> aw)
              for w, k in zip(_ints(out.get("trace_kv_write_data", np.zeros((0, 1)))), keep["kv_write"], strict=True)
              if k]
    return responses, writes


def kv_word_address(params, kv, page, row, head, beat):
    """The K/V data memory word of (``kv`` 0 for K / 1 for V, physical ``page``, ``row`` in the
    page, ``head``, ``beat`` of the row) in the controller's layout."""
    hb = params.kv_heads * params.beats_per_row
    return ((kv * params.num_pages + page) * params.page_size + row) * hb + head * params.beats_per_row + beat


def kv_memory_words(cache, params, rows):
    """{word address: data int} of the K/V memory words that hold ``rows`` (an iterable of
    (physical page, row) pairs) of the :class:`golden.PagedKVCache` ``cache``, both K and V,
    packed as the controller writes them (element i of a beat in bits ``[i·w, (i+1)·w)``)."""
    words = {}
    w = params.elem_bits
    raw = np.uint8 if w == 8 else np.uint16
    for page, row in rows:
        for kv, kind in enumerate("kv"):
            data = cache.physical_rows(kind, page)[row].view(raw)          # [heads, head_dim]
            for head in range(params.kv_heads):
                for beat in range(params.beats_per_row):
                    elems = data[head, beat * params.beat_elems:(beat + 1) * params.beat_elems]
                    words[kv_word_address(params, kv, page, row, head, beat)] = sum(
                        int(e) << (w * i) for i, e in enumerate(elems))
    return words
