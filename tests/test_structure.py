"""The house rules of issue 21, checked on the source: small files and functions, no import cycles
(function-local imports count), architecture names compared only inside the registry, core below the CLI,
and a README that stays a front door.

Each rule is a pure function over source text, tested on a hand-made case so that the rule itself can fail.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rcnn"
MAX_FILE_LINES = 500  # issue 21: no module in rcnn/ over 500 lines
MAX_FUNCTION_LINES = 60  # issue 21: no function over 60 lines
MAX_README_LINES = 250  # issue 21: the README is a front door
REGISTRY = "rcnn.arch"  # the only package that may compare architecture names
# A literal architecture name compared with == / != / in: what the registry replaces.
ARCH_COMPARISON = re.compile(r"""(==|!=)\s*["'](rcnn|fast|faster)["']|["'](rcnn|fast|faster)["']\s*(==|!=)"""
                             r"""|\bin\s*[(\[{]\s*["'](rcnn|fast|faster)["']\s*,""")
# rcnn.core sits below the toolkit: it may use these shared utility modules and nothing else outside rcnn.core.
CORE_MAY_IMPORT = ("rcnn.errors", "rcnn.io", "rcnn.clitools", "rcnn.devices")


def module_names(package: Path) -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` under ``package`` (``__init__`` named by its package)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` (module ``name``) imports anywhere, function bodies included."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m in known and m != name}


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    names = module_names(package)
    return {n: imported_modules(p.read_text(), n, p.name == "__init__.py", set(names)) for n, p in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of each function or method longer than ``limit`` lines, decorators excluded."""
    return [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit]


def arch_comparisons(source: str) -> list[str]:
    """Lines of ``source`` that compare a literal architecture name (comments stripped)."""
    return [line.strip() for line in source.splitlines() if ARCH_COMPARISON.search(line.split("#")[0])]


# --------------------------------------------------------------------------- the rules themselves can fail


def test_cycle_finder_sees_a_function_local_import() -> None:
    a = "import os\n"
    b = "def f():\n    from pkg import a\n"
    names = {"pkg.a", "pkg.b"}
    graph = {"pkg.a": imported_modules(a + "from .b import x\n", "pkg.a", False, names),
             "pkg.b": imported_modules(b, "pkg.b", False, names)}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert cycles({"pkg.a": {"pkg.b"}, "pkg.b": set()}) == []


def test_relative_imports_resolve_from_a_package_init() -> None:
    names = {"pkg", "pkg.sub", "pkg.sub.x", "pkg.y"}
    assert imported_modules("from . import x\nfrom ..y import z\n", "pkg.sub", True, names) == {"pkg.sub.x", "pkg.y"}


def test_long_function_and_arch_comparison_finders() -> None:
    body = "def f():\n" + "    x = 1\n" * 60
    assert long_functions(body) == [("f", 61)] and long_functions("def g():\n    pass\n") == []
    assert arch_comparisons('if arch == "fast":\nok = spec.name\nif a in ("rcnn", "fast"): pass\n# == "rcnn"\n') == [
        'if arch == "fast":', 'if a in ("rcnn", "fast"): pass']


# --------------------------------------------------------------------------- the rules on this repository


def test_no_import_cycles() -> None:
    assert cycles(import_graph(PACKAGE)) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_small_with_small_functions(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_FILE_LINES
    assert long_functions(source) == []


def test_architecture_names_are_compared_only_in_the_registry() -> None:
    names = module_names(PACKAGE)
    found = {n: arch_comparisons(p.read_text()) for n, p in names.items() if not (n == REGISTRY or n.startswith(REGISTRY + "."))}
    assert {n: lines for n, lines in found.items() if lines} == {}


def test_core_does_not_import_the_toolkit() -> None:
    graph = import_graph(PACKAGE)
    outside = {n: sorted(d for d in deps if not d.startswith("rcnn.core") and d not in CORE_MAY_IMPORT)
               for n, deps in graph.items() if n.startswith("rcnn.core")}
    assert {n: d for n, d in outside.items() if d} == {}


def test_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert "make demo" in text and "make test" in text
