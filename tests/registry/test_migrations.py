"""The SQLAlchemy table declarations must match the Alembic migration head, on both databases."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from registry.db import create_engine, current_revision, ensure_schema, head_revision, upgrade
from registry.errors import ConfigError
from registry.tables import metadata


def test_models_match_migration_head(registry_url: str) -> None:
    engine = create_engine(registry_url)
    assert upgrade(engine) == head_revision()
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    assert diff == []


def test_empty_database_is_initialised_on_first_use(registry_url: str) -> None:
    engine = create_engine(registry_url)
    assert current_revision(engine) is None
    ensure_schema(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_an_old_schema_is_not_migrated_silently(registry_url: str) -> None:
    engine = create_engine(registry_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE fs_registry_head (project VARCHAR(63) PRIMARY KEY, version INTEGER)"))
    try:
        ensure_schema(engine)
    except ConfigError as exc:
        assert "featurestore registry upgrade" in (exc.hint or "")
    else:
        raise AssertionError("ensure_schema accepted a database of unknown revision")
    finally:
        engine.dispose()


def test_upgrade_from_the_first_revision_keeps_data(registry_url: str) -> None:
    engine = create_engine(registry_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO fs_registry_head (project, version) VALUES ('p', 7)"))
    try:
        ensure_schema(engine)
    except ConfigError:
        pass
    else:
        raise AssertionError("an old revision must ask for `featurestore registry upgrade`")
    assert upgrade(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM fs_registry_head")).scalar() == 7
        assert "fs_feedback" in sa.inspect(conn).get_table_names()
    engine.dispose()
