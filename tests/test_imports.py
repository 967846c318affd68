"""No import cycles in lmcore, late imports (inside functions) included.

Read from the source, not by importing: every ``import`` and ``from ... import``
anywhere in a module counts, except those under ``if TYPE_CHECKING:`` (they
never run). A registry that the modules it lists must read (the families in
``lmcore.models.config``, the tokenizer kinds in ``lmcore.tokenizers.base``)
is filled by the package as it loads them, so no module imports its own
package's ``__init__``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "lmcore"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _run_time_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: ``if TYPE_CHECKING:`` blocks left out."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """lmcore module -> the lmcore modules it imports (a name from a package counts as the package)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _run_time_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_lmcore_has_no_import_cycles() -> None:
    graph = import_graph()
    assert graph["lmcore.runlog"] and graph["lmcore.models"]  # the reader sees the imports
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(
        " <-> ".join(group) + " (" + ", ".join(f"{a} -> {b}" for a in group for b in sorted(graph[a] & set(group))) + ")"
        for group in found
    )


def test_no_submodule_imports_its_own_package() -> None:
    graph = import_graph()
    for name, imported in graph.items():
        package, _, leaf = name.rpartition(".")
        # lmcore's own __init__ imports nothing when loaded; a package's __main__ runs after its
        # package is loaded (``python -m``) and nothing imports it, so it cannot close a cycle.
        if package and package != "lmcore" and leaf != "__main__":
            assert package not in imported, f"{name} imports its package {package}"


def test_the_check_finds_a_late_import_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    tree = ast.parse("def f():\n    import x\nif TYPE_CHECKING:\n    import y\n")
    assert [a.name for node in _run_time_imports(tree) for a in node.names] == ["x"]
