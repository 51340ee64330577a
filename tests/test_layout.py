"""The package's import direction, read from the source (nothing is imported):

* no import cycle among the modules of ``emotion/``, counting their top-level imports and
  also the imports inside functions (which keep heavy modules out of processes that do
  not need them, and would hide a cycle that only shows when they run);
* no module of ``emotion/`` imports the entry-point package ``jobs``, except the console
  entry point ``emotion/cli.py``, which dispatches each command to its job by name;
* no module of ``emotion/`` restates a config default: the YAML under ``jobs/configs``
  holds every default, and code reads the parsed settings (``emotion.settings``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "emotion"
CONFIGS = PACKAGE.parent / "jobs" / "configs"
DISPATCHER = "emotion.cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _statements(tree: ast.Module, top_level: bool) -> list[ast.AST]:
    """Every node of ``tree``; with ``top_level``, only those outside functions (module
    level, including under ``if``, ``try`` and class bodies)."""
    if not top_level:
        return list(ast.walk(tree))
    nodes, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    return nodes


def imported_modules(module: str, tree: ast.Module, known: set[str], packages: set[str],
                     top_level: bool = True) -> set[str]:
    """The modules ``tree`` imports by name: ``import a.b`` -> ``a.b``; ``from a import
    x`` -> ``a.x`` where that is a module of ``known``, else ``a``. The parent packages an
    import initialises on the way are not counted, so a package whose ``__init__`` imports
    its own submodules (the usual layout) is no cycle, while a submodule that takes a
    name from its package's ``__init__`` is an edge to it."""
    out: set[str] = set()
    for node in _statements(tree, top_level):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, module in packages)
            for alias in node.names:
                out.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return out


def import_graph(top_level: bool = True) -> dict[str, set[str]]:
    """Module of ``emotion`` -> the modules of ``emotion`` it imports (with ``top_level``,
    only those its top-level statements import)."""
    trees = modules()
    known, packages = set(trees), {name for name in trees if _is_package(name)}
    return {name: {m for m in imported_modules(name, tree, known, packages, top_level) if m in known and m != name}
            for name, tree in trees.items()}


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "emotion.predictor" in graph and "emotion.models.loading" in graph["emotion.predictor"]
    assert find_cycles(graph) == []
    assert find_cycles(import_graph(top_level=False)) == []


def test_checkpoint_and_registry_do_not_import_each_other():
    trees = modules()
    known = set(trees)
    for module, other in (("emotion.checkpoint", "emotion.models.registry"),
                          ("emotion.models.registry", "emotion.checkpoint")):
        assert other not in imported_modules(module, trees[module], known, set(), top_level=False)


def _imports_jobs_by_name(tree: ast.Module) -> bool:
    """``importlib.import_module("jobs...")`` or ``__import__("jobs...")``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            value = node.args[0].value
            if called in ("import_module", "__import__") and isinstance(value, str) and \
                    (value == "jobs" or value.startswith("jobs.")):
                return True
    return False


def test_the_library_does_not_import_jobs():
    trees = modules()
    known, packages = set(trees), {name for name in trees if _is_package(name)}
    offenders = []
    for name, tree in trees.items():
        imported = imported_modules(name, tree, known, packages, top_level=False)
        if any(m == "jobs" or m.startswith("jobs.") for m in imported):
            offenders.append(name)
        elif name != DISPATCHER and _imports_jobs_by_name(tree):
            offenders.append(name)
    assert offenders == []


# -- config defaults ------------------------------------------------------------------------
# (module, key) pairs allowed to read a config key with a default of their own, and why.
RESTATED_DEFAULT_EXCEPTIONS = {
    # Dataset rows (emotion.data.records), not config: a row written before the column existed.
    ("emotion.data.records", "split"): "a dataset row's column",
    ("emotion.data.records", "label_set"): "a dataset row's column",
}


def config_keys() -> set[str]:
    """Every key of every YAML file under ``jobs/configs``."""
    keys: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            keys.update(k for k in value if isinstance(k, str))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in CONFIGS.rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    return keys - {"defaults", "hydra"}


def _literal(node: ast.AST) -> bool:
    """A constant other than None (``-1``, a tuple of numbers, ... included)."""
    try:
        return ast.literal_eval(node) is not None
    except ValueError:
        return False


def restated_defaults(tree: ast.Module, keys: set[str]) -> list[tuple[int, str, str]]:
    """``x.get("<key>", <literal>)`` and ``x.setdefault("<key>", <literal>)`` calls whose
    key is a config key: (line, key, source)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("get", "setdefault", "pop") and len(node.args) == 2 and \
                isinstance(node.args[0], ast.Constant) and node.args[0].value in keys and _literal(node.args[1]):
            found.append((node.lineno, node.args[0].value, ast.unparse(node)))
    return found


def test_the_default_finder_finds_restated_defaults():
    tree = ast.parse('a = cfg.get("lr", 1e-3)\nb = cfg.get("lr")\nc = cfg.get("lr", None)\n'
                     'd = cfg.get("betas", (0.9, 0.999))\ne = cfg.get("other", 1)\nf = cfg.get("lr", x)\n')
    assert [(line, key) for line, key, _ in restated_defaults(tree, {"lr", "betas"})] == [(1, "lr"), (4, "betas")]


def test_no_config_default_is_restated_in_the_library():
    keys = config_keys()
    assert {"warmup_epochs", "top_k", "label_smoothing", "log_every", "max_batch_size"} <= keys
    found = [(name, key, f"{name}:{line}: {source}") for name, tree in modules().items()
             for line, key, source in restated_defaults(tree, keys)]
    assert [where for name, key, where in found if (name, key) not in RESTATED_DEFAULT_EXCEPTIONS] == []
    # The list stays true: an exception whose default is gone leaves it.
    assert set(RESTATED_DEFAULT_EXCEPTIONS) - {(name, key) for name, key, _ in found} == set()
