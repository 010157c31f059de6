"""Every oracle case through the engine on a CUDA device: the GPU path (pinned-memory collation,
device tensors, batching by token budget) gives the CPU pipeline's answers.

Skipped without CUDA (CI has none); run on a GPU host with ``pytest tests/gpu``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sluice.families import family_for
from sluice.registry import Registry
from sluice.settings import Settings
from tests.models import OracleCase, all_cases, registry_toml
from worker.engine import Engine

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.model)
def test_engine_on_cuda_matches_the_cpu_oracle(case: OracleCase, tmp_path: Path) -> None:
    if case.params.get("do_sample"):
        pytest.skip("sampling draws from the device's generator: CUDA's stream differs from the CPU oracle's")
    path = case.build(tmp_path / case.model)
    registry = tmp_path / "models.toml"
    registry.write_text(registry_toml({case.model: {"task": case.task, "path": str(path), **case.registry}}))
    spec = Registry.load(registry).get(case.model)
    inputs = case.inputs()
    expected = case.expected(path, inputs, case.params)
    family = family_for(spec.task)(spec, "cuda:0", settings=Settings())
    family.setup()
    rows: dict[int, dict[str, Any]] = {}
    for results, _ in Engine(family, 16384, 128).run([(i, {**case.params, **x}) for i, x in enumerate(inputs)]):
        for r in results:
            rows[r.item] = {"label": r.label, "score": r.score, "output": r.output, "error": r.error,
                            "embedding": None if r.embedding is None else np.asarray(r.embedding).tolist(),
                            "artifacts": [(a.media_type, a.name, a.data) for a in r.artifacts]}  # fmt: skip
    assert sorted(rows) == list(range(len(inputs)))
    for i, exp in enumerate(expected):
        case.check(exp, rows[i])
