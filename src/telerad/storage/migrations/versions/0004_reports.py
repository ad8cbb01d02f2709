"""reports: report versions (original and addenda) and their DICOM SR documents

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 13:40:00

Hand-written. A final report row is immutable: triggers make UPDATE and DELETE of a row whose
status is ``final`` fail inside the database, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = [
    "CREATE TRIGGER reports_final_no_update BEFORE UPDATE ON reports "
    "WHEN OLD.status = 'final' "
    "BEGIN SELECT RAISE(ABORT, 'a final report is immutable'); END",
    "CREATE TRIGGER reports_final_no_delete BEFORE DELETE ON reports "
    "WHEN OLD.status = 'final' "
    "BEGIN SELECT RAISE(ABORT, 'a final report is immutable'); END",
]
_POSTGRES_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION telerad_reports_final_immutable() RETURNS trigger AS $$ "
    "BEGIN IF OLD.status = 'final' THEN "
    "RAISE EXCEPTION 'a final report is immutable'; END IF; "
    "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END; $$ LANGUAGE plpgsql",
    "CREATE TRIGGER reports_final_immutable BEFORE UPDATE OR DELETE ON reports "
    "FOR EACH ROW EXECUTE FUNCTION telerad_reports_final_immutable()",
]


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("predecessor_id", sa.Integer(), nullable=True),
        sa.Column("template", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_json", sa.Text(), nullable=False),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("author_user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("preliminary_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("signed_by_user_id", sa.Integer(), nullable=True),
        sa.Column("signer_name", sa.String(length=128), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("content_sha256", sa.String(length=64), nullable=True),
        sa.Column("record_sha256", sa.String(length=64), nullable=True),
        sa.Column("sr_series_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["author_user_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["predecessor_id"], ["reports.id"]),
        sa.ForeignKeyConstraint(["signed_by_user_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["reading_tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("predecessor_id", name="uq_reports_predecessor"),
        sa.UniqueConstraint("task_id", "sequence", name="uq_reports_task_sequence"),
    )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reports_study_uid"), ["study_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_reports_site_id"), ["site_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reports_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_reports_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_reports_author_user_id"), ["author_user_id"], unique=False
        )
    op.create_table(
        "report_documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    with op.batch_alter_table("report_documents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_report_documents_report_id"), ["report_id"], unique=False
        )
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_TRIGGERS if dialect == "sqlite" else _POSTGRES_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    with op.batch_alter_table("report_documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_report_documents_report_id"))
    op.drop_table("report_documents")
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reports_author_user_id"))
        batch_op.drop_index(batch_op.f("ix_reports_status"))
        batch_op.drop_index(batch_op.f("ix_reports_task_id"))
        batch_op.drop_index(batch_op.f("ix_reports_site_id"))
        batch_op.drop_index(batch_op.f("ix_reports_study_uid"))
    op.drop_table("reports")
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION IF EXISTS telerad_reports_final_immutable()")
