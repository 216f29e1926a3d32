"""What goes into ``FeedbackService.submit`` and what comes out: one observation as received,
why one was rejected, and the result of a request (docs/feedback.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from registry.errors import DataError, UserError

MAX_BATCH = 10_000
MAX_FEEDBACK_ID = 128
MAX_PREDICTION_ID = 64
MAX_SLICE = 200
FIELDS = ("model", "user", "item", "label", "feedback_id", "prediction_id", "ts", "slice", "request_features")


@dataclass(frozen=True)
class FeedbackInput:
    """One observation as received: ``label`` for ``item`` shown to ``user``.

    ``prediction_id`` (from ``/predict``) makes the update use the exact x that was served;
    ``ts`` is when it happened (default: when it was received); ``slice`` is the value of the
    model's ``slice_column`` for monitoring; ``request_features`` are needed only without a
    prediction id, by models that declare request features.

    >>> FeedbackInput("taste", {"user_id": 7}, {"item_id": 3}, 4.0, "fb-1").label
    4.0
    """

    model: str
    user: Mapping[str, Any]
    item: Mapping[str, Any]
    label: float
    feedback_id: str
    prediction_id: str | None = None
    ts: datetime | None = None
    slice: str | None = None
    request_features: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeedbackInput:
        """Build from a mapping with the keys of the HTTP body; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise UserError(f"an observation must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(FIELDS))
        missing = [k for k in ("model", "user", "item", "label", "feedback_id") if k not in data]
        if unknown or missing:
            raise UserError(
                f"observation has unknown key(s) {unknown} / lacks {missing}" if unknown and missing
                else f"observation has unknown key(s) {unknown}" if unknown
                else f"observation lacks {', '.join(missing)}",
                hint="keys: " + ", ".join(FIELDS),
            )
        return cls(**data)


@dataclass(frozen=True)
class Rejection:
    """Why observation ``index`` of a request was not accepted; ``field`` names the bad key."""

    index: int
    field: str
    reason: str
    hint: str | None = None
    #: 422 for a bad value; 409 for a ``feedback_id`` already logged with another observation.
    status: int = 422

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason, "hint": self.hint}


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to a request's observations.

    ``new`` were logged and learned from; ``duplicates`` had a ``feedback_id`` already in the log
    (accepted, nothing changed); ``rejected`` were not accepted. ``model_versions`` is the
    version each model's observations were logged under and learned into. ``deferred`` (of
    ``new``) are logged, but their update could not reach the online state in time (the store
    failed, or other writers kept winning): the servers' catch-up applies them from the log.
    """

    received: int
    new: int
    duplicates: int
    rejected: tuple[Rejection, ...]
    model_versions: dict[str, int]
    cas_retries: int = 0
    deferred: int = 0

    @property
    def accepted(self) -> int:
        return self.new + self.duplicates

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "new": self.new,
            "duplicates": self.duplicates,
            "deferred": self.deferred,
            "rejected": [r.to_dict() for r in self.rejected],
            "model_versions": self.model_versions,
        }


class AllRejectedError(DataError):
    """Every observation of a batch was rejected (``FeatureStore.feedback_many``): nothing was
    logged or learned, which a caller must not mistake for success. ``result`` has the reasons."""

    def __init__(self, result: FeedbackResult) -> None:
        first = result.rejected[0]
        super().__init__(
            f"all {result.received:,} observation(s) were rejected; the first, #{first.index}: "
            f"field `{first.field}`: {first.reason}",
            hint=first.hint or "see result.rejected for every observation's reason",
        )
        self.result = result

    def __reduce__(self) -> tuple:
        return (AllRejectedError, (self.result,))
