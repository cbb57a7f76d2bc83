"""The packages' layering (docs/conventions.md, "One definition of every code and encoding"):
importing every module of ``hdl`` loads nothing of ``golden``, importing every module of
``golden`` loads nothing of ``hdl``, and ``spec`` loads neither (nor ``sim``). Each check runs in
a fresh interpreter, so what other tests imported does not count."""

import subprocess
import sys

import pytest

from sim.runner import ROOT

CHECK = """
import importlib, pkgutil, sys
package = importlib.import_module({package!r})
for info in pkgutil.walk_packages(package.__path__, {package!r} + "."):
    importlib.import_module(info.name)
loaded = sorted({{name.split(".")[0] for name in sys.modules}} & {forbidden!r})
print(",".join(loaded))
"""


@pytest.mark.parametrize("package, forbidden", [
    ("hdl", {"golden", "sim"}),
    ("golden", {"hdl", "sim"}),
    ("spec", {"hdl", "golden", "sim"}),
])
def test_importing_every_module_of_a_package_loads_none_of_the_packages_it_must_not_use(package, forbidden):
    code = CHECK.format(package=package, forbidden=forbidden)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"importing {package} loads {result.stdout.strip()}"
