"""Log lines: JSON with context fields, the plain default, and secrets masked in every record."""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.logs import (
    FailureStreak,
    JsonFormatter,
    RedactFilter,
    Redactor,
    configure_logging,
    log_context,
    set_process_fields,
    settings_secrets,
)
from sluice.settings import Settings

SETTINGS = Settings(
    database_url="postgresql+psycopg://sluice:db-Secret-1@db:5432/sluice",
    broker_url="sentinel://:redis%2FSecret@s1:26379;sentinel://:redis%2FSecret@s2:26379",
    broker_sentinel_password="sentinel-Secret-3",  # type: ignore[arg-type]
    flower_basic_auth="admin:flower-Secret-4,ops:flower-Secret-5",  # type: ignore[arg-type]
)
SECRETS = ["db-Secret-1", "redis%2FSecret", "redis/Secret", "sentinel-Secret-3", "flower-Secret-4", "flower-Secret-5"]


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose records go through a JSON handler that redacts with SETTINGS's secrets."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter(Redactor(settings_secrets(SETTINGS))))
    logger = logging.getLogger("sluice.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)
    logger.propagate = True


def _lines(out: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_line_has_timestamp_level_logger_and_context(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = capture
    logger.info("outside")
    with log_context(job="job-1", chunk=7), log_context(model="minilm"):
        logger.warning("inside %d", 3)
    logger.info("after", extra={"worker": "gpu0@h"})
    first, inside, after = _lines(out)
    assert set(first) == {"timestamp", "level", "logger", "message"}
    assert first["timestamp"].endswith("+00:00") and first["logger"] == "sluice.test_logs"
    assert inside == {
        **inside,
        "level": "WARNING",
        "message": "inside 3",
        "job": "job-1",
        "chunk": "7",
        "model": "minilm",
    }
    assert after["worker"] == "gpu0@h" and "job" not in after


def test_secrets_are_masked_in_message_arguments_and_traceback(capture: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = capture
    key = "sk-sluice-AbC_dEf-123456789"
    logger.info("broker %s database %s", SETTINGS.broker_url, SETTINGS.database_url)
    logger.info("key %s, header Authorization: Bearer %s, flower %s", key, "tok-Secret-9",
                SETTINGS.flower_basic_auth.get_secret_value())  # type: ignore[union-attr]  # fmt: skip
    logger.info("sentinel said no to %s", "sentinel-Secret-3")
    try:
        raise ConnectionError("cannot reach redis://user:another-pw@h:6379/0 with redis/Secret")
    except ConnectionError:
        logger.exception("failed")
    text = out.getvalue()
    for secret in [*SECRETS, key, "tok-Secret-9", "another-pw"]:
        assert secret not in text
    lines = _lines(out)
    assert "sentinel://:***@s1:26379" in lines[0]["message"]
    assert "postgresql+psycopg://sluice:***@db:5432/sluice" in lines[0]["message"]
    assert "sk-sluice-***" in lines[1]["message"] and "Bearer ***" in lines[1]["message"]
    assert "redis://user:***@h:6379/0" in lines[3]["exc"] and "ConnectionError" in lines[3]["exc"]


def test_configure_logging_replaces_its_own_handler_and_keeps_text_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging(SETTINGS, "INFO")
        handler = configure_logging(SETTINGS, "INFO", worker="cpu0@h")
        assert [h for h in root.handlers if h not in before] == [handler]
        logging.getLogger("sluice.x").info("to %s", SETTINGS.database_url)
        err = capsys.readouterr().err
        assert " INFO sluice.x: to postgresql+psycopg://sluice:***@db:5432/sluice" in err
        assert "db-Secret-1" not in err and not err.lstrip().startswith("{")
        configure_logging(SETTINGS.model_copy(update={"log_format": "json"}), "INFO", worker="cpu0@h")
        logging.getLogger("sluice.x").info("json now")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["message"] == "json now" and line["worker"] == "cpu0@h"
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        root.setLevel(level)
        set_process_fields(worker=None)


def test_short_literals_are_not_masked_everywhere() -> None:
    redact = Redactor(["ab", "long-secret"])
    assert redact("a tab and a long-secret") == "a tab and a ***"


def test_the_session_end_scan_finds_a_named_secret_and_a_url_password_in_any_log() -> None:
    """tests/conftest.py runs this scan over every process log of a test run when it ends."""
    with tempfile.TemporaryDirectory() as tmp:  # not under the run's base temp, which the real scan reads
        _check_scan(Path(tmp))


def _check_scan(tmp_path: Path) -> None:
    from tests.secrets import REDIS_PASSWORD, WEBHOOK_SECRET, scan

    (tmp_path / "popen-gw1" / "var0").mkdir(parents=True)
    (tmp_path / "popen-gw1" / "var0" / "worker.log").write_text(f"signing with {WEBHOOK_SECRET}\n")
    (tmp_path / "api.log").write_text(f"connecting to redis://default:{REDIS_PASSWORD}@host:6379/0\n")
    (tmp_path / "clean.log").write_text("connecting to redis://default:***@host:6379/0 with sk-sluice-***\n")
    found = scan(tmp_path)
    assert set(found) == {"api.log", "popen-gw1/var0/worker.log"}
    assert found["popen-gw1/var0/worker.log"] == ["secret #6"]


def test_a_failure_streak_logs_its_start_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    streak = FailureStreak(logging.getLogger("sluice.test"))
    with caplog.at_level(logging.INFO, logger="sluice.test"):
        streak.succeeded("back")  # nothing failed: nothing to say
        for n in range(3):
            streak.failed(logging.WARNING, "down: %s", n)
        streak.succeeded("back")
        streak.succeeded("back")
        streak.failed(logging.ERROR, "down again")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "down: 0"), ("INFO", "back"), ("ERROR", "down again"),
    ]  # fmt: skip
