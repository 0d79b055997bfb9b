"""The import structure of medcbir (docs/design.md, "Layers"), checked on the source (AST).

1. Layer order: a module imports only from its own layer and the layers to its left in
   :data:`LAYERS`; ``train`` and ``indexer`` share a rank and do not import each other.
2. Only ``train/`` itself, ``cli/`` and ``reproduce/`` import ``medcbir.train``: every other stage
   reaches encoders through ``medcbir.encoders``.
3. No import cycle between files (a package's ``__init__.py`` is a file like any other).

Every import statement counts, at module level or inside a function; ``from pkg import name``
counts as importing the submodule ``pkg.name`` when there is one, else ``pkg/__init__.py``.
The last tests run the checker on a deliberately broken tree to show each rule reports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medcbir"

#: Left to right; names in one tuple share a rank (and must not import each other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("base",),
    ("imaging",),
    ("encoders",),
    ("train", "indexer"),
    ("engine",),
    ("explain",),
    ("api",),
    ("reproduce",),
    ("pacs",),
    ("cli",),
)
#: The layer of each module directly under medcbir/ (a new one must be placed here explicitly).
TOP_LEVEL = {
    "medcbir": "base",  # __version__ and the lazy public API (no import statement)
    "medcbir.errors": "base",
    "medcbir.fsutil": "base",
    "medcbir.cache": "base",
    "medcbir.device": "base",
    "medcbir.api": "api",
    "medcbir.__main__": "cli",
}
#: The stages allowed to import medcbir.train (training is started from these only).
MAY_IMPORT_TRAIN = ("train", "cli", "reproduce")

RANK = {layer: rank for rank, names in enumerate(LAYERS) for layer in names}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root`` (a package folder)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(source: str, known: dict[str, Path], package: str) -> list[tuple[str, int]]:
    """(module, line) of every import of a module of ``package`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in known else node.module, node.lineno))
    out = []
    for name, line in found:
        if name != package and not name.startswith(package + "."):
            continue
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        out.append((name, line))
    return out


def layer_of(module: str) -> str | None:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else None


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module → {imported module: first line}, within the package at ``root``."""
    files = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges = graph.setdefault(module, {})
        for target, line in imported_modules(path.read_text(encoding="utf-8"), files, root.name):
            if target != module:
                edges[target] = min(line, edges.get(target, line))
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, {}))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def violations(root: Path) -> list[str]:
    """Every breach of the three rules in the package at ``root``, one line each."""
    graph = import_graph(root)
    out = []
    for module, edges in sorted(graph.items()):
        layer = layer_of(module)
        if layer is None:
            out.append(f"{module}: not placed in the layer order (add it to TOP_LEVEL in tests/test_layers.py)")
            continue
        for target, line in sorted(edges.items()):
            other = layer_of(target)
            if other is None or other == layer:
                continue
            where = f"{module}:{line} imports {target}"
            if RANK[other] > RANK[layer]:
                out.append(f"{where}: {other} comes after {layer} in the layer order")
            elif RANK[other] == RANK[layer]:
                out.append(f"{where}: {layer} and {other} are siblings and must not import each other")
            if other == "train" and layer not in MAY_IMPORT_TRAIN:
                out.append(f"{where}: only {', '.join(MAY_IMPORT_TRAIN)} import medcbir.train")
    for component in cycles(graph):
        out.append(f"import cycle between {', '.join(component)}")
    return out


def test_medcbir_keeps_its_layers_and_has_no_import_cycle():
    assert violations(PACKAGE) == []


# --------------------------------------------------------------------------- the checker reports
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "medcbir"
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root


GOOD = {
    "__init__.py": "",
    "errors.py": "",
    "imaging/__init__.py": "",
    "imaging/items.py": "from medcbir.errors import DecodeError\n",
    "encoders/__init__.py": "",
    "encoders/runtime.py": "from medcbir.imaging import items\n",
    "train/__init__.py": "",
    "train/trainer.py": "from medcbir.encoders.runtime import open_encoder\n",
    "indexer/__init__.py": "",
    "indexer/writer.py": "def open():\n    from medcbir.encoders import runtime\n",
    "engine/__init__.py": "",
    "engine/engine.py": "import medcbir.indexer.writer\n",
    "cli/__init__.py": "",
    "cli/train.py": "from medcbir.train.trainer import train\n",
}


def test_a_well_layered_tree_passes(tmp_path):
    assert violations(_tree(tmp_path, GOOD)) == []


def test_a_backward_import_is_reported(tmp_path):
    # imaging (the lowest stage) importing the engine, inside a function
    root = _tree(tmp_path, {**GOOD, "imaging/items.py": "def f():\n    from medcbir.engine import search\n"})
    assert violations(root) == ["medcbir.imaging.items:2 imports medcbir.engine: engine comes after imaging in the layer order"]


def test_siblings_importing_each_other_are_reported(tmp_path):
    root = _tree(tmp_path, {**GOOD, "indexer/writer.py": "from medcbir.train import trainer\n"})
    assert violations(root) == [
        "medcbir.indexer.writer:1 imports medcbir.train.trainer: indexer and train are siblings and must not import each other",
        "medcbir.indexer.writer:1 imports medcbir.train.trainer: only train, cli, reproduce import medcbir.train",
    ]


def test_a_later_stage_importing_train_is_reported(tmp_path):
    root = _tree(tmp_path, {**GOOD, "engine/engine.py": "from medcbir.train.trainer import train\n"})
    assert violations(root) == ["medcbir.engine.engine:1 imports medcbir.train.trainer: only train, cli, reproduce import medcbir.train"]


def test_two_files_importing_each_other_are_reported(tmp_path):
    root = _tree(tmp_path, {**GOOD, "engine/sharded.py": "from medcbir.engine.engine import Engine\n",
                            "engine/engine.py": "def open():\n    from medcbir.engine.sharded import Sharded\n"})
    assert violations(root) == ["import cycle between medcbir.engine.engine, medcbir.engine.sharded"]


def test_a_package_init_counts_as_a_file(tmp_path):
    root = _tree(tmp_path, {**GOOD, "engine/__init__.py": "from medcbir.engine.engine import Engine\n",
                            "engine/engine.py": "from medcbir.engine import Engine\n"})
    assert violations(root) == ["import cycle between medcbir.engine, medcbir.engine.engine"]


@pytest.mark.parametrize("name", ["helpers.py", "api2.py"])
def test_an_unplaced_top_level_module_is_reported(tmp_path, name):
    root = _tree(tmp_path, {**GOOD, name: ""})
    assert violations(root) == [f"medcbir.{name[:-3]}: not placed in the layer order (add it to TOP_LEVEL in tests/test_layers.py)"]
