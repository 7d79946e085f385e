"""Every key of a config tree with its type, default and one-line doc, read from the dataclasses
themselves (the docstring under each field), so ``--help`` can never drift from the code."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal


@dataclass(frozen=True)
class KeyDoc:
    """One config key: ``section.key`` (deeper for nested sections), type, default and doc."""

    key: str
    type: str
    default: str
    doc: str


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in ``cls``'s source (first paragraph, one line)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # the class's statements
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            paragraph = inspect.cleandoc(after.value.value).split("\n\n")[0]
            docs[node.target.id] = " ".join(paragraph.split()).replace("``", "")
    return docs


def type_name(annotation: Any) -> str:
    """A short readable name of a field annotation (``int``, ``one of a|b``, ``list[str] or null``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _section(annotation: Any) -> type | None:
    """The dataclass of a (possibly optional) section annotation."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(cls: type, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of the config tree rooted at dataclass ``cls``, in declaration order. A
    section that is off by default (``null``) lists its keys with the section's own doc."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows: list[KeyDoc] = []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        section = _section(annotation)
        if section is not None:
            off = _default(f) is None
            sub = config_keys(section, f"{prefix}{f.name}.")
            if off:
                note = f"(section {prefix}{f.name} is off by default; setting a key switches it on)"
                sub = [dataclasses.replace(r, doc=f"{r.doc} {note}".strip()) for r in sub]
            rows.extend(sub)
            continue
        default = _default(f)
        default_text = json.dumps(default) if not isinstance(default, str) else default
        rows.append(KeyDoc(f"{prefix}{f.name}", type_name(annotation), default_text, docs.get(f.name, "")))
    return rows


def format_keys(rows: list[KeyDoc], width: int = 100) -> str:
    """The keys as ``--help`` text: a line with key, type and default, then the wrapped doc."""
    lines = []
    for r in rows:
        lines.append(f"  {r.key}  ({r.type}; default {r.default})")
        if r.doc:
            lines.extend(textwrap.wrap(r.doc, width, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)
