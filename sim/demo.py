"""`make sim`: a real-shaped matmul on the Verilated engine, checked against golden.

SmolLM2-135M's Q projection for a 64-token prefill: x[64, 576] · Wq[576, 576], once in int8
(requantized to int8 per output channel, as the int8 decoder layer does) and once in bf16 (fp32
accumulation, bf16 output). Random operands from a fixed seed. Prints cycles, utilization and
stall counters from the RTL's own counters; exits non-zero when any result differs from golden.

    python -m sim.demo --config default
"""

import argparse
import sys
import time

import ml_dtypes
import numpy as np

import golden
from hdl.config import PRESETS, get_config

from .matmul_api import design_for, run_matmul
from .toolchain import ToolchainError

SMOLLM2_Q = (64, 576, 576)


def _report(title, cfg, res, seconds, ok, shape):
    M, K, N = shape
    R, C = cfg.array.rows, cfg.array.cols
    c = res.counters
    cycles = int(res.command_counters["cycles"].sum())
    print(f"{title}: {M}×{K}×{N} on {R}×{C}  {'MATCHES golden' if ok else 'MISMATCH vs golden'}")
    print(f"  cycles {cycles:>9}   busy {c['busy']:>9}   MACs {c['macs_int8'] + c['macs_bf16']:>11}")
    print(f"  utilization {float(res.utilization):.2%} (MACs / (R·C·cycles))   "
          f"stalls: input {c['stall_input']}, output {c['stall_output']}, "
          f"weight {c['stall_weight']}, dependency {c['stall_dependency']}")
    print(f"  simulated in {seconds:.1f} s ({res.cycles / seconds:,.0f} cycles/s, seed {res.seed})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("M", "K", "N"), default=SMOLLM2_Q,
                        help="matmul shape (default: SmolLM2 Q projection, 64 576 576; the 2×2 "
                             "tiny array needs 16× the cycles of the default one, so give it a "
                             "smaller shape)")
    args = parser.parse_args(argv)
    M, K, N = args.shape
    if min(args.shape) < 1:
        parser.error(f"--shape must be positive, not {args.shape}")
    try:
        cfg = get_config(args.config)
    except ValueError as exc:
        parser.error(str(exc))
    rng = np.random.default_rng(args.seed)
    t0 = time.monotonic()
    try:
        design_for(cfg)
    except ToolchainError as exc:
        print(f"make sim: {exc}", file=sys.stderr)
        return 2
    print(f"engine {cfg.name} ({cfg.array.rows}×{cfg.array.cols}) ready in {time.monotonic() - t0:.1f} s")
    failures = 0

    # int8: symmetric int8 activations and weights, per-channel requantization to int8
    x = rng.integers(-128, 128, (M, K)).astype(np.int8)
    wq = rng.integers(-128, 128, (K, N)).astype(np.int8)
    bias = rng.integers(-2000, 2000, N).astype(np.int32)
    scales = rng.uniform(0.5, 2.0, N) / (128 * np.sqrt(K))  # outputs of a few tens
    mult, shift = golden.quantize_multiplier(scales)
    t0 = time.monotonic()
    res = run_matmul(x, wq, bias=bias, requant=(mult, shift), config=cfg, seed=args.seed)
    seconds = time.monotonic() - t0
    want = golden.requantize(golden.matmul_int8(x, wq, bias), mult, shift)
    ok = np.array_equal(res.output, want)
    failures += not ok
    _report("int8 → int8", cfg, res, seconds, ok, (M, K, N))

    # bf16: fp32 accumulation in k order, bf16 output
    xb = rng.standard_normal((M, K)).astype(ml_dtypes.bfloat16)
    wb = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(ml_dtypes.bfloat16)
    t0 = time.monotonic()
    res = run_matmul(xb, wb, out_dtype=ml_dtypes.bfloat16, config=cfg, seed=args.seed)
    seconds = time.monotonic() - t0
    want = golden.fp32_to_bf16(golden.matmul_bf16(xb, wb).view(np.uint32))
    ok = np.array_equal(res.output.view(np.uint16), want)
    failures += not ok
    _report("bf16 → bf16", cfg, res, seconds, ok, (M, K, N))

    if failures:
        print(f"FAIL: {failures} result(s) differ from golden", file=sys.stderr)
        return 1
    print("PASS: every result is bit-identical to golden")
    return 0


if __name__ == "__main__":
    sys.exit(main())
