"""worklist: orders, reading tasks and their append-only events, routing rules, pools, readers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 13:21:08.015840

Hand-checked autogenerate output; ``task_events`` gets the same append-only triggers as
``audit_events`` (0001), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


_SQLITE_EVENT_TRIGGERS = [
    "CREATE TRIGGER task_events_no_update BEFORE UPDATE ON task_events "
    "BEGIN SELECT RAISE(ABORT, 'task_events is append-only'); END",
    "CREATE TRIGGER task_events_no_delete BEFORE DELETE ON task_events "
    "BEGIN SELECT RAISE(ABORT, 'task_events is append-only'); END",
]
_POSTGRES_EVENT_TRIGGER = [
    "CREATE OR REPLACE FUNCTION telerad_task_events_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'task_events is append-only'; END; $$ LANGUAGE plpgsql",
    "CREATE TRIGGER task_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
    "ON task_events FOR EACH STATEMENT EXECUTE FUNCTION telerad_task_events_append_only()",
]


def _make_events_append_only() -> None:
    """A task's history may only grow: UPDATE and DELETE fail inside the database itself."""
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_EVENT_TRIGGERS if dialect == "sqlite" else _POSTGRES_EVENT_TRIGGER:
        op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "reading_pools",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "reader_profiles",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("working_hours", sa.Text(), nullable=True),
        sa.Column("max_open_tasks", sa.Integer(), nullable=True),
        sa.Column("subspecialties", sa.String(length=256), nullable=False),
        sa.Column("last_assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "reading_pool_members",
        sa.Column("pool_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["pool_id"], ["reading_pools.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pool_id", "user_id"),
    )
    with op.batch_alter_table("reading_pool_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reading_pool_members_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "reading_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("clinical_question", sa.Text(), nullable=False),
        sa.Column("history", sa.Text(), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("referrer_user_id", sa.Integer(), nullable=True),
        sa.Column("requested_by_user_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["referrer_user_id"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_user_id"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
    )
    with op.batch_alter_table("reading_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reading_requests_referrer_user_id"), ["referrer_user_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_reading_requests_site_id"), ["site_id"], unique=False)

    op.create_table(
        "routing_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("priority", sa.String(length=8), nullable=True),
        sa.Column("assignee_user_id", sa.Integer(), nullable=True),
        sa.Column("pool_id", sa.Integer(), nullable=True),
        sa.Column("escalation_pool_id", sa.Integer(), nullable=True),
        sa.Column("set_priority", sa.String(length=8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["assignee_user_id"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["escalation_pool_id"], ["reading_pools.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["pool_id"], ["reading_pools.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("routing_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routing_rules_position"), ["position"], unique=False)

    op.create_table(
        "reading_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workitem_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("study_generation", sa.Integer(), nullable=False),
        sa.Column("study_completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modality", sa.String(length=64), nullable=False),
        sa.Column("body_part", sa.String(length=64), nullable=False),
        sa.Column("clinical_question", sa.Text(), nullable=False),
        sa.Column("assigned_user_id", sa.Integer(), nullable=True),
        sa.Column("pool_id", sa.Integer(), nullable=True),
        sa.Column("routing_rule_id", sa.Integer(), nullable=True),
        sa.Column("claimed_by_user_id", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("transaction_uid", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("follow_up_of_task_id", sa.Integer(), nullable=True),
        sa.Column("sla_flag", sa.String(length=16), nullable=True),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("canceled_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["assigned_user_id"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(
            ["claimed_by_user_id"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(
            ["follow_up_of_task_id"],
            ["reading_tasks.id"],
        ),
        sa.ForeignKeyConstraint(["pool_id"], ["reading_pools.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["reading_requests.id"],
        ),
        sa.ForeignKeyConstraint(["routing_rule_id"], ["routing_rules.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid", "study_generation", name="uq_reading_tasks_generation"),
        sa.UniqueConstraint("workitem_uid"),
    )
    with op.batch_alter_table("reading_tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reading_tasks_assigned_user_id"), ["assigned_user_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_reading_tasks_claimed_by_user_id"), ["claimed_by_user_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_reading_tasks_due_at"), ["due_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_reading_tasks_pool_id"), ["pool_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reading_tasks_site_id"), ["site_id"], unique=False)
        batch_op.create_index("ix_reading_tasks_state_due", ["state", "due_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_reading_tasks_study_uid"), ["study_uid"], unique=False)

    op.create_table(
        "task_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["reading_tasks.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_events_task_id"), ["task_id"], unique=False)
    _make_events_append_only()


def downgrade() -> None:
    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_events_task_id"))

    op.drop_table("task_events")
    with op.batch_alter_table("reading_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reading_tasks_study_uid"))
        batch_op.drop_index("ix_reading_tasks_state_due")
        batch_op.drop_index(batch_op.f("ix_reading_tasks_site_id"))
        batch_op.drop_index(batch_op.f("ix_reading_tasks_pool_id"))
        batch_op.drop_index(batch_op.f("ix_reading_tasks_due_at"))
        batch_op.drop_index(batch_op.f("ix_reading_tasks_claimed_by_user_id"))
        batch_op.drop_index(batch_op.f("ix_reading_tasks_assigned_user_id"))

    op.drop_table("reading_tasks")
    with op.batch_alter_table("routing_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routing_rules_position"))

    op.drop_table("routing_rules")
    with op.batch_alter_table("reading_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reading_requests_site_id"))
        batch_op.drop_index(batch_op.f("ix_reading_requests_referrer_user_id"))

    op.drop_table("reading_requests")
    with op.batch_alter_table("reading_pool_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reading_pool_members_user_id"))

    op.drop_table("reading_pool_members")
    op.drop_table("reader_profiles")
    op.drop_table("reading_pools")
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS telerad_task_events_append_only()")
