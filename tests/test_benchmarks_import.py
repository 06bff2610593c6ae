"""Every benchmark and script still imports against the current library (they are not run
by the suite, so a renamed module would otherwise go unnoticed until someone measures)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])
# what some benchmarks compare against or drive, and emq itself does not need: only their absence skips
OPTIONAL = {"pulp", "pyhessian", "ray"}


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_imports(path):
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # main-guarded: only the imports and definitions run
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"{path.name} needs the optional {e.name}, which is not installed")
    assert callable(getattr(module, "main", None))
