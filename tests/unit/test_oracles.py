"""Every oracle case through the engine in-process: batched results equal the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sluice.families import family_for
from sluice.registry import ModelSpec, Registry
from sluice.settings import Settings
from tests.models import OracleCase, all_cases, registry_toml
from worker.engine import Engine


def run_engine(spec: ModelSpec, inputs: list[dict[str, Any]], params: dict[str, Any],
               max_tokens: int = 2048, max_size: int = 16,
               settings: Settings | None = None) -> dict[int, dict[str, Any]]:  # fmt: skip
    family = family_for(spec.task)(spec, "cpu", settings)
    family.setup()
    engine = Engine(family, max_tokens, max_size)
    rows: dict[int, dict[str, Any]] = {}
    for results, _ in engine.run([(i, {**params, **x}) for i, x in enumerate(inputs)]):
        for r in results:
            rows[r.item] = {"label": r.label, "score": r.score, "output": r.output, "error": r.error,
                            "embedding": None if r.embedding is None else np.asarray(r.embedding).tolist(),
                            "artifacts": [(a.media_type, a.name, a.data) for a in r.artifacts]}  # fmt: skip
    return rows


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.model)
def test_engine_matches_oracle(case: OracleCase, tmp_path: Path) -> None:
    path = case.build(tmp_path / case.model)
    # Through a registry file, as the worker reads it: task-specific keys (a stride) land in options.
    # Every case is registered (beside this one's directory), as on a worker: an assistant_model is another case.
    entries = {c.model: {"task": c.task, "path": str(tmp_path / c.model), **c.registry} for c in all_cases()}
    entries[case.model]["path"] = str(path)
    helper = case.params.get("assistant_model")
    if helper:  # the model it names is built too
        entries[helper]["path"] = str(next(c for c in all_cases() if c.model == helper).build(tmp_path / helper))
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml(entries))
    spec = Registry.load(registry).get(case.model)
    settings = Settings(models_file=registry)
    inputs = case.inputs()
    expected = case.expected(path, inputs, case.params)
    rows = run_engine(spec, inputs, case.params, settings=settings)
    assert sorted(rows) == list(range(len(inputs)))
    for i, exp in enumerate(expected):
        case.check(exp, rows[i])
    # Batching must not change results: a budget of one feature per batch gives the same rows.
    alone = run_engine(spec, inputs[:20], case.params, max_tokens=1, max_size=1, settings=settings)
    for i in range(min(20, len(inputs))):
        case.check(expected[i], alone[i])
