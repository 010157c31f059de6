"""schedules: schedule ticks, schedule state and the scheduler's lease (issue 15)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when(name: str, nullable: bool = True, primary_key: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, primary_key=primary_key)


def upgrade() -> None:
    op.create_table(
        "schedule_ticks",
        sa.Column("schedule", sa.String(128), primary_key=True),
        _when("scheduled_at", nullable=False, primary_key=True),
        sa.Column("trigger", sa.String(8), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
        _when("since"),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        _when("claimed_at", nullable=False),
        _when("started_at"),
        sa.Column("job_status", sa.String(16), nullable=True),
        _when("ended_at"),
        sa.Column("sink_status", sa.String(16), nullable=True),
        sa.Column("sink_attempts", sa.Integer(), nullable=False),
        _when("sink_next_at"),
        sa.Column("sink_target", sa.Text(), nullable=True),
        sa.Column("sink_rows", sa.Integer(), nullable=True),
        sa.Column("sink_error", sa.Text(), nullable=True),
        _when("sink_at"),
    )
    op.create_index("ix_schedule_ticks_outcome", "schedule_ticks", ["outcome", "ended_at"])
    op.create_index("ix_schedule_ticks_sink", "schedule_ticks", ["sink_status"])
    op.create_table(
        "schedules",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        _when("first_seen_at", nullable=False),
        _when("paused_at"),
        _when("resumed_at"),
    )
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        _when("acquired_at", nullable=False),
        _when("expires_at", nullable=False),
    )


def downgrade() -> None:
    op.drop_table("scheduler_leases")
    op.drop_table("schedules")
    op.drop_index("ix_schedule_ticks_sink", table_name="schedule_ticks")
    op.drop_index("ix_schedule_ticks_outcome", table_name="schedule_ticks")
    op.drop_table("schedule_ticks")
