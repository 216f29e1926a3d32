"""Monitoring feedback: the running loss of the personalised and the average-user predictions.

Two views of the same numbers:

* ``FeedbackCounters``: this process's counters (observations by result, compare-and-swap
  retries, running losses per model, version, predictor and slice), what ``/metrics`` shows;
* ``model_status``: the loss of a version aggregated from the feedback log with SQL, exact
  whatever process received the feedback, and the stale flag (``featurestore models status``).

Slices: ``all``, ``new_users`` / ``known_users`` (a user with a trained state is known) and
``{slice_column}={value}`` for models that declare a slice column. The log's ``slice`` column
holds the cohort and the value as ``cohort|value`` (``encode_slice``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.models.metrics import RunningLoss
from registry.errors import NotFoundError

if TYPE_CHECKING:
    from featurestore.context import ServiceContext

# Cohorts of the monitoring slices: a user with a trained state is "known" (n - version > 0:
# training sets n and leaves version at 0, every online update adds one to both).
NEW, KNOWN = "new", "known"
ALL_SLICE = "all"
# Distinct slice_column values tracked per model in this process's counters; the rest are
# counted under "(other)" so a high-cardinality column cannot grow /metrics without bound.
MAX_SLICE_VALUES = 100


class FeedbackCounters:
    """This process's feedback numbers; thread-safe. Read with ``counts`` and ``losses``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._losses: dict[tuple[str, int, str, str], RunningLoss] = {}
        self._slice_values: dict[str, set[str]] = {}
        self._counts: dict[tuple[str, str], int] = {}  # (model, new|duplicate|rejected) -> n
        self.cas_retries = 0
        self.deferred = 0  # logged observations left to the catch-up by this process
        self.caught_up = 0  # pending log rows this process's catch-up applied

    def count(self, model: str, result: str, amount: int = 1) -> None:
        if amount:
            with self._lock:
                self._counts[(model, result)] = self._counts.get((model, result), 0) + amount

    def add_retries(self, amount: int) -> None:
        with self._lock:
            self.cas_retries += amount

    def count_deferred(self, amount: int) -> None:
        if amount:
            with self._lock:
                self.deferred += amount

    def count_caught_up(self, amount: int) -> None:
        if amount:
            with self._lock:
                self.caught_up += amount

    def counts(self) -> dict[tuple[str, str], int]:
        """(model, result) -> observations this process handled, result being ``new``,
        ``duplicate`` or ``rejected`` (model ``(unknown)`` for unknown names). A copy."""
        with self._lock:
            return dict(self._counts)

    def losses(self) -> dict[tuple[str, int, str, str], RunningLoss]:
        """(model, version, predictor, slice) -> running loss of this process, predictor being
        ``personalised`` or ``average_user``; slice ``all``, ``new_users``, ``known_users`` or
        ``{slice_column}={value}``. A copy."""
        with self._lock:
            return {k: RunningLoss(v.loss, v.count, v.total) for k, v in self._losses.items()}

    def observe(
        self,
        model: str,
        version: int,
        objective: str,
        slice_column: str | None,
        y: np.ndarray,
        personal: np.ndarray,
        average: np.ndarray,
        cohorts: np.ndarray,
        slices: list[str],
    ) -> None:
        """Add the losses of observations (labels ``y``, the two predictions made before
        learning, each one's cohort and logged slice) to every slice they belong to."""
        if not len(y):
            return
        loss_kind = "log_loss" if objective == "logistic" else "squared_error"
        labels_of: dict[str, list[int]] = {ALL_SLICE: list(range(len(y)))}
        for k in range(len(y)):
            labels_of.setdefault(f"{cohorts[k]}_users", []).append(k)
            _, value = decode_slice(slices[k])
            if slice_column and value is not None:
                labels_of.setdefault(self._slice_label(model, slice_column, value), []).append(k)
        with self._lock:
            for label, idx in labels_of.items():
                for predictor, values in (("personalised", personal), ("average_user", average)):
                    key = (model, version, predictor, label)
                    acc = self._losses.get(key)
                    if acc is None:
                        acc = self._losses[key] = RunningLoss(loss_kind)  # type: ignore[arg-type]
                    acc.update(y[idx], values[idx])

    def _slice_label(self, model: str, column: str, value: str) -> str:
        seen = self._slice_values.setdefault(model, set())
        if value not in seen and len(seen) >= MAX_SLICE_VALUES:
            return f"{column}=(other)"
        seen.add(value)
        return f"{column}={value}"


def active_version(context: ServiceContext, model: str) -> int:
    """The model's active version, read from the registry (not the snapshot: the CLI asks)."""
    version = context.model_versions.active_versions().get(model)
    if version is None:
        raise NotFoundError(f"model {model!r} has no active version",
                            hint=f"train it with `featurestore train {model} --labels FILE`")
    return version


@dataclass(frozen=True)
class LossSummary:
    """Mean loss of the personalised and the average-user predictions over ``count`` rows."""

    count: int
    personalised: float | None
    average_user: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "personalised": self.personalised, "average_user": self.average_user}


@dataclass(frozen=True)
class ModelStatus:
    model: str
    version: int
    loss_name: str
    training_loss: float | None
    overall: LossSummary
    slices: dict[str, LossSummary]  # new_users, known_users, {slice_column}={value}
    recent: LossSummary  # the last ``window`` observations
    window: int
    stale_margin: float
    min_observations: int
    stale: bool
    auto_retrain: bool
    # What staleness compares with: the version's held-out validation loss when it recorded one
    # (every version trained since issue 17), else its in-sample training loss.
    baseline_loss: float | None = None
    baseline: str = "training"

    @property
    def threshold(self) -> float | None:
        base = self.baseline_loss if self.baseline_loss is not None else self.training_loss
        return None if base is None else base * (1.0 + self.stale_margin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "loss_name": self.loss_name,
            "training_loss": self.training_loss, "threshold": self.threshold,
            "baseline": self.baseline, "baseline_loss": self.baseline_loss,
            "overall": self.overall.to_dict(), "recent": self.recent.to_dict(), "window": self.window,
            "slices": {k: v.to_dict() for k, v in self.slices.items()},
            "stale_margin": self.stale_margin, "min_observations": self.min_observations,
            "stale": self.stale, "auto_retrain": self.auto_retrain,
        }


def model_status(
    context: ServiceContext,
    model: str,
    version: int | None = None,
    *,
    window: int = 1_000,
    min_observations: int = 100,
) -> ModelStatus:
    """Feedback quality of a model version, aggregated from the log with SQL (so it is exact
    whatever process received the feedback).

    Stale when the personalised loss over the last ``window`` observations is above the
    version's baseline × (1 + ``stale_margin``) and at least ``min_observations`` count. The
    baseline is the version's validation loss (its users' newest training rows, held out when
    it was fitted: the loss to expect on rows it has not seen), or for a version that recorded
    none its in-sample training loss.

    >>> model_status(store.context, "taste").stale  # doctest: +SKIP
    False
    """
    import sqlalchemy as sa

    from registry import tables as t

    spec = context.definitions().get("model", model)
    if version is None:
        version = active_version(context, model)
    recorded = context.model_versions.get(model, version)
    logistic = recorded.metrics.get("objective", spec.objective) == "logistic"
    f = t.feedback
    where = (f.c.project == context.project, f.c.model == model, f.c.model_version == version,
             f.c.prediction.is_not(None), f.c.baseline.is_not(None))

    def loss(column: Any, label: Any) -> Any:
        if not logistic:
            return (label - column) * (label - column)
        eps = float(np.finfo(np.float64).eps)
        p = sa.case((column < eps, eps), (column > 1.0 - eps, 1.0 - eps), else_=column)
        return -(label * sa.func.ln(p) + (1.0 - label) * sa.func.ln(1.0 - p))

    with context.engine.connect() as conn:
        by_slice = conn.execute(
            sa.select(f.c.slice, sa.func.count(), sa.func.sum(loss(f.c.prediction, f.c.label)),
                      sa.func.sum(loss(f.c.baseline, f.c.label)))
            .where(*where).group_by(f.c.slice)
        ).all()
        recent_rows = (
            sa.select(f.c.label, f.c.prediction, f.c.baseline).where(*where)
            .order_by(f.c.seq.desc()).limit(window).subquery()
        )
        r = recent_rows.c
        recent = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(loss(r.prediction, r.label)), sa.func.sum(loss(r.baseline, r.label)))
        ).one()
    totals: dict[str, list[float]] = {}
    overall = [0, 0.0, 0.0]
    for text, count, personal, average in by_slice:
        cohort, value = decode_slice(text)
        names = [f"{cohort}_users"] if cohort else []
        if value is not None and spec.slice_column:
            names.append(f"{spec.slice_column}={value}")
        for name in names:
            acc = totals.setdefault(name, [0, 0.0, 0.0])
            acc[0] += count
            acc[1] += personal or 0.0
            acc[2] += average or 0.0
        overall[0] += count
        overall[1] += personal or 0.0
        overall[2] += average or 0.0
    training = recorded.metrics.get("loss")
    validation = recorded.metrics.get("validation_loss")
    base = validation if validation is not None else training
    recent_summary = _summary(recent[0], recent[1], recent[2])
    stale = (
        base is not None
        and recent_summary.count >= min_observations
        and recent_summary.personalised is not None
        and recent_summary.personalised > float(base) * (1.0 + spec.stale_margin)
    )
    return ModelStatus(
        model=model,
        version=version,
        loss_name="log_loss" if logistic else "squared_error",
        training_loss=None if training is None else float(training),
        overall=_summary(*overall),
        slices={k: _summary(*v) for k, v in sorted(totals.items())},
        recent=recent_summary,
        window=window,
        stale_margin=spec.stale_margin,
        min_observations=min_observations,
        stale=bool(stale),
        auto_retrain=spec.auto_retrain,
        baseline_loss=None if base is None else float(base),
        baseline="validation" if validation is not None else "training",
    )


def _summary(count: Any, personal: Any, average: Any) -> LossSummary:
    count = int(count or 0)
    if not count:
        return LossSummary(0, None, None)
    return LossSummary(count, float(personal or 0.0) / count, float(average or 0.0) / count)


def encode_slice(cohort: str, value: str | None) -> str:
    """The ``slice`` column of the log: the cohort, then ``|`` and the slice_column value.

    >>> encode_slice("known", "mobile"), encode_slice("new", None)
    ('known|mobile', 'new')
    """
    return cohort if value is None else f"{cohort}|{value}"


def decode_slice(text: str | None) -> tuple[str | None, str | None]:
    """(cohort, slice value) of the log's ``slice`` column.

    >>> decode_slice("known|a|b")
    ('known', 'a|b')
    """
    if text is None:
        return None, None
    cohort, sep, value = text.partition("|")
    return cohort, (value if sep else None)
