"""The package's house rules, checked on its source: imports point down, the CLI's console stays
in the CLI, and torch stays out of ``import geofast``.

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
