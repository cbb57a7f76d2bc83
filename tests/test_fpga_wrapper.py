"""bench.fpga's board wrapper (a block on five pins, every port bit connected, lint-clean) and
its yosys selection of the registers kept apart."""

import re
import subprocess

import pytest
from amaranth import Module
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from bench.fpga import KEEP_SELECTION, arg_parser, board_wrapper, top_ports
from sim.runner import VERILATOR_WAIVERS


class Odd(wiring.Component):
    """Ports of several widths, one of them 1 bit, in both directions."""
    x: In(13)
    y: In(1)
    z: In(40)
    s: Out(20)
    t: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.s.eq(self.x + self.z[:20]), self.t.eq(self.y ^ self.z[39])]
        return m


@pytest.fixture(scope="module")
def odd_verilog():
    return verilog.convert(Odd(), name="odd")


def test_top_ports_reads_every_port_with_its_width(odd_verilog):
    assert sorted(top_ports(odd_verilog, "odd")) == sorted([
        ("input", 1, "clk"), ("input", 1, "rst"), ("input", 13, "x"), ("input", 1, "y"),
        ("input", 40, "z"), ("output", 20, "s"), ("output", 1, "t")])


def test_top_ports_of_a_missing_module_raises(odd_verilog):
    with pytest.raises(ValueError, match="module nope not found"):
        top_ports(odd_verilog, "nope")


def test_board_wrapper_connects_every_port_bit_once_through_the_shift_registers(odd_verilog):
    text = board_wrapper(odd_verilog, "odd")
    assert text.startswith("module odd_board(input clk, input rst, input si, input cap, output so);")
    assert "reg [53:0] sin" in text and "reg [20:0] sout" in text       # 13+1+40 in, 20+1 out
    conns = dict(re.findall(r"\.(\w+)\((\w+(?:\[\d+:\d+\])?)\)", text))
    assert conns["clk"] == "clk" and conns["rst"] == "rst"
    for vec, width in (("sin", 54), ("outs", 21)):
        bits = []
        for ref in conns.values():
            m = re.fullmatch(rf"{vec}\[(\d+):(\d+)\]", ref)
            if m:
                bits += range(int(m.group(2)), int(m.group(1)) + 1)
        assert sorted(bits) == list(range(width))


def test_board_wrapper_with_its_block_is_verilator_lint_clean(odd_verilog, tmp_path, verilator):
    path = tmp_path / "odd_board.v"
    path.write_text(odd_verilog + "\n" + board_wrapper(odd_verilog, "odd"))
    result = subprocess.run(["verilator", "--lint-only", "-Wall", *VERILATOR_WAIVERS, "--top-module", "odd_board",
                             str(path)], env=verilator, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_keep_selection_takes_the_flip_flops_driving_wires_marked_keep():
    # wires with the keep attribute (w:* a:keep %i), then the cells driving them (%ci1), of
    # which the flip-flops (t:$dff %i): no list of names
    assert KEEP_SELECTION.split() == ["w:*", "a:keep", "%i", "%ci1", "t:$dff", "%i"]


def test_fpga_seed_option_defaults_to_1_and_takes_an_integer():
    assert arg_parser().parse_args([]).seed == 1
    assert arg_parser().parse_args(["--seed", "3"]).seed == 3
    with pytest.raises(SystemExit):
        arg_parser().parse_args(["--seed", "three"])


def test_fpga_entry_is_current_only_for_the_verilog_it_was_measured_on(tmp_path):
    import json

    from bench.fpga import entry_of, verilog_sha256
    from hdl.config import get_config
    from hdl.generate import generate
    generate(get_config("tiny").replace(array={"dsp": "ecp5"}), ["int8_mac"], tmp_path)
    sha = verilog_sha256(tmp_path / "int8_mac.v")
    path = tmp_path / "fpga-tiny.json"
    path.write_text(json.dumps({"tops": {"int8_mac": {"luts": 2, "verilog_sha256": sha},
                                         "fp32_add": {"luts": 438, "verilog_sha256": "0" * 64}}}))
    assert entry_of("tiny", "int8_mac", path) == {"luts": 2, "verilog_sha256": sha, "current": True}
    assert entry_of("tiny", "fp32_add", path)["current"] is False
    assert entry_of("tiny", "bf16_mul", path) is None
    assert entry_of("tiny", "int8_mac", tmp_path / "missing.json") is None


def test_fpga_freq_no_timing_driven_and_alt_weights_options_reach_nextpnr(tmp_path, monkeypatch):
    import bench.fpga as fpga
    args = arg_parser().parse_args([])
    assert args.freq is None and args.no_timing_driven is False and args.alt_weights is False
    assert fpga.clock_target("matmul_engine") == fpga.TARGET_MHZ == 100 and fpga.clock_target("chip") == 30.0
    assert fpga.clock_target("chip", 45) == 45.0 and fpga.clock_target("kv_cache", 25.0) == 25.0
    args = arg_parser().parse_args(["--freq", "25", "--no-timing-driven", "--alt-weights"])
    assert args.freq == 25.0 and args.no_timing_driven is True and args.alt_weights is True
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        (tmp_path / "top.report.json").write_text('{"fmax": {"$glbnet$clk": {"achieved": 31.25}}}')
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fpga, "tool", lambda name: name)
    monkeypatch.setattr(fpga.subprocess, "run", fake_run)
    out = fpga.place_and_route(tmp_path / "top.json", "top", tmp_path, target_mhz=25.0, timing_driven=False)
    assert out["fmax_mhz"] == {"clk": 31.2}
    cmd = calls[0]
    assert cmd[cmd.index("--freq") + 1] == "25.0" and "--no-tmdriv" in cmd
    fpga.place_and_route(tmp_path / "top.json", "top", tmp_path)
    cmd = calls[1]
    assert cmd[cmd.index("--freq") + 1] == str(fpga.TARGET_MHZ) and "--no-tmdriv" not in cmd
    assert "--router2-alt-weights" not in cmd
    fpga.place_and_route(tmp_path / "top.json", "top", tmp_path, alt_weights=True)
    assert "--router2-alt-weights" in calls[2]


def test_fpga_heatmap_option_reaches_nextpnr_and_the_latest_congestion_map_is_summed_by_block(tmp_path, monkeypatch):
    import bench.fpga as fpga
    assert arg_parser().parse_args([]).heatmap is False
    assert arg_parser().parse_args(["--heatmap"]).heatmap is True
    calls = []
    maps = {1: "dut.counters.p[2][2],30\ndut.counters.local_a[3]_LUT4_B_Z[1],5\n$PACKER_GND_NET,4\n",
            12: ("dut.counters.p[2][2],7\ndut.vector_exec.unit.row.acc1.y[8]_LUT4_C_Z[1],2\n"
                 "dut.vector_exec.unit.lane0.x,1\nsin[91]_LUT4_B_5_Z[2],3\nsin[87][87],1\ndut.irq_r,2\n"),
            3: "dut.softmax_exec.unit.a,99\n"}

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        prefix = cmd[cmd.index("--router2-heatmap") + 1] if "--router2-heatmap" in cmd else None
        if prefix:
            for i, text in maps.items():    # what nextpnr writes after each router iteration
                (tmp_path / f"{prefix}_congestion_by_net_{i}.csv").write_text(text)
                (tmp_path / f"{prefix}_congestion_by_wiretype_{i}.csv").write_text("type,bound=0,\n")
        (tmp_path / "top.report.json").write_text('{"fmax": {"$glbnet$clk": {"achieved": 31.25}}}')
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fpga, "tool", lambda name: name)
    monkeypatch.setattr(fpga.subprocess, "run", fake_run)
    out = fpga.place_and_route(tmp_path / "top.json", "top", tmp_path)
    assert "--router2-heatmap" not in calls[0] and "congestion" not in out
    out = fpga.place_and_route(tmp_path / "top.json", "top", tmp_path, heatmap=True)
    assert calls[1][calls[1].index("--router2-heatmap") + 1] == "heatmap/top/top"
    # the latest iteration (12, not 3 or 1), by block below dut, other nets by name without the bits
    assert out["congestion"] == {"iteration": 12, "total": 16,
                                 "blocks": {"counters": 7, "sin": 4, "vector_exec.unit": 3, "dut": 2}}
    assert list(out["congestion"]["blocks"]) == ["counters", "sin", "vector_exec.unit", "dut"]
    assert fpga.congestion_by_block(tmp_path / "heatmap" / "top" / "top", depth=1)["blocks"]["vector_exec"] == 3
    assert fpga.congestion_by_block(tmp_path / "nothing" / "top") is None
