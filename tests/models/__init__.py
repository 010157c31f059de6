"""Oracle cases: tiny models built offline, their inputs, and the reference each must match.

Each task family contributes :class:`OracleCase` objects (in ``tests/models/<family>.py``,
listed in :func:`all_cases`). The generic tests run every case through the engine in-process
(``tests/unit/test_oracles.py``) and through a real worker over Redis and a real database
(``tests/integration/test_oracles_e2e.py``), and compare every item with the case's oracle,
normally ``transformers.pipeline()`` on the same model directory and inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OracleCase:
    """One registered tiny model and how to check Sluice's results for it.

    ``expected(model_dir, inputs, params)`` returns one oracle row per input; ``check(expected,
    actual)`` asserts that Sluice's stored row (``label``, ``score``, ``output``, ``embedding``,
    ``error``) matches it: labels/spans/text exactly, scores within 1e-4.
    """

    model: str
    task: str
    build: Callable[[Path], Path]
    inputs: Callable[[], list[dict[str, Any]]]
    expected: Callable[[Path, list[dict[str, Any]], dict[str, Any]], list[Any]]
    check: Callable[[Any, dict[str, Any]], None]
    params: dict[str, Any] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"OracleCase({self.model})"


def all_cases() -> list[OracleCase]:
    """Every family's oracle cases."""
    from tests.models import (
        fill_mask,
        image_classification,
        question_answering,
        seq2seq,
        text_classification,
        text_generation,
        token_classification,
        zero_shot_classification,
        zero_shot_image_classification,
    )

    cases: list[OracleCase] = []
    for module in (
        text_classification,
        image_classification,
        zero_shot_image_classification,
        token_classification,
        fill_mask,
        text_generation,
        seq2seq,
        question_answering,
        zero_shot_classification,
    ):
        cases.extend(module.CASES)
    return cases


def registry_toml(entries: dict[str, dict[str, Any]]) -> str:
    """A registry file for ``{name: {"task": ..., "path": ..., ...}}``."""
    import json

    lines = []
    for name, table in entries.items():
        lines.append(f"[models.{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)
