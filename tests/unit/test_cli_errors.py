"""The command line's errors: one line on stderr with an exit code, the traceback only with --debug.

Services are made unreachable by pointing at port 1 (nothing listens there): no Redis or
database server is needed. The broker-down submit stores its job in a SQLite file.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sluice import cli
from sluice.cli import EXIT_INVALID, EXIT_UNREACHABLE, build_parser, main
from sluice.errors import DatabaseUnavailableError
from sluice.settings import Settings
from tests.secrets import UNIT_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = UNIT_PASSWORD
DOWN_DATABASE = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/none"
DOWN_BROKER = f"redis://:{PASSWORD}@127.0.0.1:1/0"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "sluice.cli", *args], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def params(*raw: str) -> list[tuple[str, Any]]:
    args = build_parser().parse_args(["submit", "in.txt", "--model", "m", *[f"--param={r}" for r in raw]])
    return list(args.param)


# --param ----------------------------------------------------------------------------------


def test_param_bare_words_are_strings_and_json_is_parsed() -> None:
    assert params("lang=en", "version=1.2.3", "day=2024-01-01", "empty=", 'say=Hello "you"') == [
        ("lang", "en"), ("version", "1.2.3"), ("day", "2024-01-01"), ("empty", ""), ("say", 'Hello "you"'),
    ]  # fmt: skip
    assert params('labels=["a","b"]', "n=3", "x=-0.5", "on=true", "none=null", 's="[x]"', 'o={"a": 1}') == [
        ("labels", ["a", "b"]), ("n", 3), ("x", -0.5), ("on", True), ("none", None), ("s", "[x]"), ("o", {"a": 1}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('candidate_labels=["a",', r"candidate_labels: '\[\"a\",' is not valid JSON \(Expecting value at column 6\)"),
        ('o={"a": 1', r"o: .* is not valid JSON \(Expecting ',' delimiter"),
        ('s="unterminated', r"s: .* is not valid JSON \(Unterminated string"),
        ("x=0.5,", r"x: '0.5,' is not valid JSON \(Extra data"),
        ("flag=true]", r"flag: 'true\]' is not valid JSON"),
        ("x=NaN", r"x: 'NaN' holds NaN or Infinity"),
        ("x=[1, -Infinity]", r"x: .* holds NaN or Infinity"),
        ("x=1e999", r"x: '1e999' holds NaN or Infinity"),
        ("novalue", r"--param wants KEY=JSON"),
    ],
)
def test_param_that_looks_like_json_but_is_not_is_a_usage_error(
    raw: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        params(raw)
    assert exc.value.code == EXIT_INVALID
    err = capsys.readouterr().err
    assert "argument --param:" in err
    assert __import__("re").search(expected, err), err


# infrastructure errors --------------------------------------------------------------------

DOWN = {"SLUICE_DATABASE_URL": DOWN_DATABASE, "SLUICE_BROKER_URL": DOWN_BROKER}


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["submit", "{input}", "--model", "minilm"], "database"),
        (["status", "some-job"], "database"),
        (["results", "some-job"], "database"),
        (["jobs"], "database"),
        (["workers"], "database"),
        (["workers", "--check", "node@host"], "database"),
        (["cancel", "some-job"], "database"),
        (["db", "current"], "database"),
        (["db", "upgrade"], "database"),
        (["reconcile"], "broker"),
    ],
)
def test_unreachable_service_is_one_redacted_line(args: list[str], what: str, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
    res = run_cli(*[a.format(input=tmp_path / "in.txt") for a in args], env=DOWN)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == EXIT_UNREACHABLE, res.stderr
    assert 1 <= len(lines) <= 2 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"error: the {what} at ") and "is unreachable" in lines[0]
    assert PASSWORD not in res.stderr + res.stdout and ":***@127.0.0.1:1" in lines[0]


def test_debug_shows_the_traceback_before_the_line(tmp_path: Path) -> None:
    for args in (["--debug", "jobs"], ["db", "current", "--debug"]):
        res = run_cli(*args, env=DOWN)
        assert res.returncode == EXIT_UNREACHABLE
        assert "Traceback (most recent call last)" in res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("error: the database at postgresql+psycopg://postgres:***@127.0.0.1:1/none")


def test_other_errors_are_one_line_too(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"  # no tables: never migrated
    res = run_cli("jobs", env={**DOWN, "SLUICE_DATABASE_URL": empty})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: the database at {empty} failed (OperationalError: no such table: jobs); run `sluice db upgrade`"
    ]
    res = run_cli("jobs", env={**DOWN, "SLUICE_CHUNK_SIZE": "lots"})
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: invalid settings: SLUICE_CHUNK_SIZE: ")
    res = run_cli("jobs", env={**DOWN, "SLUICE_DATABASE_URL": f"nodb://u:{PASSWORD}@h/x"})
    assert res.returncode == 1 and "Traceback" not in res.stderr and PASSWORD not in res.stderr
    assert res.stderr.startswith("error: the database URL nodb://u:***@h/x cannot be used")


def test_unexpected_exception_is_one_line_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(args: Any, settings: Any) -> int:
        raise RuntimeError(f"lost postgresql://me:{PASSWORD}@db/x\nsecond line")

    monkeypatch.setattr(cli, "cmd_jobs", boom)
    assert main(["jobs"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "error: unexpected RuntimeError: lost postgresql://me:***@db/x (run with --debug for the traceback)"
    ]
    assert main(["jobs", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: unexpected RuntimeError")


def test_a_broker_error_that_escapes_untranslated_is_one_line() -> None:
    from kombu.exceptions import OperationalError

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise OperationalError(str(exc)) from exc
    except OperationalError as exc:
        message, code = cli.describe_error(exc, Settings(broker_url=DOWN_BROKER))
    assert code == EXIT_UNREACHABLE
    assert message.startswith("the broker at redis://:***@127.0.0.1:1/0 is unreachable (OperationalError:")


def test_reconcile_every_logs_a_failed_pass_as_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The periodic reconcile says what failed in one line (no traceback unless debug) and carries on."""
    from sluice import recovery

    class Stop(Exception):
        pass

    def down(*_: object, **__: object) -> int:
        raise DatabaseUnavailableError("the database at postgresql://u:***@h/x is unreachable")

    def sleep(_: float) -> None:
        raise Stop

    monkeypatch.setattr(recovery, "reconcile", down)
    monkeypatch.setattr(recovery.time, "sleep", sleep)
    dispatcher = type("D", (), {"settings": Settings()})()
    with caplog.at_level(logging.ERROR, logger="sluice.reconcile"), pytest.raises(Stop):
        recovery.reconcile_every(dispatcher, 1.0)  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "reconcile pass failed: the database at postgresql://u:***@h/x is unreachable"
    ]
    assert all(r.exc_info is None for r in caplog.records)


def test_help_lists_the_exit_codes() -> None:
    text = build_parser().format_help()
    assert "exit codes:" in text and "3    a service is unreachable" in text and "--debug" in text


# broker down at submit --------------------------------------------------------------------


def test_submit_with_the_broker_down_prints_the_id_and_one_line(tmp_path: Path) -> None:
    env = {"SLUICE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "SLUICE_BROKER_URL": DOWN_BROKER,
           "SLUICE_VAR_DIR": str(tmp_path)}  # fmt: skip
    assert run_cli("db", "upgrade", env=env).returncode == 0
    (tmp_path / "in.txt").write_text("one\ntwo\n", encoding="utf-8")
    res = run_cli("submit", str(tmp_path / "in.txt"), "--model", "minilm", env=env)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    assert len(job) == 36
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr  # the client's own log warning is not printed as well
    assert lines[0].startswith(f"warning: job {job} is stored and queued; it will be sent when the broker is back")
    assert "`sluice reconcile" in lines[0] and "redis://:***@127.0.0.1:1/0 is unreachable" in lines[0]
    assert PASSWORD not in res.stderr
    listed = run_cli("jobs", env=env)
    assert listed.stdout.split()[:2] == [job, "queued"]


def test_submit_wait_still_waits_when_the_broker_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from producer.client import Client
    from sluice import migrate
    from sluice.settings import get_settings

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for key, value in {"SLUICE_DATABASE_URL": url, "SLUICE_BROKER_URL": DOWN_BROKER,
                       "SLUICE_VAR_DIR": str(tmp_path)}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    migrate.upgrade(Settings())
    waited: list[str] = []
    real_wait = Client.wait

    def wait(self: Client, job_id: str, **kwargs: Any) -> Any:
        waited.append(job_id)
        assert job_id in self.unsent
        self.ledger.cancel(job_id)  # no worker here: end the job so that waiting returns
        return real_wait(self, job_id)

    monkeypatch.setattr(Client, "wait", wait)
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "one"}) + "\n", encoding="utf-8")
    try:
        code = main(["submit", str(tmp_path / "in.jsonl"), "--model", "minilm", "--wait"])
    finally:
        get_settings.cache_clear()
    out, err = capsys.readouterr()
    assert waited == [out.strip()]
    assert code == 1  # cancelled, not completed
    assert err.count("is stored and queued") == 1 and f"job {waited[0]}" in err and "status: cancelled" in err
