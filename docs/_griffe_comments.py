"""A griffe extension for the docs build: `#:` comments above an attribute become its docstring.

mjasync documents its constants and the fields of its option Structs with `#:` comments (the form
Sphinx reads), which griffe ignores; without this, the reference would show `initial_interval: float =
1.0` with no sentence beside it. Loaded by mkdocs.yml (`extensions: [docs/_griffe_comments.py]`).
"""

from __future__ import annotations

from pathlib import Path

import griffe


class CommentDocstrings(griffe.Extension):
    """Give an attribute without a docstring the `#:` comment lines right above it."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **_: object) -> None:
        if attr.docstring is not None or attr.lineno is None or attr.filepath is None:
            return
        # An attribute's file is one path (a list only for namespace packages, which hold no attributes).
        if not isinstance(attr.filepath, Path) or attr.filepath not in attr.lines_collection:
            return
        lines = attr.lines_collection[attr.filepath]
        comment: list[str] = []
        number = attr.lineno - 2  # the line above the assignment, 0-based
        while number >= 0 and lines[number].lstrip().startswith("#:"):
            comment.insert(0, lines[number].lstrip()[2:].strip())
            number -= 1
        if comment:
            attr.docstring = griffe.Docstring(" ".join(comment), lineno=number + 2, parent=attr)
