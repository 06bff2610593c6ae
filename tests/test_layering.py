"""The folder layout is the data flow: every module has a layer and dependencies point down.

Every module of the three packages (emq/, search_space/ = emq.search_space, bench/ = emq.bench)
is assigned to one layer of `LAYERS`, new ones included (an unassigned module fails the test).
A module may import its own layer and the layers its layer names; imports are read from the
source (`import`, `from ... import`, lazy ones inside functions, `importlib.import_module` and
`__import__` calls), so no detour escapes the check. The CLI reaches the library only through
`emq.api` (and the `emq` package, for the version). Imports also form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"emq": "emq", "search_space": "emq.search_space", "bench": "emq.bench"}  # folder -> package

# Bottom to top: (layer, its modules, the layers below it that it may use). A module named
# here stands for itself; a subpackage (emq.evolution) for all of its modules. Top-level
# modules of emq/ are each named, so a new one must be placed here.
LAYERS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    (
        "foundation",
        (
            "emq._version",
            "emq.errors",
            "emq.specs",
            "emq.registry",
            "emq.fileio",
            "emq.hashing",
            "emq.tables",
            "emq.resources",
            "emq.device",
            "emq.threads",
            "emq.allocator",
            "emq.bench.bundles",  # the table of shipped files (stats too): used by search_space.shipped
        ),
        (),
    ),
    (
        "core",
        (
            "emq.datasplits",
            "emq.mnist_data",
            "emq.shapes_data",
            "emq.data",
            "emq.zoo_models",
            "emq.models",
            "emq.layermap",
            "emq.quantizers",
            "emq.rounding",
            "emq.quant",
            "emq.target",
            "emq.proxy",
            "emq.fitness",
            "emq.uncertainty",
            "emq.supervised",
            "emq.executors",
        ),
        ("foundation",),
    ),
    ("search space", ("emq.search_space", "emq.sensitivity"), ("foundation", "core")),
    ("bench", ("emq.bench",), ("foundation", "core")),
    (
        "engine parts",
        ("emq.bench_setup", "emq.baselines", "emq.rendering"),
        ("foundation", "core", "search space", "bench"),
    ),
    (
        "engines",
        ("emq.evolution", "emq.ranking", "emq.allocation"),
        ("foundation", "core", "search space", "bench", "engine parts"),
    ),
    (
        "studies",
        ("emq.transfer", "emq.frontier", "emq.pipeline_demo"),
        ("foundation", "core", "search space", "bench", "engine parts", "engines"),
    ),
    (
        "api",
        ("emq", "emq.api"),
        ("foundation", "core", "search space", "bench", "engine parts", "engines", "studies"),
    ),
    ("cli", ("emq.cli",), ("api",)),
]
# (importer, imported) pairs allowed outside the layers, with the reason
EXCEPTIONS = {
    ("emq.cli.main", "emq.threads"): "the CPU sample that picks --threads must start before emq.api imports torch",
}
SUBPACKAGES = {"emq.quantizers", "emq.executors", "emq.search_space", "emq.bench", "emq.baselines"}
SUBPACKAGES |= {"emq.evolution", "emq.allocation", "emq.cli"}
DYNAMIC = "<an import whose module is computed>"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            out[".".join([package, *(p for p in rel.parts if p != "__init__")])] = path
    return out


def layer_of(module: str) -> str | None:
    for name, members, _ in LAYERS:
        for m in members:
            if module == m or (m in SUBPACKAGES and module.startswith(m + ".")):
                return name
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_target(call: ast.Call, module: str) -> str | None:
    """The module an `importlib.import_module(...)` / `__import__(...)` call names: a string
    literal, or the package an f-string starts with (f"emq.cli.cmd_{name}", f"{__name__}.{x}")."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values:
        first = arg.values[0]
        if isinstance(first, ast.FormattedValue) and isinstance(first.value, ast.Name) and first.value.id == "__name__":
            return module
        if isinstance(first, ast.Constant) and "." in first.value:
            return first.value.rsplit(".", 1)[0]
    return DYNAMIC


def imports(path: Path, module: str, known: set[str], type_checking: bool = True) -> set[str]:
    """The emq modules `module` (at `path`) imports anywhere in its source, resolved to module
    names in `known` (`from pkg import sub` names the submodule), plus DYNAMIC for an
    importlib call whose target cannot be read. `type_checking=False` skips `if TYPE_CHECKING:`."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if _is_type_checking(node):
                skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in known]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(name)
        elif isinstance(node, ast.Call):
            target = _dynamic_target(node, module)
            if target is not None:
                found.add(target)
    out = set()
    for name in found:
        if name == DYNAMIC:
            out.add(name)
            continue
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] == "emq":
            out.add(name)
    return out


def upward_imports(root: Path = ROOT) -> dict[str, list[str]]:
    """module -> the imports its layer may not make (unassigned modules are not judged here)."""
    mods = modules(root)
    uses = {name: (name, *below) for name, _, below in LAYERS}
    bad = {}
    for module, path in mods.items():
        layer = layer_of(module)
        if layer is None:
            continue
        hits = sorted(
            i
            for i in imports(path, module, set(mods))
            if i != module
            and not module.startswith(i + ".")
            and layer_of(i) not in uses[layer]
            and (module, i) not in EXCEPTIONS
        )
        if hits:
            bad[module] = hits
    return bad


def unassigned(root: Path = ROOT) -> list[str]:
    return sorted(m for m in modules(root) if layer_of(m) is None)


def cycles(root: Path = ROOT) -> list[list[str]]:
    """Groups of modules that import each other (directly or through others), lazy imports
    included; a submodule importing its own package and `if TYPE_CHECKING:` imports do not count."""
    mods = modules(root)
    graph = nx.DiGraph()
    for module, path in mods.items():
        graph.add_node(module)
        for i in imports(path, module, set(mods), type_checking=False):
            if i != DYNAMIC and i != module and not module.startswith(i + "."):
                graph.add_edge(module, i)
    return sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)


def test_every_module_is_assigned_to_a_layer():
    assert unassigned() == []
    named = [m for _, members, _ in LAYERS for m in members]
    assert [m for m in named if m not in modules()] == []  # no stale names
    assert len(named) == len(set(named))


def test_no_module_imports_upward():
    assert upward_imports() == {}


def test_no_import_cycle():
    assert cycles() == []


def test_the_cli_reaches_the_library_only_through_the_api():
    mods = modules()
    used = set()
    for module, path in mods.items():
        if layer_of(module) == "cli":
            used |= {
                i
                for i in imports(path, module, set(mods))
                if not i.startswith("emq.cli") and (module, i) not in EXCEPTIONS
            }
    assert used == {"emq", "emq.api"}


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A copy of the three package folders with `files` (relative path -> source) added."""
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            dest = tmp_path / path.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for rel, text in files.items():
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("bench/x.py", "from emq.ranking import score\n", ["emq.ranking"]),
        ("bench/x.py", "from ..evolution import search\n", ["emq.evolution"]),
        ("emq/executors/x.py", "def f():\n    from ..cli import common\n", ["emq.cli.common"]),
        ("emq/evolution/x.py", "import emq.cli.main\n", ["emq.cli.main"]),
        ("emq/quant.py", 'import importlib\nM = importlib.import_module("emq.baselines")\n', ["emq.baselines"]),
        ("emq/layermap.py", 'X = __import__("emq.search_space.stats")\n', ["emq.search_space.stats"]),
        ("emq/specs.py", "import importlib\nimportlib.import_module(f'emq.allocation.{1}')\n", ["emq.allocation"]),
        ("emq/fileio.py", "import importlib\nimportlib.import_module(NAME)\n", [DYNAMIC]),
        ("emq/cli/x.py", "from ..quant import PTQSettings\n", ["emq.quant"]),
        ("emq/cli/x.py", "from emq.errors import EmqError\n", ["emq.errors"]),
    ],
)
def test_the_checker_sees_a_planted_upward_import(tmp_path, where, source, expected):
    root = _plant(tmp_path, {where: source})
    module = ".".join([PACKAGES[where.split("/")[0]], *Path(where).with_suffix("").parts[1:]])
    assert upward_imports(root) == {module: expected}


def test_the_checker_sees_an_unassigned_module_and_a_cycle(tmp_path):
    root = _plant(
        tmp_path,
        {
            "emq/newthing.py": "from .specs import ParameterError\n",
            "emq/errors.py": "from .fileio import atomic_write\n",
        },
    )
    assert unassigned(root) == ["emq.newthing"]
    assert cycles(root) == [["emq.errors", "emq.fileio"]]


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
