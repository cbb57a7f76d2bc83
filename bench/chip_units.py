"""Rates of the chip's VECTOR and SOFTMAX instructions (``make bench BENCH=chip_units``).

Each case is one program of one instruction on the Verilated chip (``--config``, default
``default``), no AXI stalls; the figures come from the chip's counters: the cycles the unit held
the instruction (``<unit>_exec_busy``, from taking it to retiring it with its writes visible)
and the elements per busy cycle. Streams sit in different scratchpad banks. The scratchpad holds
zeros: no op's timing depends on the data. A last program runs a VECTOR and a SOFTMAX with no
wait between them and reports the cycles both were busy at once (at least busy_v + busy_s −
cycles). Writes build/bench/chip_units.json.
"""

import argparse
import json
import sys

import numpy as np

from hdl.config import get_config
from sim.chip_api import ChipSim, Program
from sim.runner import BUILD
from spec import isa
from spec.vector import VectorOp

END = isa.encode(isa.Opcode.END)


def _f32(x):
    return int(np.float32(x).view(np.uint32))


def cases(cfg):
    """[(name, unit, elements, instruction words)] of the benchmark."""
    L, bank = cfg.memory.spad_lanes, cfg.memory.spad_words
    out = []

    def vec(name, op, rows, length, dtype=1, **f):
        w = -(-length // L)
        fields = dict(op=op, dtype=dtype, rows=rows, length=length, a_addr=0, a_stride=w, b_addr=bank,
                      b_stride=w, p_addr=3 * bank, p_stride=0, o_addr=2 * bank, o_stride=w,
                      s_in_addr=2 * bank + bank // 2, s_out_addr=3 * bank + bank // 2)
        fields.update(f)
        out.append((name, "vector", rows * length, [isa.encode(isa.Opcode.VECTOR, **fields)]))

    d, ff = 576, 1536
    for rows in (1, 8, 64):
        vec(f"add_bf16_{rows}x{d}", VectorOp.ADD, rows, d)
    vec(f"swiglu_bf16_8x{ff}", VectorOp.SWIGLU, 8, ff)
    for rows in (1, 8, 64):
        vec(f"rmsnorm_bf16_{rows}x{d}", VectorOp.RMSNORM, rows, d, imm0=_f32(1e-5), imm1=_f32(1 / d))
    vec(f"rope_bf16_8x{d}_hd64", VectorOp.ROPE, 8, d, head_dim=64, p_stride=64 // (2 * L))
    vec(f"rope_int8_8x{d}_hd64", VectorOp.ROPE, 8, d, dtype=0, head_dim=64, p_stride=64 // (2 * L), shift=44,
        imm0=1 << 30)
    vec(f"dequant_rowexp_8x{ff}", VectorOp.DEQUANT, 8, ff, dtype=0, flags=1, b_stride=0)
    vec(f"requant_8x{d}", VectorOp.REQUANT, 8, d, dtype=0, b_stride=0)
    vec(f"quant_token_8x{d}", VectorOp.QUANT_TOKEN, 8, d)

    def sm(name, rows, length, dtype=0, **f):
        w = -(-length // L)
        fields = dict(dtype=dtype, rows=rows, length=length, a_addr=0, a_stride=w, o_addr=2 * bank, o_stride=w,
                      scale=1 << 15, shift=20, valid_len=length)
        fields.update(f)
        out.append((name, "softmax", rows * length, [isa.encode(isa.Opcode.SOFTMAX, **fields)]))

    sm("softmax_int8_9x256", 9, 256)
    sm("softmax_int8_64x64_causal", 64, 64, causal=1)
    sm("softmax_int8_64x256", 64, 256)
    sm("softmax_bf16_64x256", 64, 256, dtype=1, scale=_f32(0.18))
    sm(f"softmax_int8_1x{cfg.softmax.max_len}", 1, cfg.softmax.max_len)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    args = ap.parse_args(argv)
    cfg = get_config(args.config)
    sim = ChipSim(cfg)
    names = sim.chip().counter_names
    todo = cases(cfg)
    progs = [Program(words + [END], addr=0x1000 * i) for i, (_, _, _, words) in enumerate(todo)]
    L, bank = cfg.memory.spad_lanes, cfg.memory.spad_words
    both = [  # ADD 64 × 576 (banks 0, 1 → 2) and SOFTMAX 64 × 256 (bank 3 → 1), no wait between them
        isa.encode(isa.Opcode.VECTOR, op=VectorOp.ADD, dtype=1, rows=64, length=576, a_addr=0, a_stride=576 // L,
                   b_addr=bank, b_stride=576 // L, o_addr=2 * bank, o_stride=576 // L),
        isa.encode(isa.Opcode.SOFTMAX, dtype=0, rows=64, length=256, a_addr=3 * bank, a_stride=256 // L,
                   o_addr=bank + 64 * 576 // L, o_stride=256 // L, scale=1 << 15, shift=20, valid_len=256)]
    progs.append(Program(both + [END], addr=0x1000 * len(todo)))
    res = sim.run({}, progs, seed=1)
    rates = {}
    V, P = cfg.vector.lanes, cfg.softmax.lanes
    for r, (name, unit, elems, _) in enumerate(todo):
        c = dict(zip(names, (int(x) for x in res.outputs[f"run{r}_counters"]), strict=True))
        assert int(res.outputs[f"run{r}_error_code"]) == 0, name
        busy = c[f"{unit}_exec_busy"]
        ideal = elems / (V if unit == "vector" else P)
        rates[name] = {"busy_cycles": busy, "elements_per_cycle": round(elems / busy, 2),
                       "overhead_cycles": round(busy - ideal, 1), "program_cycles": c["cycles"]}
        print(f"{name:28s} busy {busy:6d}  {elems / busy:5.2f} elements/cycle  "
              f"(+{busy - ideal:.0f} over {elems}/{V if unit == 'vector' else P})")
    c = dict(zip(names, (int(x) for x in res.outputs[f"run{len(todo)}_counters"]), strict=True))
    overlap = c["vector_exec_busy"] + c["softmax_exec_busy"] - c["cycles"]
    rates["vector_and_softmax_together"] = {"cycles": c["cycles"], "vector_busy": c["vector_exec_busy"],
                                            "softmax_busy": c["softmax_exec_busy"], "both_busy_at_least": overlap}
    print(f"VECTOR and SOFTMAX together: {c['cycles']} cycles, busy {c['vector_exec_busy']} and "
          f"{c['softmax_exec_busy']}: at least {overlap} cycles both")
    out = BUILD / "bench" / "chip_units.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": cfg.name, "rates": rates}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
