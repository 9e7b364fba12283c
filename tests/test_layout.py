"""The package's house rules, checked on its source: imports point down, no two modules import
each other (directly or through others), the CLI's console stays in the CLI, and torch stays out of
``import geofast``.

Layers, lowest first (a module may import its own layer and the ones below, never above; lazy
imports inside functions count too):

0. ``_geofast`` (the Rust extension), ``errors``, ``constants``, ``coords``, ``_io``, ``_progress``
1. ``images``, ``cache``, ``places``, ``models``, ``gallery``, ``evaluate``, ``llm``, ``testing``
2. ``db``, ``predict``
3. ``train``, ``output``, ``mapview``
4. ``serve``, ``bench``, ``cli``, ``_console`` (the top: user-facing programs)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "geofast"

LAYERS: dict[str, int] = {
    "_geofast": 0,
    "errors": 0,
    "constants": 0,
    "coords": 0,
    "_io": 0,
    "_progress": 0,
    "images": 1,
    "cache": 1,
    "places": 1,
    "models": 1,
    "gallery": 1,
    "evaluate": 1,
    "llm": 1,
    "testing": 1,
    "db": 2,
    "predict": 2,
    "train": 3,
    "output": 3,
    "mapview": 3,
    "serve": 4,
    "bench": 4,
    "cli": 4,
    "_console": 4,
    "__main__": 4,
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import of a geofast module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "geofast" or alias.name.startswith("geofast."):
                    found.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "geofast" or node.module.startswith("geofast."):
                found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def _module_name(path: Path) -> str:
    """``geofast.db.builder`` for ``python/geofast/db/builder.py``; a package is its ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["geofast", *parts])


def _is_module(name: str) -> bool:
    rel = PACKAGE.joinpath(*name.split(".")[1:])
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


#: Imports left out of the cycle check, each (importing package, imported module, name). The typer
#: app's command modules take ``app`` from ``geofast.cli``, whose ``__init__`` imports them to
#: register the commands (``test_cycle_exemptions_are_still_needed`` keeps this list honest).
CYCLE_EXEMPT: set[tuple[str, str, str]] = set()


def _exempt(here: str, module: str, name: str) -> bool:
    return any(here.startswith(pkg + ".") and module == m and name == n for pkg, m, n in CYCLE_EXEMPT)


def _module_edges(path: Path, *, exemptions: bool = True) -> list[tuple[int, str]]:
    """(line, geofast module) for every module ``path`` imports: at the top, inside functions, under
    ``TYPE_CHECKING`` (a type-only import is a dependency too), relative or absolute. ``from P import
    X`` names the submodule ``P.X`` when there is one, else the module ``P``."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges += [(node.lineno, a.name) for a in node.names if a.name == "geofast" or a.name.startswith("geofast.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module != "geofast" and not module.startswith("geofast."):
                continue
            for a in node.names:
                sub = f"{module}.{a.name}"
                if exemptions and not _is_module(sub) and _exempt(here, module, a.name):
                    continue
                edges.append((node.lineno, sub if _is_module(sub) else module))
    return [(line, m) for line, m in edges if _is_module(m) and m != here]


def _import_cycles(*, exemptions: bool = True) -> list[list[str]]:
    """Every strongly connected group of two or more modules in the import graph (Tarjan), each
    as one cycle through it, with the file and line of each import."""
    graph: dict[str, dict[str, int]] = {}
    files: dict[str, str] = {}
    for p in _modules():
        name = _module_name(p)
        files[name] = str(p.relative_to(PACKAGE.parent))
        for line, target in _module_edges(p, exemptions=exemptions):
            graph.setdefault(name, {}).setdefault(target, line)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
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
                groups.append(sorted(group))

    for v in sorted(files):
        if v not in index:
            visit(v)

    cycles = []
    for group in groups:
        members = set(group)
        # one concrete cycle through the group's first module (breadth-first back to it)
        start = group[0]
        prev: dict[str, str] = {}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in sorted(graph.get(v, {})):
                if w in members and w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [start]
        v = prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        path.append(start)
        path.reverse()
        cycles.append([f"{files[a]}:{graph[a][b]} imports {b}" for a, b in zip(path, path[1:])])
    return cycles


def test_no_import_cycles():
    """Data flows one way: no module imports itself back through others (lazy and type-only
    imports included), so each module can be read, tested and replaced on its own."""
    cycles = _import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


def test_cycle_exemptions_are_still_needed():
    """Each exemption hides a cycle that exists (remove it from ``CYCLE_EXEMPT`` once it is gone)."""
    hidden = [c for c in _import_cycles(exemptions=False) if c not in _import_cycles()]
    for pkg, module, name in CYCLE_EXEMPT:
        assert any(f"imports {module}" in step for c in hidden for step in c), f"{pkg}: {module}.{name} closes no cycle now"


def test_cycle_check_sees_lazy_type_only_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a cycle closed by an import inside a function, one under TYPE_CHECKING
    and one written relatively are each found (a package of three modules in a temporary folder)."""
    pkg = tmp_path / "geofast"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from geofast.sub.b import x\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    for closing in ("def f():\n    import geofast.sub.a\n", "from .a import y\n", "from geofast.sub import c\n"):
        (pkg / "sub" / "b.py").write_text("x = 1\n" + closing)
        assert _import_cycles(), closing
    (pkg / "sub" / "b.py").write_text("x = 1\n")
    assert not _import_cycles()


def test_every_module_has_a_layer():
    missing = sorted({_top(p) for p in _modules() if _top(p) != "__init__" and _top(p) not in LAYERS})
    assert not missing, f"add these top-level modules to LAYERS in {__file__}: {missing}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path):
    here = _top(path)
    if here == "__init__" or LAYERS[here] == 4:
        return  # the package root re-exports the public API; the programs on top may use it
    problems = []
    for line, module, names in _imports(path):
        parts = module.split(".")
        if len(parts) == 1:
            # `import geofast` / `from geofast import X`: only submodules may be named this way.
            bad = [n for n in names if (PACKAGE / n).with_suffix(".py").exists() is False and not (PACKAGE / n).is_dir()]
            if not names or bad:
                problems.append(f"line {line}: imports the package root ({', '.join(bad) or 'geofast'})")
                continue
            targets = names
        else:
            targets = [parts[1]]
        for target in targets:
            level = LAYERS.get(target)
            if level is not None and level > LAYERS[here]:
                problems.append(f"line {line}: {here} (layer {LAYERS[here]}) imports {target} (layer {level})")
    assert not problems, "\n".join(problems)


def test_library_never_imports_the_cli_console():
    offenders = [
        f"{p.relative_to(PACKAGE)}:{line}"
        for p in _modules()
        if LAYERS.get(_top(p), 0) < 4 and _top(p) != "__init__"
        for line, module, names in _imports(p)
        if module in ("geofast._console", "geofast.cli") or module.startswith("geofast.cli.") or "_console" in names
    ]
    assert not offenders, offenders
