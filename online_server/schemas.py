"""Request and response bodies of the HTTP API (pydantic, unknown fields rejected)."""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

JoinKeyValue = Union[int, str]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeaturesRequest(_Body):
    features: list[str] | None = Field(None, description="Feature references: `view:feature` or `view`.", min_length=1)
    feature_service: str | None = Field(None, description="A feature service name (instead of `features`).")
    entity_rows: list[dict[str, JoinKeyValue]] = Field(
        min_length=1, max_length=10_000, description="One mapping of join keys to values per entity."
    )
    full_names: bool = Field(False, description="Name columns `view__feature`.")
    include_timestamps: bool = Field(False, description="Add each value's event timestamp (µs).")

    @model_validator(mode="after")
    def _one_of(self) -> "FeaturesRequest":
        if (self.features is None) == (self.feature_service is None):
            raise ValueError("give exactly one of `features` or `feature_service`")
        return self


class FeatureColumn(_Body):
    values: list[Any]
    statuses: list[str] = Field(
        description="present, not_found, expired, or stale_layout (written under an earlier definition of "
        "the view and not valid under this one until the backfill: docs/registry.md), per entity row."
    )
    event_timestamps: list[int | None] | None = None


class FeaturesResponse(_Body):
    registry_version: int
    entity_rows: int
    features: dict[str, FeatureColumn]


class ErrorBody(_Body):
    type: str
    message: str
    hint: str | None = None
    retryable: bool = False
    fields: list[dict[str, Any]] | None = None


class ErrorResponse(_Body):
    error: ErrorBody


class OnlineData(_Body):
    epoch: str | None = Field(None, description="The online store's epoch marker (docs/online-store.md).")
    lost_at: str | None = Field(None, description="When the online store was found to have lost its data.")
    rebuilt_models: dict[str, int] = Field(default_factory=dict, description="Model versions this process rebuilt from the feedback log.")
    rematerialize: list[str] = Field(
        default_factory=list, description="Views whose online values were lost and not materialized since: run `featurestore materialize VIEW`."
    )


class HealthResponse(_Body):
    status: str = Field(description="ok; degraded (serving, but the online store lost data that must be re-materialized); unavailable (503).")
    checks: dict[str, str]
    registry_version: int | None = None
    online_data: OnlineData | None = None
