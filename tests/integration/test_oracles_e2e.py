"""Every oracle case through the real stack: Redis, a `sluice worker` process, SQLite/PostgreSQL.

Each family runs from the Python client on both databases, and from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, sluice
from tests.models import OracleCase, all_cases


@pytest.mark.parametrize("case", all_cases(), ids=lambda c: c.model)
def test_worker_matches_oracle(stack: Stack, case: OracleCase) -> None:
    inputs = case.inputs()
    path = stack.model_dirs[case.model]
    job = stack.client.submit(case.model, inputs, params=case.params)
    info = stack.client.wait(job, timeout=300, poll_s=0.1)
    assert (info.total, info.done, info.failed) == (len(inputs), len(inputs), 0)
    rows = with_artifact_bytes(stack, job, list(stack.client.results(job)))
    assert [r["item"] for r in rows] == list(range(len(inputs)))
    expected = case.expected(path, inputs, case.params)
    for exp, row in zip(expected, rows, strict=True):
        case.check(exp, row)


def with_artifact_bytes(stack: Stack, job: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose ``artifacts`` summary is replaced by the bytes, as checks read them:
    ``[(media_type, name, data), ...]``, fetched with the client (rows of a job without any are left alone)."""
    if not any("artifacts" in row for row in rows):
        return rows
    stored: dict[int, list[tuple[str, str | None, bytes]]] = {}
    for artifact in stack.client.artifacts(job):
        stored.setdefault(artifact.item, []).append((artifact.media_type, artifact.name, artifact.data))
    for row in rows:
        summary = row.get("artifacts", [])
        assert [(a["media_type"], a["name"], a["bytes"]) for a in summary] == [
            (media_type, name, len(data)) for media_type, name, data in stored.get(row["item"], [])
        ]
        row["artifacts"] = stored.get(row["item"], [])
    return rows


#: One task per kind of stored result: a label and score, entities, generated text, an answer span.
CLI_TASKS = ("text-classification", "token-classification", "text-generation", "question-answering")


def one_case_per_task() -> list[OracleCase]:
    by_task: dict[str, OracleCase] = {}
    for case in all_cases():
        by_task.setdefault(case.task, case)
    return [by_task[task] for task in CLI_TASKS if task in by_task]


# The command line is the same code over either database and every task (the client path above
# covers both databases and every case), so it runs one case per kind of result.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", one_case_per_task(), ids=lambda c: c.model)
def test_cli_matches_oracle(stack: Stack, case: OracleCase, tmp_path: Path) -> None:
    """A JSONL file in through ``sluice submit --wait``, ``sluice results`` out, as the client path."""
    inputs = case.inputs()[:3]
    path = stack.model_dirs[case.model]  # built (on first use) before the worker is asked to load it
    src = tmp_path / "items.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in inputs), encoding="utf-8")
    params = [arg for key, value in case.params.items() for arg in ("--param", f"{key}={json.dumps(value)}")]
    submitted = sluice(stack, "submit", str(src), "--model", case.model, *params, "--wait")
    job = submitted.stdout.strip()
    assert f"done={len(inputs)} failed=0" in submitted.stderr
    rows = [json.loads(line) for line in sluice(stack, "results", job).stdout.splitlines()]
    assert [r["item"] for r in rows] == list(range(len(inputs)))
    expected = case.expected(path, inputs, case.params)
    for exp, row in zip(expected, rows, strict=True):
        case.check(exp, row)
