"""Self-healing feedback (a pending flag on fs_feedback) and fleet-wide token revocation.

Rows logged before this revision were applied by the old protocol and are not pending.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fs_feedback") as batch:
        batch.add_column(sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index(
        "ix_fs_feedback_user", "fs_feedback", ["project", "model", "model_version", "user_key", "seq"]
    )
    op.create_index(
        "ix_fs_feedback_pending", "fs_feedback", ["project", "model", "model_version", "user_key"],
        postgresql_where=sa.text("pending"), sqlite_where=sa.text("pending = 1"),
    )
    op.create_table(
        "fs_token_revocations",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("fs_token_revocations")
    op.drop_index("ix_fs_feedback_pending", "fs_feedback")
    op.drop_index("ix_fs_feedback_user", "fs_feedback")
    with op.batch_alter_table("fs_feedback") as batch:
        batch.drop_column("pending")
