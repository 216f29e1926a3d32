"""Engines and schema migrations for the SQL registry (SQLite embedded, PostgreSQL in production).

An empty database is initialised to the migration head on first use, so the embedded default
needs no setup step. A database at an older revision is *not* migrated behind the user's back:
shared production databases are upgraded deliberately with `featurestore registry upgrade`.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry.errors import ConfigError, StoreUnavailableError


def create_engine(url: str) -> Engine:
    """An engine with the settings the registry relies on.

    >>> create_engine("sqlite:///:memory:").dialect.name
    'sqlite'
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        # Use psycopg 3, the driver the project depends on, not psycopg2.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(
            f"bad registry URL {url!r}: {exc}",
            hint="use sqlite:///path/registry.db or postgresql+psycopg://user@host/db",
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            # WAL lets readers (the online server) run while an apply writes.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(
            f"unsupported registry database {parsed.get_backend_name()!r}",
            hint="use sqlite:///path/registry.db or postgresql+psycopg://user@host/db",
        )
    return sa.create_engine(url, pool_pre_ping=True)


def _alembic_config(connection: sa.Connection):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    from migrations import SCRIPT_LOCATION

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory
    from alembic.config import Config

    from migrations import SCRIPT_LOCATION

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with _connect(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Migrate the database to ``revision``; returns the revision reached."""
    from alembic import command

    with _connect(engine) as conn:
        with conn.begin():
            command.upgrade(_alembic_config(conn), revision)
    return current_revision(engine) or ""


def ensure_schema(engine: Engine) -> None:
    """Initialise an empty database; refuse one at an older revision with how to fix it."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        with _connect(engine) as conn:
            existing = sa.inspect(conn).get_table_names()
        if not any(name.startswith("fs_") for name in existing):
            upgrade(engine)
            return
    raise ConfigError(
        f"the registry database is at schema revision {current!r} but this version of "
        f"featurestore needs {head!r}",
        hint="run `featurestore registry upgrade` (back the database up first)",
    )


def _connect(engine: Engine) -> sa.Connection:
    try:
        return engine.connect()
    except sa.exc.OperationalError as exc:
        raise StoreUnavailableError(
            f"cannot reach the registry database {engine.url.render_as_string(hide_password=True)}: "
            f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}",
            hint="check `registry:` in featurestore.yaml or FEATURESTORE__REGISTRY, and that the server is up",
        ) from None
