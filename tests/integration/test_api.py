"""The native HTTP API as a real ``sluice api`` process on the session's stack (real worker, Redis,
SQLite and PostgreSQL): submit, follow, results, ownership and scopes, limits, keys, the schema."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sluice import migrate
from sluice.api.app import create_app
from sluice.cli import main
from sluice.settings import get_settings
from tests.api_server import ApiServer, make_keys, start_api, stop_api, wait_for
from tests.conftest import make_settings
from tests.integration.conftest import Stack, sluice

DOCS = ["The quick brown fox.", "Bulk inference over HTTP.", "Results come back in input order."]


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = start_api(stack.settings, stack.env, tmp_path_factory.mktemp("api") / "api.log")
    yield server
    stop_api(server)


def finished(http: httpx.Client, job: str) -> dict[str, Any] | None:
    body = http.get(f"/jobs/{job}").json()
    return body if body["status"] in ("completed", "failed", "cancelled") else None


def test_submit_follow_and_stream_results(api: ApiServer, stack: Stack) -> None:
    with api.client("alice") as http:
        created = http.post("/jobs", json={"model": "minilm", "items": [*DOCS[:2], {"text": DOCS[2], "key": "doc-3"}]})
        assert created.status_code == 201, created.text
        job = created.json()["id"]
        assert created.headers["location"] == f"/jobs/{job}" and created.json()["total"] == 3
        info = wait_for(lambda: finished(http, job), "the job to finish", timeout=90)
        assert info["status"] == "completed" and info["counts"] == {"done": 3} and info["progress"] == 1.0
        assert info["items_per_s"] > 0 and info["finished_at"]

        lines = http.get(f"/jobs/{job}/results").text.splitlines()
        assert [json.loads(line).get("key") for line in lines] == [None, None, "doc-3"]  # the user's own id
        assert [json.loads(line) for line in lines] == json.loads(json.dumps(list(stack.client.results(job))))
        cli_csv = sluice(stack, "results", job, "--format", "csv").stdout  # text mode: \r\n read as \n
        assert http.get(f"/jobs/{job}/results", headers={"Accept": "text/csv"}).text.replace("\r\n", "\n") == cli_csv
        assert http.get(f"/jobs/{job}/results?format=csv").headers["content-type"].startswith("text/csv")
        page = [json.loads(x) for x in http.get(f"/jobs/{job}/results?after=0&limit=1").text.splitlines()]
        assert [r["item"] for r in page] == [1]
        assert http.get(f"/jobs/{job}/results?status=failed").text == ""
        assert job in [j["id"] for j in http.get("/jobs?status=completed").json()["data"]]


def test_an_upload_is_rejected_with_the_cli_message_and_nothing_written(
    api: ApiServer, stack: Stack, tmp_path: Path
) -> None:
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n{not json\n', encoding="utf-8")
    cli = sluice(stack, "submit", str(bad), "--model", "minilm", check=False)
    assert cli.returncode != 0
    cli_message = cli.stderr.strip().removeprefix("error: ")
    with api.client("alice") as http:
        before = http.get("/jobs?limit=100").json()["data"]
        files = {"file": ("docs.jsonl", bad.read_bytes(), "application/octet-stream")}
        answer = http.post("/jobs", files=files, data={"model": "minilm"})
        assert answer.status_code == 422
        assert answer.json() == {"error": {"type": "validation_error", "message": cli_message}}
        assert http.get("/jobs?limit=100").json()["data"] == before

        table = "text,extra\nfirst row,1\nsecond row,2\n"
        good = http.post("/jobs", files={"file": ("t.csv", table.encode())}, data={"model": "minilm", "priority": "5"})
        assert good.status_code == 201 and good.json()["total"] == 2 and good.json()["priority"] == 5


def test_other_owners_get_404_and_scopes_hold(api: ApiServer) -> None:
    with api.client("alice") as alice:
        job = alice.post("/jobs", json={"model": "minilm", "items": ["mine"]}).json()["id"]
    with api.client("bob") as bob:
        for path in (f"/jobs/{job}", f"/jobs/{job}/results"):
            assert bob.get(path).status_code == 404
        refused = bob.post(f"/jobs/{job}/cancel")
        assert refused.status_code == 404 and refused.json()["error"]["type"] == "not_found"
        assert job not in [j["id"] for j in bob.get("/jobs").json()["data"]]
        assert bob.get("/workers").status_code == 403
    with api.client("alice-ro") as reader:
        assert reader.get(f"/jobs/{job}").status_code == 200  # same owner, read scope
        denied = reader.post("/jobs", json={"model": "minilm", "items": ["x"]})
        assert denied.status_code == 403 and "submit" in denied.json()["error"]["message"]
    with api.client("admin") as admin:
        assert admin.get(f"/jobs/{job}").status_code == 200
        assert any(w["live"] for w in admin.get("/workers").json()["data"])
    anonymous = httpx.get(f"{api.url}/jobs")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{api.url}/jobs", headers={"Authorization": "Bearer sk-sluice-nope"}).status_code == 401


def test_health_readiness_models_and_docs(api: ApiServer) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok", "checks": {}}
    ready = httpx.get(f"{api.url}/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok"}
    with api.client("alice-ro") as http:
        assert "minilm" in [m["name"] for m in http.get("/models").json()["data"]]
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}/results", "/v1/files", "/v1/batches"} <= set(schema["paths"])
    assert "swagger" in httpx.get(f"{api.url}/docs").text.lower()


def test_limits_answer_413_and_429_with_retry_after(stack: Stack) -> None:
    """In process, on the stack's database and Redis, with small limits."""
    settings = stack.settings.model_copy(update={"api_max_body_bytes": 4096, "api_max_job_items": 3,
                                                 "api_max_queued_items": 2, "api_max_file_lines": 2,
                                                 "api_retry_after": 7})  # fmt: skip
    key = make_keys(settings, "limits")["alice"]
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as http:
        assert http.post("/jobs", json={"model": "minilm", "items": ["x"] * 4}).status_code == 413
        big = http.post("/jobs", json={"model": "minilm", "items": ["x" * 5000]})
        assert big.status_code == 413 and "4,096 bytes" in big.json()["error"]["message"]
        full = http.post("/jobs", json={"model": "minilm", "items": ["a", "b", "c"]})  # 3 > room for 2
        assert full.status_code == 429 and full.headers["retry-after"] == "7"
        upload = http.post("/jobs", files={"file": ("d.txt", b"a\nb\nc\n")}, data={"model": "minilm"})
        assert upload.status_code == 429, upload.text  # counted while the file is read
        assert http.post("/jobs", json={"model": "minilm", "items": ["a"]}).status_code == 201
        lines = b"".join(json.dumps({"custom_id": str(i)}).encode() + b"\n" for i in range(3))
        over = http.post("/v1/files", files={"file": ("b.jsonl", lines)}, data={"purpose": "batch"})
        assert over.status_code == 413 and over.json()["error"]["type"] == "invalid_request_error"


def test_keys_command_and_start_refusals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sluice keys` prints a key once and stores only its hash; `sluice api` refuses to run
    without a key (unless --no-auth), and --no-auth off loopback (the CLI's main, in process)."""
    settings = make_settings(f"sqlite:///{tmp_path / 'k.db'}", "redis://127.0.0.1:1/0", tmp_path)
    migrate.upgrade(settings)
    monkeypatch.setenv("SLUICE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("SLUICE_VAR_DIR", str(tmp_path))
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    try:
        code, _, err = run("api", "--port", "1")
        assert code != 0 and "sluice keys create" in err
        code, _, err = run("api", "--no-auth", "--host", "0.0.0.0", "--port", "1")
        assert code != 0 and "loopback" in err
        code, out, err = run("keys", "create", "--name", "ci", "--scopes", "read,submit")
        key = out.strip()
        assert code == 0 and key.startswith("sk-sluice-") and key not in err
        code, out, _ = run("keys", "list")
        assert "ci" in out and key not in out and key[:14] in out
        assert key.encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("k.db*"))  # only its hash
        assert run("keys", "revoke", "ci")[0] == 0
        assert run("keys", "revoke", "ci")[0] != 0
        assert run("keys", "create", "--name", "x", "--scopes", "root")[0] != 0
    finally:
        get_settings.cache_clear()


def test_csv_upload_results_keep_rows(api: ApiServer) -> None:
    with api.client("alice") as http:
        job = http.post("/jobs", files={"file": ("d.txt", b"one\n\ntwo\n")}, data={"model": "minilm"}).json()["id"]
        wait_for(lambda: finished(http, job), "the job to finish", timeout=90)
        rows = list(csv.reader(io.StringIO(http.get(f"/jobs/{job}/results?format=csv").text)))
        assert rows[0] == ["item", "key", "status", "label", "score", "output", "error"]
        assert [r[0] for r in rows[1:]] == ["0", "1"] and {r[2] for r in rows[1:]} == {"done"}


def test_native_routes_pass_a_schemathesis_run(api: ApiServer) -> None:
    """About 100 generated requests over the native routes: no 5xx, and every answer (status code,
    content type, body) as /openapi.json documents it."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json").include(
        path_regex="^/(jobs|models|workers|healthz|readyz)"
    )
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: set[str] = set()

    @settings(max_examples=100, deadline=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=schema.as_strategy())
    def run(case: Any) -> None:
        seen.add(f"{case.method} {case.path}")
        case.call_and_validate(base_url=api.url, headers=api.auth("admin"), checks=checks, timeout=60)

    run()
    assert len(seen) >= 8, seen  # every native operation was exercised
