"""Running loss accumulators for monitoring models (the Velox evaluation store).

Each process keeps a ``RunningLoss`` per model (or per slice), adds its predictions as labels
arrive, and periodically ships ``to_dict()`` somewhere central, where ``merge`` adds them up: a
count and a sum merge exactly, a mean would not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from registry.errors import DataError

Loss = Literal["squared_error", "log_loss"]
LOSSES: tuple[str, ...] = ("squared_error", "log_loss")
_OBJECTIVE_LOSS = {"squared_error": "squared_error", "logistic": "log_loss"}
# Same clipping as scikit-learn's log_loss (machine epsilon), so a confident wrong answer costs
# ~36, not inf, and one bad prediction cannot poison a merged total.
_EPS = float(np.finfo(np.float64).eps)


@dataclass
class RunningLoss:
    """Count and sum of a loss; ``mean`` is their ratio (None before the first update).

    >>> m = RunningLoss("squared_error").update([1.0, 2.0], [1.5, 2.0])
    >>> m.count, m.mean
    (2, 0.125)
    """

    loss: Loss = "squared_error"
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise DataError(f"unknown loss {self.loss!r}", hint="use one of " + ", ".join(LOSSES))
        if self.count < 0:
            raise DataError(f"count must be >= 0, got {self.count}", hint="start from count=0")

    @classmethod
    def for_objective(cls, objective: str) -> RunningLoss:
        """The loss that matches a model objective: logistic -> log_loss."""
        if objective not in _OBJECTIVE_LOSS:
            raise DataError(
                f"unknown objective {objective!r}", hint="use one of " + ", ".join(_OBJECTIVE_LOSS)
            )
        return cls(_OBJECTIVE_LOSS[objective])  # type: ignore[arg-type]

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def update(self, y_true: Any, y_pred: Any) -> RunningLoss:
        """Add one or many (label, prediction) pairs; for log_loss predictions are P(y = 1)."""
        y = np.atleast_1d(np.asarray(y_true, dtype=np.float64))
        p = np.atleast_1d(np.asarray(y_pred, dtype=np.float64))
        if y.shape != p.shape or y.ndim != 1:
            raise DataError(
                f"labels {y.shape} and predictions {p.shape} do not line up",
                hint="pass two 1-D arrays of the same length",
            )
        if self.loss == "squared_error":
            losses = (y - p) ** 2
        else:
            p = np.clip(p, _EPS, 1.0 - _EPS)
            losses = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
        total = float(losses.sum())
        if not math.isfinite(total):
            raise DataError("a loss is not finite", hint="drop NaN/inf labels or predictions")
        self.count += int(y.shape[0])
        self.total += total
        return self

    def merge(self, other: RunningLoss) -> RunningLoss:
        """A new accumulator holding both counts (e.g. from two server processes)."""
        if other.loss != self.loss:
            raise DataError(
                f"cannot merge a {other.loss} accumulator into a {self.loss} one",
                hint="merge accumulators of the same model and loss",
            )
        return RunningLoss(self.loss, self.count + other.count, self.total + other.total)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "count": self.count, "total": self.total}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunningLoss:
        """Inverse of ``to_dict``; rejects unknown or missing keys.

        >>> RunningLoss.from_dict({"loss": "log_loss", "count": 3, "total": 1.5}).mean
        0.5
        """
        if set(data) != {"loss", "count", "total"}:
            raise DataError(
                f"running loss dict has keys {sorted(data)}",
                hint="expected exactly loss, count and total",
            )
        return cls(data["loss"], int(data["count"]), float(data["total"]))
