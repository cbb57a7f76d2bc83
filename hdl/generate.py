"""`make verilog [CONFIG=…]`: write the Verilog of every top-level design and a JSON card.

Output, for configuration ``<config>``:

- ``build/<config>/<top>.v`` — one file per top in :data:`hdl.tops.TOPS`, module name ``<top>``,
  clock ``clk``, synchronous active-high reset ``rst``; with ``DSP=ecp5`` (``--dsp ecp5``) the
  multipliers are Lattice ECP5 ``MULT18X18D`` instances with their own registers (:mod:`hdl.dsp`),
  otherwise plain HDL that any tool maps;
- ``build/<config>/config.json`` — the configuration's parameters and, for every top, every port
  with its direction (``in``/``out``, seen from the top) and width, the latency/throughput
  properties the component exposes (:data:`PROPERTIES`) and, for a top with a register map
  (``chip``, ``csr_bank``), its address width and every register: name, byte offset, bits,
  access, reset value and description (counters included).
"""

import argparse
import json
import sys
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Value
from amaranth.lib.wiring import In

from .config import PRESETS, get_config
from .memport import with_verilog_sources
from .tops import TOPS, elaborate_top

ROOT = Path(__file__).resolve().parent.parent


def port_list(component, name):
    """[{name, dir, width}] of the flattened Verilog ports, clk and rst first."""
    ports = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
    for path, member, value in component.signature.flatten(component):
        flat = "__".join(str(p) for p in path)
        ports.append({"name": flat, "dir": "in" if member.flow == In else "out",
                      "width": len(Value.cast(value))})
    return ports


#: Numeric properties copied into a top's entry when the component has them (cycles, or items
#: per cycle for ``throughput``; each component's docstring says what it measures).
PROPERTIES = ("latency", "throughput", "stages", "read_latency", "done_latency", "request_latency",
              "data_latency", "csr_read_latency")


def register_map(component):
    """The ``{addr_width, registers}`` entry of a component with a register map (``chip``:
    ``register_map``, ``csr_bank``: ``regmap``), or None."""
    regmap = getattr(component, "register_map", None) or getattr(component, "regmap", None)
    if regmap is None:
        return None
    return {"addr_width": regmap.addr_width,
            "registers": [{"name": r.name, "offset": r.offset, "width": r.width, "access": r.access,
                           "reset": r.reset, "doc": r.doc} for r in regmap]}


def describe(component):
    info = {}
    for prop in PROPERTIES:
        value = getattr(component, prop, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            info[prop] = value
    csr = register_map(component)
    if csr is not None:
        info["csr"] = csr
    return info


def generate(config_name, tops=None, out_dir=None):
    config = get_config(config_name)
    out_dir = Path(out_dir or ROOT / "build" / config.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = {"config": config.to_dict(), "tops": {}}
    for name in tops or TOPS:
        component = elaborate_top(name, config)
        ports = port_list(component, name)
        text = with_verilog_sources(verilog.convert(component, name=name, emit_src=False))
        path = out_dir / f"{name}.v"
        path.write_text(text)
        card["tops"][name] = {"file": path.name, "ports": ports, **describe(component)}
        print(f"wrote {path}  ({len(ports)} ports)")
    (out_dir / "config.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out_dir / 'config.json'}")
    return out_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--top", action="append", help="only this top (repeatable)")
    parser.add_argument("--out", help="output folder (default build/<config>)")
    parser.add_argument("--dsp", help="how multipliers are built: generic (default) or ecp5 "
                                      "(Lattice ECP5 DSP blocks with their own registers; hdl/dsp.py)")
    args = parser.parse_args(argv)
    try:
        config = get_config(args.config)
        if args.dsp is not None:
            config = config.replace(array={"dsp": args.dsp})
        generate(config, args.top, args.out)
    except (ValueError, TypeError) as exc:
        print(f"make verilog: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
