"""Project configuration: ``featurestore.yaml``, then the environment, then explicit arguments.

Precedence (highest first): an explicit override > an environment variable
``FEATURESTORE__SECTION__KEY`` (e.g. ``FEATURESTORE__ONLINE_STORE__URL``) > featurestore.yaml >
the default. A bad value names every place that was looked at.

    project: demo
    registry: sqlite:///data/registry.db      # or postgresql+psycopg://user@host/db
    definitions: [features]                   # files, directories or globs of YAML
    offline_store: {path: data/offline}      # or {path: s3://bucket/prefix} / gs://bucket/prefix
    online_store: {type: embedded, path: data/online.db}   # or {type: redis, url: redis://...}
                                              # or {type: redis, url: redis://node:7000, cluster: true}
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry.errors import ConfigError
from registry.loader import load_yaml
from registry.spec import NAME_HELP, NAME_RE

if TYPE_CHECKING:
    from featurestore.offline.location import OfflinePath

CONFIG_FILE = "featurestore.yaml"
ENV_PREFIX = "FEATURESTORE__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OfflineStoreConfig(_Section):
    path: str = Field(
        "data/offline",
        description="A local directory (relative to the repository) or an object store: "
        "s3://bucket/prefix, gs://bucket/prefix (docs/offline-store.md, Object stores).",
    )
    endpoint_override: str | None = Field(
        None,
        description="An S3-compatible server or GCS emulator, e.g. http://127.0.0.1:9000 "
        "(None: the cloud's own). Credentials come from the environment (AWS_ACCESS_KEY_ID, ...).",
    )
    region: str | None = Field(None, description="The S3 region (None: the AWS SDK's default).")
    artifacts_path: str | None = Field(
        None,
        description="Local directory of model artifacts and the feedback export (None: the "
        "offline path when it is local, else data/artifacts).",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        from featurestore.offline.location import check_uri

        check_uri(value)
        return value

    @field_validator("artifacts_path")
    @classmethod
    def _artifacts_local(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            raise ValueError(
                f"{value!r} is a URI; model artifacts and the feedback export need a local "
                "directory (or a mounted one)"
            )
        return value


class OnlineStoreConfig(_Section):
    type: Literal["embedded", "redis", "memory"] = "embedded"
    path: str = Field("data/online.db", description="SQLite file of the embedded store.")
    url: str = Field("redis://127.0.0.1:6379/0", description="URL of the redis store.")
    cluster: bool = Field(
        False,
        description="The redis store is a Redis Cluster (url names any one of its nodes); keys carry "
        "hash tags (docs/redis-cluster.md). Env: FEATURESTORE__ONLINE_STORE__CLUSTER=true.",
    )

    @model_validator(mode="after")
    def _cluster_is_redis(self) -> OnlineStoreConfig:
        if self.cluster and self.type != "redis":
            raise ValueError(f"cluster: true needs type: redis, not {self.type!r}")
        return self


class MaterializationConfig(_Section):
    lookback: str = Field(
        "1d", description="Incremental runs re-read this far behind the watermark for late data."
    )
    batch_rows: int = Field(65_536, ge=1_000, description="Rows per Arrow record batch.")

    @field_validator("lookback")
    @classmethod
    def _lookback(cls, value: str) -> str:
        from registry.types import parse_duration

        parse_duration(value)
        return value


class TokenConfig(_Section):
    """A bearer token, stored as the SHA-256 hex digest of the token (never the token itself)."""

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    roles: list[Literal["read", "write", "admin"]] = Field(min_length=1)
    expires_at: datetime | None = Field(
        None,
        description="When the token stops being accepted (ISO 8601; without a zone it is UTC). "
        "None: it never expires, until revoked with `featurestore token revoke`.",
    )

    @field_validator("expires_at", mode="before")
    @classmethod
    def _date_is_midnight(cls, value: Any) -> Any:
        # YAML reads `2026-01-01` as a date; a date alone means the start of that day (UTC).
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A naive time is read as UTC, so every server compares the same instant.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class TracingConfig(_Section):
    enabled: bool = Field(
        False,
        description="Send OpenTelemetry traces (a span per request, with its Redis calls inside "
        "it). Needs the tracing extra: pip install 'velox-featurestore[tracing]'. "
        "Env: FEATURESTORE__SERVER__TRACING__ENABLED=true.",
    )
    endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces (None: the "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT variables, else "
        "http://localhost:4318/v1/traces).",
    )
    service_name: str = Field("featurestore", description="The service.name of the spans.")
    sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0,
        description="Share of traces kept (parent-based: a caller's sampled trace is always kept).",
    )


class ServerConfig(_Section):
    tokens: list[TokenConfig] = Field(
        default_factory=list,
        description="Bearer tokens with roles; create with `featurestore token create`. None: "
        "`featurestore serve` refuses any host but loopback.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_body_bytes: int = Field(
        8 << 20, ge=1024,
        description="Largest request body accepted (413 beyond it, refused before it is read); "
        "a batch of 10,000 feedback observations is about 2 MB.",
    )
    tracing: TracingConfig = Field(
        default_factory=lambda: TracingConfig(),
        description="OpenTelemetry traces of the request paths (docs/operations.md, Tracing); off by default.",
    )


class RepoConfig(_Section):
    project: str
    registry: str = "sqlite:///data/registry.db"
    definitions: list[str] = Field(default_factory=lambda: ["features"])
    offline_store: OfflineStoreConfig = Field(default_factory=OfflineStoreConfig)
    online_store: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)
    materialization: MaterializationConfig = Field(default_factory=MaterializationConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    postgres_url: str | None = Field(None, description="Default connection of postgres sources.")
    # The directory featurestore.yaml lives in; relative paths are resolved against it.
    root: Path = Field(Path("."), exclude=True)

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"bad project name {value!r}; expected {NAME_HELP}")
        return value

    def resolve(self, path: str) -> Path:
        """A configured path, relative paths taken from the repository root."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p)

    @property
    def registry_url(self) -> str:
        """The SQLAlchemy URL, with a relative SQLite path made absolute."""
        prefix = "sqlite:///"
        if self.registry.startswith(prefix) and not self.registry.startswith(prefix + "/"):
            rest = self.registry[len(prefix):]
            if rest and rest != ":memory:":
                return prefix + str(self.resolve(rest).resolve())
        return self.registry

    @property
    def offline_path(self) -> OfflinePath:
        """A local ``Path``, or an ``ObjectPath`` for an s3:// or gs:// URI."""
        from featurestore.offline.location import ObjectStoreOptions, resolve

        section = self.offline_store
        options = ObjectStoreOptions(section.endpoint_override, section.region)
        return resolve(section.path, self.root, options)

    @property
    def artifacts_path(self) -> Path:
        """Where model artifacts and the feedback export live: always a local directory
        (``offline_store.artifacts_path``; default the offline path when it is local, else
        ``data/artifacts``)."""
        if self.offline_store.artifacts_path is not None:
            return self.resolve(self.offline_store.artifacts_path)
        offline = self.offline_path
        return offline if isinstance(offline, Path) else self.resolve("data/artifacts")


def _set(tree: dict[str, Any], dotted: list[str], value: Any) -> None:
    for part in dotted[:-1]:
        node = tree.get(part)
        if not isinstance(node, dict):
            node = {}
            tree[part] = node
        tree = node
    tree[dotted[-1]] = value


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
            parts = key[len(ENV_PREFIX):].lower().split("__")
            parsed: Any = value
            if parts == ["definitions"]:
                parsed = [v for v in value.split(",") if v]
            elif parts == ["server", "tokens"]:
                parsed = _json_list(key, value)
            _set(out, parts, parsed)
    return out


def _json_list(key: str, value: str) -> Any:
    import json

    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{key} is not valid JSON: {exc}",
            hint='write it as a JSON list, e.g. [{"name": "svc", "sha256": "...", "roles": ["read"]}]',
        ) from None


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def find_repo_root(start: Path) -> Path:
    """The nearest directory at or above ``start`` holding featurestore.yaml."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_FILE} found in {start} or any directory above it",
        hint="run `featurestore init DIR` to create a repository, or pass --repo DIR",
    )


def load_config(
    repo: str | Path = ".",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RepoConfig:
    """Read a repository's configuration with environment and explicit overrides applied.

    >>> load_config("my_repo", {"online_store": {"type": "redis"}})  # doctest: +SKIP
    """
    root = find_repo_root(Path(repo))
    path = root / CONFIG_FILE
    doc, problems = load_yaml(path, str(path))
    if problems:
        raise ConfigError(str(problems[0]))
    assert doc is not None
    if not isinstance(doc.data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings", hint="see README.md")
    env = _env_overrides(os.environ if environ is None else environ)
    merged = _merge(_merge(doc.data, env), overrides or {})
    try:
        return RepoConfig.model_validate({**merged, "root": root})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        dotted = ".".join(str(p) for p in loc)
        env_name = ENV_PREFIX + "__".join(str(p).upper() for p in loc)
        line = doc.line_of(doc.resolve(loc))
        raise ConfigError(
            f"bad setting `{dotted}`: {error['msg'].removeprefix('Value error, ')}; "
            f"looked in explicit arguments, the environment ({env_name}) "
            f"and {path}{f':{line}' if line else ''}",
            hint=f"fix `{dotted}` in {CONFIG_FILE} or unset {env_name}",
        ) from None
