"""golden.accuracy: the whole-model statistics, on synthetic distributions (no weights needed).

Proves: top-1 agreement, KL(float64 ‖ mode) and perplexity are computed as defined, and each
row is checked against its own scheme's whole-model targets.
"""

import numpy as np
import pytest

from golden.accuracy import _next_token_stats, model_target_misses


def test_next_token_stats_are_top1_kl_and_perplexity_of_the_text():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 7))
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tokens = np.array([0, 3, 1, 6, 2])
    same = _next_token_stats(lp, lp, tokens)
    assert same["top1_agreement"] == 1 and abs(same["kl_mean"]) < 1e-15 and abs(same["kl_max"]) < 1e-15
    want_ppl = np.exp(-np.mean([lp[i, tokens[i + 1]] for i in range(4)]))
    assert abs(same["perplexity"] - want_ppl) < 1e-12
    flat = np.full((5, 7), -np.log(7.0))  # uniform: KL = log 7 − entropy(p)
    r = _next_token_stats(flat, lp, tokens)
    kl = [(np.exp(lp[i]) * (lp[i] + np.log(7))).sum() for i in range(5)]
    assert abs(r["kl_mean"] - np.mean(kl)) < 1e-12 and abs(r["kl_max"] - max(kl)) < 1e-12
    assert r["perplexity"] == pytest.approx(7.0) and r["top1_agreement"] == 0.2  # argmax of a tie: index 0
    assert model_target_misses("int8", dict(top1_agreement=0.96, kl_mean=0.02, perplexity_rel=0.01)) == [
        "top-1 0.9600 < 0.97", "mean KL 0.02000 > 0.01", "perplexity +1.00% outside ±0.5%"]
    assert model_target_misses("bf16_fp32_residual", dict(top1_agreement=0.995, kl_mean=1e-4,
                                                           perplexity_rel=0.2)) == []
