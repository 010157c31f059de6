"""Models and migrations agree; upgrade -> downgrade -> upgrade works on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from sluice import migrate
from sluice.db import Base
from tests.conftest import make_settings


def test_upgrade_downgrade_upgrade_and_no_drift(fresh_database_url: str, tmp_path: Path) -> None:
    settings = make_settings(fresh_database_url, "redis://unused", tmp_path)
    engine = create_engine(fresh_database_url)
    try:
        migrate.upgrade(settings)
        migrate.downgrade(settings, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(settings)
        assert {"jobs", "items", "chunks", "workers"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        engine.dispose()
