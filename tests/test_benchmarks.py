"""Every benchmark script still imports: they run on other machines (the GPU, the next stop) and rot
silently when the modules they use change (``serve_load.py`` once imported a function that was gone)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmark_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # polygraphy_inputs.py reads the variable at import and the file it names only later
    monkeypatch.setenv("JRTC_MANIFEST", "jrtc.json")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # kernel_resources.py refuses it (it compiles)
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # scripts import their neighbours
    name = f"benchmark_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up here
    spec.loader.exec_module(module)
    assert module.__doc__, f"{script} has no docstring saying how to run it"
