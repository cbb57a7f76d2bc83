"""`make bench BENCH=layer`: the `make sim` run (a SmolLM2 layer on the default chip, int8,
two sequences: prefill, then batched decode steps), its figures in build/bench/layer.json —
cycles per phase and per unit, array utilization in prefill and decode, DRAM bytes per token
and bytes per cycle against the AXI port's peak, simulated cycles per second."""

import sys

from sim.layer_demo import main as demo


def main(argv=None):
    argv = list(argv or [])
    return demo(["--json", "build/bench/layer.json", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
