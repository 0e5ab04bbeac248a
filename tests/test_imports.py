"""The import graph, read from the source (lazy imports inside functions included; only imports under
``if TYPE_CHECKING:``, which never run, are left out): no cycle among the project's modules, the core
imports no method, baselines use the public API, and tasks import no method's own modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adore", "baselines", "experiments", "scripts")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [ROOT / "run.py", *(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))]
    return {module_name(path): path for path in files}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its source (``from a import b`` counts as
    an import of ``a.b`` where that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def _edges(graph: dict[str, set[str]], source, target) -> list[str]:
    return sorted(f"{a} -> {b}" for a, imported in graph.items() if source(a) for b in imported if target(b))


def test_the_core_imports_no_method():
    graph = import_graph()
    in_core = lambda name: name.startswith("adore.core")  # noqa: E731
    is_method = lambda name: name.startswith(("baselines", "adore.release")) or name == "adore.methods"  # noqa: E731
    assert _edges(graph, in_core, is_method) == []


def test_baselines_import_only_the_public_api():
    graph = import_graph()
    private = lambda name: name.startswith("adore.")  # noqa: E731
    assert _edges(graph, lambda name: name.startswith("baselines"), private) == []


def test_tasks_import_no_method_module():
    graph = import_graph()
    is_task = lambda name: name.startswith("experiments") or name == "run"  # noqa: E731
    own = lambda name: name.startswith(("baselines", "adore.release"))  # noqa: E731
    assert _edges(graph, is_task, own) == []
