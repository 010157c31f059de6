"""Artifacts (items' binary results) against SQLite and PostgreSQL: written once with their rows,
summarised in result rows, streamed by the client and written as files by ``sluice results
--artifacts DIR``. No worker: results are written through the ledger as a worker's writer does
(the oracle cases of the image families run them through a real worker)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from producer.client import Client
from sluice.api.app import create_app
from sluice.families.base import Artifact, ItemResult
from sluice.ledger import Ledger
from tests.api_server import make_keys
from tests.conftest import make_settings, settings_env

PNG = "image/png"
NPY = "application/x-npy"
#: the summary of item 1's two artifacts in a result row
MASKS = [{"n": 0, "media_type": PNG, "bytes": 8, "name": "sky"},
         {"n": 1, "media_type": PNG, "bytes": 300, "name": "road"}]  # fmt: skip


@pytest.fixture
def client(migrated_database_url: str, broker_url: str, tmp_path: Path) -> Client:
    settings = make_settings(migrated_database_url, broker_url, tmp_path, chunk_size=8)
    client = Client(settings)
    client.dispatcher.send = lambda *a, **k: None  # type: ignore[method-assign]  # no worker here: keep Redis clean
    return client


def _results(first: bytes) -> list[ItemResult]:
    """Four items: one artifact, two artifacts, none (failed), and a label-only result."""
    return [
        ItemResult(item=0, output={"width": 2}, artifacts=[Artifact(PNG, first)]),
        ItemResult(item=1, label="sky", score=0.5,
                   artifacts=[Artifact(PNG, b"sky-mask", name="sky"), Artifact(PNG, b"\x00" * 300, name="road")]),
        ItemResult(item=2, error="ItemError: unreadable"),
        ItemResult(item=3, label="x", score=1.0),
    ]  # fmt: skip


def test_artifacts_are_written_once_with_their_rows(client: Client) -> None:
    job = client.submit("minilm", [f"doc {i}" for i in range(5)])
    store = Ledger.for_settings(client.settings)
    assert store.write_results({job: _results(b"first")}, "w1") == (3, 1)
    # A redelivered chunk (its results computed again, bytes and all) writes no row and no artifact.
    assert store.write_results({job: _results(b"second")}, "w2") == (0, 0)
    # The last item's result arrives in a batch with a repeat of item 0: only item 4 is written.
    late = [ItemResult(item=0, artifacts=[Artifact(PNG, b"third")]),
            ItemResult(item=4, artifacts=[Artifact(NPY, b"n")])]  # fmt: skip
    assert store.write_results({job: late}, "w3") == (1, 0)
    stored = [tuple(a) for a in client.artifacts(job)]
    assert stored == [
        (0, 0, None, PNG, b"first"), (1, 0, "sky", PNG, b"sky-mask"), (1, 1, "road", PNG, b"\x00" * 300),
        (4, 0, None, NPY, b"n"),
    ]  # fmt: skip
    assert [tuple(a) for a in client.artifacts(job, item=1)] == stored[1:3]
    assert list(client.artifacts(job, item=2)) == []
    rows = list(client.results(job))
    assert rows[0]["artifacts"] == [{"n": 0, "media_type": PNG, "bytes": 5, "name": None}]
    assert rows[1]["artifacts"] == MASKS
    assert ["artifacts" in row for row in rows] == [True, True, False, False, True]
    assert [row["item"] for row in client.results(job, after=0, limit=1)] == [1]  # paged reads keep their summaries
    assert next(iter(client.results(job, after=0, limit=1)))["artifacts"] == rows[1]["artifacts"]


def _cli(client: Client, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", *args], env=settings_env(client.settings), capture_output=True,
        text=True, check=True, timeout=120,
    )  # fmt: skip


def test_results_command_writes_artifact_files(client: Client, tmp_path: Path) -> None:
    job = client.submit("minilm", [f"doc {i}" for i in range(5)])
    store = Ledger.for_settings(client.settings)
    store.write_results({job: [*_results(b"first"), ItemResult(item=4, artifacts=[Artifact(NPY, b"npy")])]}, "w1")
    # Without --artifacts: each row's summary (media type, size, name), never the bytes.
    plain = [json.loads(line) for line in _cli(client, "results", job).stdout.splitlines()]
    assert plain[1]["artifacts"] == MASKS
    assert "artifacts" not in plain[2]
    # With it: <item>.<ext> for an item's only artifact, <item>-<n>.<ext> for several; their names in the rows.
    out = tmp_path / "out"
    _cli(client, "results", job, "--artifacts", str(out), "-o", str(tmp_path / "rows.jsonl"))
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1-0.png", "1-1.png", "4.npy"]
    assert [[a["path"] for a in row.get("artifacts", [])] for row in rows] == [
        ["0.png"], ["1-0.png", "1-1.png"], [], [], ["4.npy"],
    ]  # fmt: skip
    assert (out / "0.png").read_bytes() == b"first"
    assert (out / "1-1.png").read_bytes() == b"\x00" * 300
    assert (out / "4.npy").read_bytes() == b"npy"


def test_summaries_follow_every_page_of_a_long_job(client: Client) -> None:
    """Rows stream in pages of 1,000 (a server-side cursor on PostgreSQL); each page's summary
    query runs beside the open cursor, and every page's items get theirs."""
    job = client.submit("minilm", [f"doc {i}" for i in range(2500)])
    with_artifact = {0, 999, 1000, 1999, 2499}
    results = [ItemResult(item=i, artifacts=[Artifact(NPY, str(i).encode())] if i in with_artifact else [])
               for i in range(2500)]  # fmt: skip
    assert Ledger.for_settings(client.settings).write_results({job: results}, "w1") == (2500, 0)
    found = {row["item"]: row["artifacts"] for row in client.results(job) if "artifacts" in row}
    assert found == {i: [{"n": 0, "media_type": NPY, "bytes": len(str(i)), "name": None}] for i in with_artifact}


def test_the_api_serves_an_artifacts_bytes_to_its_owner_only(client: Client) -> None:
    """``GET /jobs/{id}/items/{item}/artifacts/{n}``: the bytes under their media type, as a download."""
    suffix = uuid.uuid4().hex[:6]
    key_of = make_keys(client.settings, suffix)
    job = client.submit("minilm", [f"doc {i}" for i in range(4)], owner=f"alice-{suffix}")  # alice's key's owner
    Ledger.for_settings(client.settings).write_results({job: _results(b"first")}, "w1")
    with TestClient(create_app(client.settings), headers={"Authorization": f"Bearer {key_of['alice']}"}) as http:
        row = json.loads(http.get(f"/jobs/{job}/results").text.splitlines()[1])
        assert row["artifacts"] == MASKS  # what an HTTP client reads first: which artifacts there are
        got = http.get(f"/jobs/{job}/items/1/artifacts/1")
        assert got.status_code == 200 and got.content == b"\x00" * 300
        assert got.headers["content-type"] == PNG and got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-disposition"] == 'attachment; filename="1-1.png"'
        missing = http.get(f"/jobs/{job}/items/2/artifacts/0")  # the failed item has none
        assert missing.status_code == 404 and "has no artifact 0" in missing.json()["error"]["message"]
        assert http.get(f"/jobs/{job}/items/-1/artifacts/0").status_code == 422
    with TestClient(create_app(client.settings), headers={"Authorization": f"Bearer {key_of['bob']}"}) as http:
        assert http.get(f"/jobs/{job}/items/1/artifacts/1").status_code == 404  # not bob's job
