"""Griffe extension for the API reference (mkdocs.yml loads it; it is not part of the package).

- The Rust extension ``geofast._geofast`` has its types in the stub ``_geofast.pyi`` and its
  docstrings in the compiled module. Griffe inspects the compiled module and merges the stub,
  but a class whose ``__module__`` is ``geofast`` (``Gallery``) comes out as an alias of
  ``geofast.Gallery``, which is itself an alias of ``geofast._geofast.Gallery``: a cycle that
  renders as an empty entry. This extension puts the stub's class in its place, gives each
  overloaded method one entry (its most general signature), and fills every missing docstring
  from the imported extension.
- The docstrings cross-reference in Sphinx style (``:func:`geofast.topk```), which Markdown shows
  as raw text; those roles become inline code. Their doctest examples (``>>>`` lines, which
  Markdown shows as nested quotes) become Python code blocks.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_DOCTEST_FLAG = re.compile(r"\s*# doctest:.*$")


def _markdown(text: str) -> str:
    """Sphinx roles as inline code; runs of ``>>>`` / ``...`` lines as a fenced Python block."""
    text = _ROLE.sub(r"``\1``", text)
    if ">>>" not in text:
        return text
    out: list[str] = []
    block: list[str] = []
    for line in [*text.split("\n"), ""]:
        stripped = line.strip()
        if stripped.startswith((">>> ", "... ")) or stripped in (">>>", "..."):
            block.append(_DOCTEST_FLAG.sub("", stripped[4:]).rstrip())
            continue
        if block:
            out += ["```python", *block, "```"]
            block = []
        out.append(line)
    return "\n".join(out[:-1])


def _has_doc(obj: Any) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())


def _resolve(obj: Any) -> Any:
    if obj.is_alias:
        try:
            return obj.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


class GeofastDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "geofast" or pkg.filepath is None:
            return
        ext = pkg.members.get("_geofast")
        pyi = pkg.filepath.parent / "_geofast.pyi"  # type: ignore[union-attr]
        if isinstance(ext, griffe.Module) and pyi.is_file():
            stub = griffe.visit("_geofast", filepath=pyi, code=pyi.read_text(), parent=pkg)
            runtime = importlib.import_module("geofast._geofast")
            for name, member in stub.members.items():
                if not isinstance(member, griffe.Class):
                    continue
                current = ext.members.get(name)
                target = _resolve(current) if current is not None else None
                if target is None:  # missing, or an alias cycle
                    ext.set_member(name, member)
                    target = member
                for sub in (*member.members.values(), *(o[-1] for o in member.overloads.values() if o)):
                    if sub.name not in target.members:  # overloaded methods, dropped by the merge
                        target.set_member(sub.name, sub)
                self._fill_one(target, getattr(runtime, name, None))
            self._fill(ext, runtime)
        self._walk(pkg)

    def _fill_one(self, member: Any, value: Any) -> None:
        doc = inspect.getdoc(value) if value is not None else None
        if doc and not _has_doc(member):
            member.docstring = griffe.Docstring(_markdown(doc), parent=member)
        if isinstance(member, griffe.Class):
            self._fill(member, value)

    def _fill(self, obj: griffe.Module | griffe.Class, runtime: Any) -> None:
        for name, member in obj.members.items():
            if member.is_alias or (name.startswith("_") and name != "__init__"):
                continue
            value = getattr(runtime, name, None)
            if value is not None:
                self._fill_one(member, value)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _markdown(obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias and isinstance(member, griffe.Object):
                self._walk(member)
