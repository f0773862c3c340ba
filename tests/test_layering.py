"""The layers of the project import one way: dynfilter ← backbones ← experiments (← benchmarks)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_LOADED = "import sys, {module}; print(sorted(m for m in {names!r} if m in sys.modules))"


def _loaded(module: str, names: tuple[str, ...]) -> list[str]:
    code = _LOADED.format(module=module, names=names)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return eval(out)  # a printed list of strings


@pytest.mark.parametrize(
    "module",
    ["dynfilter", "dynfilter.surgery", "dynfilter.ops", "dynfilter.complexity", "dynfilter.inspect", "dynfilter.export"],
)
def test_dynfilter_imports_no_higher_layer_and_no_heavy_dependency(module):
    heavy = ("pandas", "matplotlib", "fvcore", "onnx", "onnxscript", "onnxruntime")
    assert _loaded(module, ("backbones", "experiments") + heavy) == []


def test_backbones_import_no_experiments():
    assert _loaded("backbones", ("experiments", "pandas", "matplotlib")) == []


def test_the_check_sees_an_import():
    # The guard can fail: importing experiments.plot loads pandas.
    assert _loaded("experiments.plot", ("pandas",)) == ["pandas"]


@pytest.mark.parametrize("module", ["experiments.cli", "experiments.packing", "experiments.ray_sweep"])
def test_ray_loads_only_when_a_ray_sweep_starts(module):
    # Ray is an optional extra (dynfilter[distributed]); everything else must work without it.
    assert _loaded(module, ("ray",)) == []
