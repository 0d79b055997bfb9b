"""The import structure of medcbir (docs/design.md, "Layers"), checked on the source (AST).

1. Layer order: a module imports only from its own layer and the layers to its left in
   :data:`LAYERS`; ``train`` and ``indexer`` share a rank and do not import each other.
2. Only ``train/`` itself, ``cli/`` and ``reproduce/`` import ``medcbir.train``: every other stage
   reaches encoders through ``medcbir.encoders``.
3. No import cycle between files (a package's ``__init__.py`` is a file like any other).
4. An import of a medcbir module inside a function is there for a reason: the module imports a
   heavy library (:data:`HEAVY`) at module level, itself or through the medcbir modules it
   imports at module level (importing ``pkg.mod`` also runs ``pkg/__init__.py``). Every other
   medcbir import sits at the top of the file. Checked per package; :data:`LAZY_ALLOWED` names the
   one module excused, and why.

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


# --------------------------------------------------------------------------- in-function imports
#: Libraries worth importing only where they are used: each costs seconds (or pulls a GPU runtime).
HEAVY = ("torch", "ray", "kornia", "onnx", "onnxruntime", "transformers")


def _imports_by_scope(tree: ast.AST) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(imports run when the module is imported, imports inside a function); ``if TYPE_CHECKING:`` blocks never run."""
    top: list[ast.stmt] = []
    inner: list[ast.stmt] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inner


def _libraries(node: ast.stmt) -> set[str]:
    """The top-level names of what an import statement imports (``torch`` for ``import torch.nn``)."""
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    return {node.module.split(".")[0]} if node.module and not node.level else set()


def _with_packages(module: str, files: dict[str, Path]) -> set[str]:
    """``module`` and the packages whose ``__init__.py`` importing it runs."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(files)


def heavy_modules(root: Path) -> set[str]:
    """The modules of the package at ``root`` whose import imports a :data:`HEAVY` library."""
    files = module_files(root)
    direct: dict[str, set[str]] = {}
    heavy = set()
    for module, path in files.items():
        top, _ = _imports_by_scope(ast.parse(path.read_text(encoding="utf-8")))
        deps = _with_packages(module, files) - {module}
        for node in top:
            if _libraries(node) & set(HEAVY):
                heavy.add(module)
            for target, _ in imported_modules(ast.unparse(node), files, root.name):
                deps |= _with_packages(target, files)
        direct[module] = deps - {module}
    changed = True
    while changed:
        changed = False
        for module, deps in direct.items():
            if module not in heavy and deps & heavy:
                heavy.add(module)
                changed = True
    return heavy


def lazy_import_violations(root: Path) -> dict[str, list[str]]:
    """Per package (``medcbir.engine``; ``medcbir`` for the top-level modules), its in-function
    imports of medcbir modules that import no heavy library, one line each."""
    files = module_files(root)
    heavy = heavy_modules(root)
    out: dict[str, list[str]] = {}
    for module, path in sorted(files.items()):
        package = ".".join(module.split(".")[:2]) if module.count(".") >= 1 and files[module].parent != root else root.name
        _, inner = _imports_by_scope(ast.parse(path.read_text(encoding="utf-8")))
        for node in inner:
            for target, _ in imported_modules(ast.unparse(node), files, root.name):
                if target != module and not _with_packages(target, files) & heavy:
                    out.setdefault(package, []).append(
                        f"{module}:{node.lineno} imports {target} inside a function; it imports none of {', '.join(HEAVY)}: import it at the top"
                    )
    return {package: sorted(set(lines)) for package, lines in out.items()}


@pytest.fixture(scope="module")
def medcbir_lazy_imports() -> dict[str, list[str]]:
    return lazy_import_violations(PACKAGE)


#: Modules allowed to import a light medcbir module inside a function, and why (nothing else is).
LAZY_ALLOWED = {
    "medcbir.pacs.orthanc_config": "Orthanc's embedded interpreter imports it with the standard library only",
}
LAZY_PACKAGES = ("medcbir", *(f"medcbir.{name}" for names in LAYERS[1:] for name in names if name != "api"))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_in_function_imports_only_for_heavy_libraries(package, medcbir_lazy_imports):
    found = medcbir_lazy_imports.get(package, [])
    assert [line for line in found if line.split(":")[0] not in LAZY_ALLOWED] == []


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


def test_a_needless_in_function_import_is_reported(tmp_path):
    # engine/engine.py imports imaging (light) and encoders/runtime (torch, through its module level) in functions
    root = _tree(tmp_path, {**GOOD,
                            "encoders/runtime.py": "import torch\nfrom medcbir.imaging import items\n",
                            "engine/engine.py": "def f():\n    from medcbir.imaging.items import Item\n\n\ndef g():\n"
                                                "    from medcbir.encoders.runtime import open_encoder\n"})
    assert heavy_modules(root) == {"medcbir.encoders.runtime", "medcbir.train.trainer", "medcbir.cli.train"}
    assert lazy_import_violations(root) == {
        "medcbir.engine": ["medcbir.engine.engine:2 imports medcbir.imaging.items inside a function; it imports none of "
                           f"{', '.join(HEAVY)}: import it at the top"],
    }


def test_a_package_init_that_imports_a_heavy_library_makes_its_modules_heavy(tmp_path):
    root = _tree(tmp_path, {**GOOD, "encoders/__init__.py": "if True:\n    import onnxruntime\n",
                            "indexer/writer.py": "def open():\n    from medcbir.encoders import runtime\n"})
    assert {"medcbir.encoders", "medcbir.encoders.runtime"} <= heavy_modules(root)
    assert lazy_import_violations(root) == {}


@pytest.mark.parametrize("name", ["helpers.py", "api2.py"])
def test_an_unplaced_top_level_module_is_reported(tmp_path, name):
    root = _tree(tmp_path, {**GOOD, name: ""})
    assert violations(root) == [f"medcbir.{name[:-3]}: not placed in the layer order (add it to TOP_LEVEL in tests/test_layers.py)"]
