"""study manifests: the latest manifest of each study and its entries (study completeness)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:29:20.091818
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_manifests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("expected_instances", sa.Integer(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("manifest_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
    )
    with op.batch_alter_table("study_manifests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_manifests_site_id"), ["site_id"], unique=False)

    op.create_table(
        "study_manifest_entries",
        sa.Column("manifest_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["manifest_pk"], ["study_manifests.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("manifest_pk", "sop_instance_uid"),
    )


def downgrade() -> None:
    op.drop_table("study_manifest_entries")
    with op.batch_alter_table("study_manifests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_manifests_site_id"))

    op.drop_table("study_manifests")
