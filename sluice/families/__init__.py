"""Task families, discovered from this package: adding a task is adding a module here.

Every module defining a :class:`~sluice.families.base.TaskFamily` subclass with a ``task`` name
is picked up; nothing in the queue code changes. The modules in ``_SKIP`` are helpers (the
contract, shared checks and maths, collation, and the base classes families subclass): a family
module imports only those, never another family.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from sluice.errors import ConfigError
from sluice.families.base import TaskFamily

_SKIP = {"bark_speech", "base", "collate", "common", "donut", "generation", "generation_alone", "generation_options",
         "generation_scoring", "hf", "images", "vision_generation"}  # fmt: skip


@cache
def families() -> dict[str, type[TaskFamily]]:
    """Task name → family class, for every family module in this package."""
    found: dict[str, type[TaskFamily]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _SKIP:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, TaskFamily)
                and obj.__module__ == module.__name__
                and getattr(obj, "task", None)
            ):
                found[obj.task] = obj
    return found


def family_for(task: str) -> type[TaskFamily]:
    """The family class of ``task``; a :class:`ConfigError` listing the known tasks otherwise."""
    try:
        return families()[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r}; known tasks: {', '.join(sorted(families()))}") from None
