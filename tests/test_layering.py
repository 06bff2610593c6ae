"""The folder layout is the data flow: dependencies point one way.

`search_space/` (the proxy language and its statistics) and `bench/` (benchmarks) may use
emq's core but never its engines; the core uses neither of them nor the engines.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINES = (
    "emq.evolution",
    "emq.ranking",
    "emq.allocation",
    "emq.api",
    "emq.cli",
    "emq.baselines",
    "emq.pipeline_demo",
    "emq.rendering",
    "emq.bench_setup",
)
CORE = (
    "emq.models",
    "emq.data",
    "emq.layermap",
    "emq.quant",
    "emq.specs",
    "emq.device",
    "emq.errors",
    "emq.fileio",
    "emq.hashing",
    "emq.proxy",
    "emq.target",
    "emq.tables",
    "emq.executors",
    "emq.fitness",
)


def _module(path: Path, folder: str, package: str) -> str:
    rel = path.relative_to(ROOT / folder).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def _imports(path: Path, module: str) -> set[str]:
    out = set()
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = pkg.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
    return out


def _files(folder: str, package: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        yield path, _module(path, folder, package)


def _hits(imports: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(i for i in imports if i == "emq" or any(i == f or i.startswith(f + ".") for f in forbidden))


@pytest.mark.parametrize(("folder", "package"), [("search_space", "emq.search_space"), ("bench", "emq.bench")])
def test_search_space_and_bench_never_import_engines(folder, package):
    bad = {m: _hits(_imports(p, m), ENGINES) for p, m in _files(folder, package)}
    assert {m: h for m, h in bad.items() if h} == {}


def test_core_imports_neither_engines_nor_search_space_or_bench():
    forbidden = ENGINES + ("emq.search_space", "emq.bench")
    bad = {}
    for path, module in _files("emq", "emq"):
        if module in CORE or any(module.startswith(c + ".") for c in CORE):
            hits = _hits(_imports(path, module), forbidden)
            if hits:
                bad[module] = hits
    assert bad == {}


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    fake = tmp_path / "bench"
    fake.mkdir()
    (fake / "x.py").write_text("from emq.ranking import score\nfrom ..evolution import search\nimport emq\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = {m: _hits(_imports(p, m), ENGINES) for p, m in _files("bench", "emq.bench")}
    assert found == {
        "emq.bench.x": ["emq", "emq.evolution", "emq.evolution.search", "emq.ranking", "emq.ranking.score"]
    }


def test_no_submodule_shadows_an_api_function():
    """`emq.score`, `emq.export`, `emq.demo`, ... stay the API functions after every submodule
    is imported (a submodule named like a function replaces it on the package)."""
    import importlib
    import pkgutil

    import emq
    import emq.api

    for info in pkgutil.walk_packages(emq.__path__, "emq."):
        importlib.import_module(info.name)
    shadowed = [name for name in emq.api.__all__ if type(getattr(emq, name)).__name__ == "module"]
    assert shadowed == []
