"""bench.decode's argument parsing and figures, without the chip."""

import argparse

import pytest

from bench.decode import DEFAULT_BATCHES, DEFAULT_FMAX_MHZ, context_of, figures, parse_args, parse_batches


def test_decode_bench_parses_batches_and_computes_figures_from_counters():
    a = parse_args([])
    assert a.batches == list(DEFAULT_BATCHES) and a.layer == 15 and a.fmax_mhz == DEFAULT_FMAX_MHZ
    a = parse_args(["--batches", "1,2,4", "--layer", "3", "--fmax-mhz", "50"])
    assert a.batches == [1, 2, 4] and a.layer == 3 and a.fmax_mhz == 50
    for bad in ("", "0", "1,1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_batches(bad)
    assert [context_of(b) for b in range(6)] == [1, 2, 3, 1, 2, 3]

    # a decode step of 4 sequences: 1 M cycles, 3.2 M MACs, 2 MB read + 4 kB written
    c = {"cycles": 1_000_000, "matmul_macs_int8": 3_200_000, "matmul_macs_bf16": 0,
         "dma_rd_read_bytes": 2_000_000, "dma_wr_write_bytes": 4_000, "matmul_exec_busy": 990_000}
    f = figures(c, rows=4, fmax_mhz=100.0, array=(8, 8), port_bytes=16)
    assert f["cycles"] == 1_000_000 and f["step_us"] == pytest.approx(10_000)
    assert f["tokens_per_second_per_layer"] == pytest.approx(400)      # 4 tokens per 10 ms
    assert f["array_utilization"] == pytest.approx(0.05)               # 3.2 M / (64 · 1 M)
    assert f["dram_bytes"] == 2_004_000 and f["dram_bytes_per_token"] == pytest.approx(501_000)
    assert f["dram_bytes_per_cycle"] == pytest.approx(2.004)
    assert f["port_utilization"] == pytest.approx(2.004 / 16)
    assert f["matmul_busy"] == pytest.approx(0.99)
