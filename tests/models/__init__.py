"""Oracle cases: tiny models built offline, their inputs, and the reference each must match.

Each task family contributes :class:`OracleCase` objects (in ``tests/models/<family>.py``,
listed in :func:`all_cases`). The generic tests run every case through the engine in-process
(``tests/unit/test_oracles.py``) and through a real worker over Redis and a real database
(``tests/integration/test_oracles_e2e.py``), and compare every item with the case's oracle,
normally ``transformers.pipeline()`` on the same model directory and inputs.

Building a model and computing its oracle are the slow parts, so both happen once per test
session however many tests (and backends) use a case: ``case.build`` returns the directory
built first, and ``case.expected`` returns the rows already computed for the same model
directory, inputs and params, or a prefix of them for a prefix of the inputs (every oracle
computes each item alone, so its rows do not depend on the items after it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What this process built and computed: "built" model directories, "computed" oracle runs and
#: "reused" oracle answers (printed at the end of a test session).
stats: Counter[str] = Counter()
_built: dict[str, Path] = {}
_oracles: dict[tuple[str, str, str], tuple[list[dict[str, Any]], list[Any]]] = {}


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

    def __post_init__(self) -> None:
        self._build, self._expected = self.build, self.expected
        self.build, self.expected = self._build_once, self._expected_once  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"OracleCase({self.model})"

    def _build_once(self, path: Path) -> Path:
        """The case's model directory: built at ``path`` on first use, that directory afterwards."""
        if self.model not in _built:
            _built[self.model] = self._build(path)
            stats["built"] += 1
        return _built[self.model]

    def _expected_once(self, model_dir: Path, inputs: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        """The oracle's rows for ``inputs``, computed once per model directory, inputs and params."""
        key = (self.model, str(model_dir), _canonical(params))
        known = _oracles.get(key)
        if known is not None and _canonical(inputs) == _canonical(known[0][: len(inputs)]):
            stats["reused"] += 1
            return known[1][: len(inputs)]
        rows = self._expected(model_dir, inputs, params)
        stats["computed"] += 1
        if known is None or len(inputs) > len(known[0]):
            _oracles[key] = (list(inputs), list(rows))
        return rows


def _canonical(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=repr)


def all_cases() -> list[OracleCase]:
    """Every family's oracle cases: the ``CASES`` of each module of this package, by module name.

    Discovered, so that adding a family's cases is adding a module; sorted, so that every
    pytest-xdist process collects the same ids in the same order.
    """
    import importlib
    import pkgutil

    cases: list[OracleCase] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        cases.extend(getattr(module, "CASES", []))
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
