"""Every oracle case through the real stack: Redis, a `sluice worker` process, SQLite/PostgreSQL."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Stack
from tests.models import OracleCase, all_cases


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.model)
def test_worker_matches_oracle(stack: Stack, case: OracleCase) -> None:
    inputs = case.inputs()
    path = stack.model_dirs[case.model]
    job = stack.client.submit(case.model, inputs, params=case.params)
    info = stack.client.wait(job, timeout=300)
    assert (info.total, info.done, info.failed) == (len(inputs), len(inputs), 0)
    rows = list(stack.client.results(job))
    assert [r["item"] for r in rows] == list(range(len(inputs)))
    expected = case.expected(path, inputs, case.params)
    for exp, row in zip(expected, rows, strict=True):
        case.check(exp, row)
