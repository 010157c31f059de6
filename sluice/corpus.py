"""A corpus of real English documents built from text already on the machine, never downloaded.

Documents are the docstrings of the Python standard library's modules, classes and functions,
read with :mod:`ast` (nothing is imported or executed). They range from a few words to several
thousand characters, which is the mix of lengths that makes batching policy matter.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "__pycache__"}


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield " ".join(doc.split())


def stdlib_documents(limit: int | None = None, min_chars: int = 12) -> list[str]:
    """Distinct standard-library docstrings, in a stable order, whitespace-normalised."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    docs: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if _SKIP_PARTS.intersection(path.relative_to(root).parts):
            continue
        for doc in _docstrings(path):
            if len(doc) >= min_chars and doc not in seen:
                seen.add(doc)
                docs.append(doc)
                if limit is not None and len(docs) >= limit:
                    return docs
    return docs
