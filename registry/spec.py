"""The definition language: one pydantic model per YAML object, all with ``extra="forbid"``.

A definition file holds any of the top-level lists below; a repository may split its
definitions over many files. Cross-references (a view naming an entity or a source, a service
naming features) are checked in ``registry.validate``, not here, because they span files.
The JSON Schema published by ``featurestore schema`` is generated from ``DefinitionFile``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry.types import DTYPE_HELP, DURATION_HELP, JOIN_KEY_DTYPES, parse_dtype, parse_duration

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
NAME_HELP = "lower-case letters, digits and underscores, starting with a letter or underscore, at most 63 characters"
# Columns the stores add themselves; a feature or key of that name would be ambiguous.
RESERVED_NAMES = frozenset(
    {"event_timestamp", "created_timestamp", "feature_view", "entity_key", "ttl", "status"}
)

Name = Annotated[str, Field(description=f"An identifier: {NAME_HELP}.")]
Tags = Annotated[dict[str, str], Field(default_factory=dict, description="Free-form labels.")]


def check_name(value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"bad name {value!r}; expected {NAME_HELP}")
    if value in RESERVED_NAMES or value.startswith("__"):
        raise ValueError(
            f"{value!r} is reserved; choose another name (reserved: "
            + ", ".join(sorted(RESERVED_NAMES))
            + ", and names starting with __)"
        )
    return value


class Spec(BaseModel):
    """Base of every definition model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Described(Spec):
    name: Name
    description: str = ""
    owner: str = ""
    tags: Tags

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)


class JoinKey(Spec):
    name: Name
    dtype: str = Field("int64", description="one of " + ", ".join(JOIN_KEY_DTYPES))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        if value not in JOIN_KEY_DTYPES:
            raise ValueError(
                f"join key dtype {value!r} is not allowed; expected one of "
                + ", ".join(JOIN_KEY_DTYPES)
            )
        return value


class EntitySpec(Described):
    """Something features are about (a user, an item), identified by one or more join keys."""

    join_keys: list[JoinKey] = Field(min_length=1)

    @field_validator("join_keys")
    @classmethod
    def _unique_keys(cls, keys: list[JoinKey]) -> list[JoinKey]:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"join key names must be unique, got {names}")
        return keys


class _SourceBase(Described):
    timestamp_field: Name = Field(description="Column holding each row's event time.")
    created_timestamp_field: Name | None = Field(
        None, description="Column holding when the row was written; breaks ties, latest wins."
    )


class ParquetSource(_SourceBase):
    """Parquet files: a file, a directory, a glob, or an object-store URL (s3://, gs://)."""

    type: Literal["parquet"]
    path: str = Field(min_length=1)


class DuckDBSource(_SourceBase):
    """A DuckDB SQL query over files, e.g. ``select * from read_csv('events/*.csv')``."""

    type: Literal["duckdb"]
    query: str = Field(min_length=1)


class PostgresSource(_SourceBase):
    """A PostgreSQL table or query, read in chunks."""

    type: Literal["postgres"]
    table: str | None = None
    query: str | None = None
    connection: str | None = Field(
        None,
        description="A PostgreSQL URL; by default FEATURESTORE__POSTGRES_URL from the environment.",
    )

    @model_validator(mode="after")
    def _table_or_query(self) -> "PostgresSource":
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` or `query`")
        return self


SourceSpec = Annotated[
    Union[ParquetSource, DuckDBSource, PostgresSource], Field(discriminator="type")
]


class RedisStreamSource(Spec):
    """A Redis Stream read through a consumer group (at-least-once, idempotent writes)."""

    type: Literal["redis_stream"] = "redis_stream"
    stream: str = Field(min_length=1)
    group: str = Field(min_length=1)
    url: str | None = Field(None, description="Redis URL; by default the online store's.")


class Aggregation(Spec):
    """A windowed aggregate of one event column, computed alike by batch and stream jobs."""

    function: Literal["count", "sum", "mean", "min", "max", "last"]
    column: str | None = Field(None, description="The event column (not needed for count).")
    window: str = Field(description=DURATION_HELP)
    slide: str | None = Field(None, description="For sliding windows; omit for tumbling.")

    @field_validator("window", "slide")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError("a window must be longer than 0")
        return value

    @model_validator(mode="after")
    def _column(self) -> "Aggregation":
        if self.function != "count" and not self.column:
            raise ValueError(f"`{self.function}` needs a `column`")
        return self


class FeatureSpec(Spec):
    name: Name
    dtype: str = Field(description=DTYPE_HELP)
    description: str = ""
    aggregation: Aggregation | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        parse_dtype(value)
        return value


class FeatureViewSpec(Described):
    """A group of features of the same entities, computed from one source."""

    entities: list[Name] = Field(min_length=1)
    source: Name
    stream_source: RedisStreamSource | None = None
    features: list[FeatureSpec] = Field(min_length=1)
    ttl: str | int = Field("0", description=DURATION_HELP)
    online: bool = True

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | int) -> str | int:
        parse_duration(value)
        return value

    @property
    def ttl_seconds(self) -> int:
        return parse_duration(self.ttl)

    @field_validator("features")
    @classmethod
    def _unique(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        seen: set[str] = set()
        for f in features:
            if f.name in seen:
                raise ValueError(f"feature {f.name!r} is declared twice")
            seen.add(f.name)
        return features


class FeatureServiceSpec(Described):
    """A named set of features: ``view`` (all its features) or ``view:feature``."""

    features: list[str] = Field(min_length=1)


class Exploration(Spec):
    type: Literal["none", "linucb"] = "none"
    alpha: float = Field(1.0, ge=0)


class ModelSpec(Described):
    """A per-user linear model: score = w_user . f(item) (+ user and request features)."""

    user_entity: Name
    item_entity: Name
    features: list[str] = Field(
        default_factory=list, description="Item feature references (view or view:feature)."
    )
    feature_service: Name | None = None
    user_features: list[str] = Field(default_factory=list)
    request_features: list[Name] = Field(default_factory=list)
    label: Name
    objective: Literal["squared_error", "logistic"] = "squared_error"
    l2: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        1.0, description="Ridge penalty of every user's weights (and the average user's), or `auto`: "
        "chosen on a per-user chronological validation slice of the training labels."
    )
    bias: bool = True
    exploration: Exploration = Field(default_factory=Exploration)
    cold_start: Literal["average_user"] = "average_user"
    slice_column: Name | None = None
    stale_margin: float = Field(0.1, ge=0, description="Relative loss rise that flags staleness.")
    auto_retrain: bool = False
    label_range: tuple[float, float] | None = Field(
        None,
        description="[low, high]: feedback labels outside it are refused. Default: the training "
        "labels' range, widened by its width on each side.",
    )

    @model_validator(mode="after")
    def _features_given(self) -> "ModelSpec":
        if not self.features and self.feature_service is None:
            raise ValueError("give `features` or a `feature_service`")
        if self.label_range is not None:
            low, high = self.label_range
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"label_range must be two finite numbers, low < high, got {list(self.label_range)}")
        return self


class FeatureJobSpec(Described):
    """An offline job that learns item features (the Velox theta) from interactions."""

    type: Literal["als"] = "als"
    source: Name = Field(description="The interactions source.")
    user_column: str
    item_column: str
    rating_column: str
    factors: int = Field(16, ge=1, le=1024)
    l2: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        0.1, description="ALS penalty, or `auto`: chosen on a per-user chronological validation "
        "slice of the interactions."
    )
    iterations: int = Field(10, ge=1, le=1000)
    seed: int = Field(0, ge=0, description="Seed of the factors' random start.")
    output: str = Field(description="Parquet path the item factors are written to.")


class DefinitionFile(Spec):
    """One YAML definition file. Every list is optional; names are unique per kind."""

    entities: list[EntitySpec] = Field(default_factory=list)
    sources: list[SourceSpec] = Field(default_factory=list)
    feature_views: list[FeatureViewSpec] = Field(default_factory=list)
    feature_services: list[FeatureServiceSpec] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    feature_jobs: list[FeatureJobSpec] = Field(default_factory=list)


# kind name in the registry -> attribute of DefinitionFile; the order is the apply order.
KINDS: dict[str, str] = {
    "entity": "entities",
    "source": "sources",
    "feature_view": "feature_views",
    "feature_service": "feature_services",
    "feature_job": "feature_jobs",
    "model": "models",
}


def definition_schema() -> dict[str, Any]:
    """The JSON Schema of a definition file, for editors (``featurestore schema``)."""
    schema = DefinitionFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "featurestore definition file"
    return schema
