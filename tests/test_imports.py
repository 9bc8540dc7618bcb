"""The package's import graph, read from its import statements (top-level and inside functions alike): no
circles, and imports point one way, cli -> sweeps -> training/callbacks -> methods -> modulation/data/metrics."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hycam_pl"
# Higher layers may import lower ones, never the reverse (a layer may import itself).
LAYERS = {
    "hycam_pl.cli": 5,
    "hycam_pl.sweeps": 4,
    "hycam_pl.training": 3,
    "hycam_pl.callbacks": 3,
    "hycam_pl.methods": 2,
}
BASE_LAYER = 1  # modulation, data, metrics, backbone, gguf, io and the package root


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str | None] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names if alias.name.startswith("hycam_pl")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                    base = base.rstrip(".")
                if base.startswith("hycam_pl"):
                    for alias in node.names:
                        full = f"{base}.{alias.name}"
                        targets.add(full if full in known else resolve(base))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def layer(name: str) -> int:
    return max(
        (level for prefix, level in LAYERS.items() if name == prefix or name.startswith(prefix + ".")),
        default=BASE_LAYER,
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circles() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "hycam_pl.training.module" in graph["hycam_pl.training"]
    assert cycles(graph) == []


def test_imports_point_one_way() -> None:
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(source)
    )
    assert upward == []


def test_a_circle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
