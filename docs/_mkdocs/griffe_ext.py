"""Griffe extension: docstrings that griffe's reading of the source misses.

Griffe reads the source without running it; two conventions of qiotask's
source carry documentation that way of reading does not see:

- ``#:`` comments above a module or class attribute (the convention Sphinx's
  autodoc reads): they become the attribute's docstring.
- A method defined under ``if TYPE_CHECKING:`` (for the type checker) and
  bound to a module function in the ``else:`` branch (what runs, as
  ``Task.run_in_thread = _threadjob.run_in_thread``): griffe keeps the
  stub, which has no docstring; it gets the docstring of the function that
  runs, which is what ``help()`` shows.

A special method or attribute with no docstring of its own (``__repr__``,
``__post_init__``, ``__slots__``) says nothing a reader needs: it is left
out (``__init__`` stays: its signature is the class's).

The docstrings are Google style with reST roles for cross-references
(``:class:`MainContext```, ``:meth:`cancel```), which Markdown would show
as they are: each becomes a link to the object's entry in the reference,
resolved from the docstring's scope as Sphinx would, or plain code where
the reference has no such entry.  A paragraph ending in reST's ``::``
before an indented example ends in ``:`` (the example is already an
indented code block to Markdown), as Sphinx shows it.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from typing import Any

import griffe

_LITERAL_MARKER = re.compile(r"(?<=\S)::(?=\n[ \t]*\n)")
_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|exc|obj|const):`([~!]?)([^`<>]+)`")


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


def _resolve(scope: griffe.Object, target: str) -> str:
    """The full path of ``target`` as named in ``scope``, else ``target``."""
    head, dot, rest = target.partition(".")
    try:
        return scope.resolve(head) + dot + rest
    except griffe.NameResolutionError:
        return target


def _crossref(scope: griffe.Object, match: re.Match[str]) -> str:
    role, prefix, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if prefix == "~" else target
    if role in ("func", "meth"):
        shown += "()"
    if prefix == "!":
        return f"`{shown}`"
    # An optional autoref: a link where the site has the object, plain code
    # (and no warning) where it does not.
    return f'<autoref identifier="{_resolve(scope, target)}" optional><code>{shown}</code></autoref>'


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class QiotaskDocstrings(griffe.Extension):
    def __init__(self) -> None:
        super().__init__()
        # (stub, module, dotted name in that module of the bound function)
        self._bindings: list[tuple[griffe.Object, griffe.Module, str]] = []

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, agent: Any, **kwargs: Any) -> None:
        if attr.docstring is not None or not isinstance(node, ast.AST) or attr.lineno is None:
            return
        lines = attr.module.lines
        comment: list[str] = []
        index = attr.lineno - 2  # the line above the assignment, 0-based
        while index >= 0 and lines[index].strip().startswith("#:"):
            comment.insert(0, lines[index].strip()[2:].removeprefix(" "))
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring(
                "\n".join(comment),
                lineno=index + 2,
                parent=attr,
                # The style mkdocs.yml sets, as griffe gives its own docstrings.
                parser=agent.docstring_parser,
                parser_options=agent.docstring_options,
            )

    def on_class_members(self, *, node: Any, cls: griffe.Class, **kwargs: Any) -> None:
        if not isinstance(node, ast.ClassDef):
            return
        for statement in node.body:
            if not (isinstance(statement, ast.If) and _is_type_checking(statement.test)):
                continue
            for assign in statement.orelse:
                if not (isinstance(assign, ast.Assign) and len(assign.targets) == 1):
                    continue
                target = assign.targets[0]
                stub = cls.members.get(target.id) if isinstance(target, ast.Name) else None
                if isinstance(stub, griffe.Object) and stub.docstring is None:
                    self._bindings.append((stub, cls.module, ast.unparse(assign.value)))

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for stub, module, dotted in self._bindings:
            head, _, rest = dotted.partition(".")
            try:
                bound = module[head]
                if rest:
                    bound = bound[rest]
            except (KeyError, griffe.AliasResolutionError):
                continue
            if bound.docstring is not None:
                stub.docstring = griffe.Docstring(
                    bound.docstring.value,
                    lineno=stub.lineno,
                    parent=stub,
                    parser=bound.docstring.parser,
                    parser_options=bound.docstring.parser_options,
                )
        silent = []
        for obj in _objects(pkg):
            special = obj.name.startswith("__") and obj.name.endswith("__") and obj.name != "__init__"
            if special and obj.docstring is None and obj.parent is not None and obj.parent.is_class:
                silent.append(obj)
            if obj.docstring is not None and ":" in obj.docstring.value:
                value = _ROLE.sub(functools.partial(_crossref, obj), obj.docstring.value)
                obj.docstring.value = _LITERAL_MARKER.sub(":", value)
        # Removed, not marked private: the reference reaches most classes
        # through aliases (qiotask.Task), which keep their own visibility.
        for obj in silent:
            del obj.parent.members[obj.name]  # type: ignore[union-attr]
