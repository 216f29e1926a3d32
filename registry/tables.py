"""The SQL registry's tables (SQLAlchemy Core). The schema is owned by the Alembic migrations in
``migrations/``; a test proves these declarations match the migration head on SQLite and
PostgreSQL, so never change one without the other.

Definitions are stored as validity intervals: an object row is valid from ``from_version`` up to
(not including) ``to_version``; ``to_version`` is NULL while the object is current. Reading any
past version is one indexed query, and an apply writes only what changed.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

registry_head = sa.Table(
    "fs_registry_head",
    metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    # Optimistic concurrency: an apply moves this from N to N+1 with `WHERE version = N`.
    sa.Column("version", sa.Integer, nullable=False),
)

registry_versions = sa.Table(
    "fs_registry_versions",
    metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("git_commit", sa.String(64), nullable=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("applied_by", sa.String(255), nullable=False),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("summary", sa.Text, nullable=False, server_default=""),
)

registry_objects = sa.Table(
    "fs_registry_objects",
    metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("from_version", sa.Integer, primary_key=True),
    sa.Column("to_version", sa.Integer, nullable=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("spec_hash", sa.String(64), nullable=False),
    sa.Index("ix_fs_registry_objects_current", "project", "to_version"),
)

watermarks = sa.Table(
    "fs_watermarks",
    metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("feature_view", sa.String(63), primary_key=True),
    # Event time up to which (exclusive) both stores hold the view's data.
    sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

materializations = sa.Table(
    "fs_materializations",
    metadata,
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
    sa.Index("ix_fs_materializations_view", "project", "feature_view", "id"),
)

model_versions = sa.Table(
    "fs_model_versions",
    metadata,
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

active_models = sa.Table(
    "fs_active_models",
    metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("model", sa.String(63), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
)

# -- the serving logs (migration 0002) ---------------------------------------------------------
# The registry database doubles as the durable log of predictions and feedback: SQLite for the
# embedded default, PostgreSQL in production. Online model state is derived from these rows.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only

predictions = sa.Table(
    "fs_predictions",
    metadata,
    sa.Column("prediction_id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(63), nullable=False),
    sa.Column("model", sa.String(63), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    # JSON list of the candidate item keys, in the order of the rows of `features`.
    sa.Column("items", sa.Text, nullable=False),
    # The exact feature vectors served: float64 little-endian, len(items) x d, row-major.
    sa.Column("features", sa.LargeBinary, nullable=False),
    sa.Column("dimension", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_fs_predictions_created", "project", "created_at"),
)

feedback = sa.Table(
    "fs_feedback",
    metadata,
    # The order observations were accepted in: replay applies them in this order.
    sa.Column("seq", _BigId, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(63), nullable=False),
    sa.Column("feedback_id", sa.String(128), nullable=False),
    sa.Column("model", sa.String(63), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("user_key", sa.Text, nullable=False),
    sa.Column("item_key", sa.Text, nullable=False),
    sa.Column("label", sa.Float, nullable=False),
    sa.Column("prediction_id", sa.String(64), nullable=True),
    # The feature vector the update used (float64 little-endian), so replay needs no feature lookup.
    sa.Column("features", sa.LargeBinary, nullable=False),
    sa.Column("prediction", sa.Float, nullable=True),
    sa.Column("baseline", sa.Float, nullable=True),
    sa.Column("slice", sa.Text, nullable=True),
    sa.Column("event_ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    # True from the insert until the update is known to be in the online state (migration
    # 0003): rows pending long after they were received were cut off by a crash, and the
    # servers' catch-up rebuilds their users (featurestore/feedback/catch_up.py).
    sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("project", "feedback_id", name="uq_fs_feedback_id"),
    sa.Index("ix_fs_feedback_model", "project", "model", "model_version", "seq"),
    # One user's rows of a version, in order: the catch-up's and a restore's rebuilds.
    sa.Index("ix_fs_feedback_user", "project", "model", "model_version", "user_key", "seq"),
    # Partial: the pending rows are a handful at any time, so finding them costs nothing. (The
    # SQLite predicate is spelled as SQLAlchemy renders a boolean test there, or it is unused.)
    sa.Index(
        "ix_fs_feedback_pending", "project", "model", "model_version", "user_key",
        postgresql_where=sa.text("pending"), sqlite_where=sa.text("pending = 1"),
    ),
)

# -- revoked bearer tokens (migration 0003) -----------------------------------------------------
# Tokens are granted in featurestore.yaml (digests only); a revocation is recorded here so every
# server of the fleet refuses the token within seconds, without a restart or a config rollout.
token_revocations = sa.Table(
    "fs_token_revocations",
    metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
)
