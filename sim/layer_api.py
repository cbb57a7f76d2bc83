"""A decoder layer on the Verilated chip: :func:`run_layer`.

The layer's image (weights, parameters, tables) and one program per step are laid out in the
external memory of one simulation, the programs run one after the other (the KV cache keeps its
state between them), and every step's output rows are compared with ``golden.DecoderLayer`` run
on the same requests, sequence by sequence.
"""

import copy
from dataclasses import dataclass

import numpy as np

from compiler.layer import CompileError, LayerImage, Request, compile_step
from hdl.config import get_config
from spec import isa

from .chip_api import ChipSim, Program
from .result import SimResult

__all__ = ["run_layer", "LayerRun", "Request", "CompileError", "plan_layer", "chip_for"]

_PROG_BASE = 0x0000_0000
_IMAGE_BASE = 0x0040_0000


@dataclass
class LayerRun:
    """What :func:`plan_layer` lays out: the image, the compiled steps and the memory map."""
    image: LayerImage
    steps: list
    memory: dict
    programs: list
    read_back: list


def plan_layer(layer, steps, *, config="default", max_pos=None):
    """Compile ``steps`` (a list of lists of :class:`Request`) of ``layer`` for ``config``.

    Raises :class:`CompileError` (a ``ValueError``) for anything the configuration cannot hold,
    before anything runs.
    """
    cfg = get_config(config)
    if max_pos is None:
        ends = {}
        for step in steps:
            for r in step:
                ends[r.seq] = max(ends.get(r.seq, 0), r.pos0 + r.x.shape[0])
        max_pos = max(ends.values())
    _check_sequences(steps, cfg)
    image = LayerImage(layer, cfg, base=_IMAGE_BASE, max_pos=max_pos)
    addr = image.end
    prog_addr = _PROG_BASE
    compiled, memory, programs, read_back = [], dict(image.segments), [], []
    d = layer.config.d_model
    bus = cfg.memory.axi_data_bits // 8
    for i, step in enumerate(steps):
        rows = sum(r.x.shape[0] for r in step)
        stride = -(-d * np.dtype(step[0].x.dtype).itemsize // bus) * bus
        x_addr = -(-addr // 64) * 64
        y_addr = -(-(x_addr + rows * stride) // 64) * 64
        addr = y_addr + rows * stride
        s = compile_step(image, step, x_addr=x_addr, y_addr=y_addr, prog_addr=prog_addr)
        if prog_addr + len(s.program_words) * isa.INSTR_BYTES > _IMAGE_BASE:
            raise CompileError("the programs do not fit below the layer image")
        programs.append(Program(s.program_words, addr=prog_addr))
        prog_addr += -(-len(s.program_words) * isa.INSTR_BYTES // 4096) * 4096
        memory.update(s.segments)
        read_back.append((f"y{i}", y_addr, rows * stride))
        compiled.append(s)
    return LayerRun(image=image, steps=compiled, memory=memory, programs=programs, read_back=read_back)


def chip_for(plan, config):
    """A :class:`ChipSim` of ``config`` whose external memory holds ``plan`` (a power of two of
    bytes); call ``.design()`` on it to build the chip before timing a run."""
    end = max(a + len(b) for a, b in plan.memory.items())
    end = max(end, *(a + n for _, a, n in plan.read_back))
    return ChipSim(config, mem_bytes=max(1 << 16, 1 << (end - 1).bit_length()))


def _check_sequences(steps, cfg):
    """The sequences' story across the steps, as the chip's KV cache will see it: a new sequence
    is allocated (``alloc``) before its first tokens, every other request continues a live
    sequence at its length, at most ``kvcache.max_seqs`` are live, and their pages fit."""
    kv = cfg.kvcache
    live = {}
    for i, step in enumerate(steps):
        if not step:
            raise CompileError(f"step {i} has no request")
        seqs = [r.seq for r in step]
        if len(set(seqs)) != len(seqs):
            raise CompileError(f"step {i}: a sequence appears twice in one step")
        for r in step:
            if not isinstance(r, Request):
                raise TypeError(f"step {i}: requests must be Request, not {type(r).__name__}")
            if r.alloc:
                if r.seq in live:
                    raise CompileError(f"step {i}: sequence {r.seq} is allocated again while it is live")
                if r.pos0 != 0:
                    raise CompileError(f"step {i}: new sequence {r.seq} must start at pos0 0, not {r.pos0}")
                live[r.seq] = 0
            elif r.seq not in live:
                raise CompileError(f"step {i}: sequence {r.seq} does not exist (not allocated, or freed)")
            elif r.pos0 != live[r.seq]:
                raise CompileError(f"step {i}: sequence {r.seq} holds {live[r.seq]} tokens, the request "
                                   f"says pos0 {r.pos0}")
        if len(live) > kv.max_seqs:
            raise CompileError(f"step {i}: {len(live)} live sequences, the KV cache tracks {kv.max_seqs} "
                               f"(kvcache.max_seqs)")
        for r in step:
            live[r.seq] += r.x.shape[0]
        pages = sum(-(-n // kv.page_size) for n in live.values())
        if pages > kv.pages:
            raise CompileError(f"step {i}: the live sequences need {pages} KV-cache pages of {kv.page_size} "
                               f"tokens, the cache has {kv.pages}: free a sequence first")
        for r in step:
            if r.free:
                del live[r.seq]


def run_layer(layer, steps, *, config="default", stall=0.0, backpressure=0.0, seed=None, sim=None,
              check=True, progress=None):
    """Run ``steps`` of ``layer`` on the chip.

    Parameters
    ----------
    layer : golden.DecoderLayer
        int8 or bf16 mode; a copy computes the expected rows, so its cache must be able to hold
        the steps' sequences (``max_seqs``, ``max_tokens``); the layer itself is not changed.
    steps : list of list of Request
        Each inner list is one step: the new tokens of one or more sequences, run together.
    config : str or ChipConfig
    stall, backpressure : float
        Random valid gaps / ready held low on every AXI channel of the testbench.
    seed : int or None
    sim : ChipSim or None
        A chip to reuse (its Verilator build); default one for ``config``.
    check : bool
        Compare every output row with golden (``outputs["match"]``: per step, bool per row).
    progress : callable or None
        Receives a line of text about every 10 s while the chip runs (``ChipSim.run``).

    Returns
    -------
    SimResult
        ``outputs``: ``y<i>`` (step i's rows, the layer's io dtype), ``expected<i>`` and
        ``match<i>`` with ``check``, ``run<i>_counters``; ``counters``: the last step's.
    """
    plan = plan_layer(layer, steps, config=config)
    if sim is None:
        sim = chip_for(plan, config)
    # a step that takes 5× the compiler's estimate (and over 2M cycles) is a hang
    timeout = max(2_000_000, 5 * max(st.asm.expected_cycles for st in plan.steps))
    res = sim.run(plan.memory, plan.programs, read_back=plan.read_back, stall=stall, backpressure=backpressure,
                  seed=seed, timeout_cycles=timeout, progress=progress)
    outputs = dict(res.outputs)
    for i, s in enumerate(plan.steps):
        outputs[f"y{i}"] = s.output(res.outputs[f"y{i}"])
        outputs[f"error{i}"] = sim.error_of(res, i)
    if check:
        ref = _golden_outputs(layer, steps)
        for i, want in enumerate(ref):
            got = outputs[f"y{i}"]
            outputs[f"expected{i}"] = want
            outputs[f"match{i}"] = np.array([np.array_equal(_bits(a), _bits(b)) for a, b in zip(got, want,
                                                                                                strict=True)])
    return SimResult(outputs=outputs, counters=res.counters, seed=res.seed, cycles=res.cycles, main="y0")


def _bits(x):
    x = np.ascontiguousarray(x)
    return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


def _golden_outputs(layer, steps):
    """The expected rows of every step: a copy of ``layer`` (same mode, scales and cache
    geometry) run request by request."""
    ref = copy.deepcopy(layer)
    out = []
    for step in steps:
        rows = []
        for r in step:
            if ref.length(r.seq) != r.pos0:
                raise ValueError(f"sequence {r.seq}: pos0 {r.pos0} but golden holds {ref.length(r.seq)} tokens")
            rows.append(ref.prefill(r.x, r.seq))
            if r.free:
                ref.free(r.seq)
        out.append(np.concatenate(rows))
    return out
