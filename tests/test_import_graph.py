"""The import graph of the installed code: no circles, and the layers point one way.

Read from the source with ast (nothing is imported): every `import stallscope.X` / `from
stallscope.X import Y` of a module under profiler/, analyzers/, fixes/ or cli.py, at any depth
in the module (function-local imports count too: they are still arrows). Imports under
`if TYPE_CHECKING:` are left out: they are annotations, never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("profiler", "analyzers", "fixes")


def _modules() -> dict[str, Path]:
    mods = {"stallscope.cli": ROOT / "cli.py", "stallscope": ROOT / "__init__.py"}
    for top in TOPS:
        for p in (ROOT / top).rglob("*.py"):
            if "__pycache__" in p.parts:
                continue
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("stallscope", *parts))
            mods[name.removesuffix(".__init__")] = p
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        type_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` needs the module pkg.sub; `from pkg import name` needs pkg
                names = [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod and name.startswith("stallscope."):
                    graph[mod].add(name)
    return graph


def _layer(mod: str) -> str:
    return mod.split(".")[1] if mod.count(".") >= 1 else "stallscope"


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_layers_point_one_way():
    """analyzers/ and fixes/ never import cli; analyzers/ never imports fixes/ (fix advice is
    looked up by id at render time); profiler/ (capture) imports neither analyzers/ nor cli."""
    forbidden = {"analyzers": {"cli", "fixes"}, "fixes": {"cli"}, "profiler": {"cli", "analyzers"}}
    bad = [f"{m} -> {n}" for m, deps in _graph().items() for n in deps
           if _layer(n) in forbidden.get(_layer(m), set())]
    assert not bad, "arrows against the layers:\n" + "\n".join(sorted(bad))
