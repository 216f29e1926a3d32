"""The serving logs: predictions (what was served) and feedback (what was observed).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fs_predictions",
        sa.Column("prediction_id", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("user_key", sa.Text, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column("features", sa.LargeBinary, nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_fs_predictions_created", "fs_predictions", ["project", "created_at"])
    op.create_table(
        "fs_feedback",
        sa.Column("seq", _BigId, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("feedback_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("user_key", sa.Text, nullable=False),
        sa.Column("item_key", sa.Text, nullable=False),
        sa.Column("label", sa.Float, nullable=False),
        sa.Column("prediction_id", sa.String(64), nullable=True),
        sa.Column("features", sa.LargeBinary, nullable=False),
        sa.Column("prediction", sa.Float, nullable=True),
        sa.Column("baseline", sa.Float, nullable=True),
        sa.Column("slice", sa.Text, nullable=True),
        sa.Column("event_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("project", "feedback_id", name="uq_fs_feedback_id"),
    )
    op.create_index("ix_fs_feedback_model", "fs_feedback", ["project", "model", "model_version", "seq"])


def downgrade() -> None:
    op.drop_table("fs_feedback")
    op.drop_table("fs_predictions")
