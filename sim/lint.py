"""`make lint`: Verilator --lint-only -Wall on every generated top, with sim.runner's waivers."""

import argparse
import subprocess
import sys

from hdl.generate import generate

from .runner import VERILATOR_WAIVERS
from .toolchain import ToolchainError, verilator_env, verilator_version


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="default")
    args = parser.parse_args(argv)
    try:
        verilator_version()
        out_dir = generate(args.config)
    except (ValueError, TypeError, ToolchainError) as exc:
        print(f"make lint: {exc}", file=sys.stderr)
        return 2
    env = verilator_env()
    failed = []
    for path in sorted(out_dir.glob("*.v")):
        top = path.stem
        cmd = ["verilator", "--lint-only", "-Wall", *VERILATOR_WAIVERS, "--top-module", top, str(path)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        status = "clean" if result.returncode == 0 else "FAILED"
        print(f"lint {top:16s} {status}")
        if result.returncode:
            failed.append(top)
            print(result.stderr[-4000:], file=sys.stderr)
    if failed:
        print(f"make lint: Verilator warnings in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
