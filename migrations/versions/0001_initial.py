"""The first registry schema: versioned definitions, materialization state, model versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fs_registry_head",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "fs_registry_versions",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_by", sa.String(255), nullable=False),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.Column("summary", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "fs_registry_objects",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("from_version", sa.Integer, primary_key=True),
        sa.Column("to_version", sa.Integer, nullable=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_fs_registry_objects_current", "fs_registry_objects", ["project", "to_version"]
    )
    op.create_table(
        "fs_watermarks",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("feature_view", sa.String(63), primary_key=True),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "fs_materializations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("feature_view", sa.String(63), nullable=False),
        sa.Column("start_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows_read", sa.BigInteger, nullable=False),
        sa.Column("rows_offline", sa.BigInteger, nullable=False),
        sa.Column("rows_online", sa.BigInteger, nullable=False),
        sa.Column("rows_rejected", sa.BigInteger, nullable=False),
        sa.Column("registry_version", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_fs_materializations_view", "fs_materializations", ["project", "feature_view", "id"]
    )
    op.create_table(
        "fs_model_versions",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("model", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("registry_version", sa.Integer, nullable=False),
        sa.Column("data_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("data_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
        sa.Column("artifact", sa.Text, nullable=False, server_default=""),
    )
    op.create_table(
        "fs_active_models",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("model", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "fs_active_models",
        "fs_model_versions",
        "fs_materializations",
        "fs_watermarks",
        "fs_registry_objects",
        "fs_registry_versions",
        "fs_registry_head",
    ):
        op.drop_table(table)
