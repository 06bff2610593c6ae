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


BENCHMARKS = sorted(ROOT.glob("benchmarks/*.py"))
IMPORT_NAMES = {"sklearn": "scikit-learn", "pyhessian": "PyHessian"}  # import name -> distribution, where they differ


def _declared() -> tuple[set[str], dict[str, set[str]]]:
    import re

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}

    return names(project["dependencies"]), {k: names(v) for k, v in project["optional-dependencies"].items()}


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_each_benchmark_says_what_it_needs_and_declares_it(path):
    import ast
    import sys

    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree) or ""
    core, extras = _declared()
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    third = {IMPORT_NAMES.get(m, m).lower() for m in imported - set(sys.stdlib_module_names) - {"emq"}} - core
    for dist in sorted(third):
        extra = next((k for k, v in extras.items() if dist in v), None)
        assert extra is not None, f"{path.name} imports {dist}, which is in no extra of pyproject.toml"
        assert f'pip install -e ".[{extra}]"' in doc, f'{path.name}: its docstring must say pip install -e ".[{extra}]"'
    assert "Needs" in doc, f"{path.name}: its docstring must say what it needs"
