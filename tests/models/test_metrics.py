"""Running losses agree with scikit-learn and merge exactly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_squared_error

from featurestore.models.metrics import RunningLoss
from registry.errors import DataError


def test_squared_error_mean_equals_sklearn_mse() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.normal(size=100), rng.normal(size=100)
    acc = RunningLoss("squared_error")
    for start in range(0, 100, 30):  # in pieces, as feedback arrives
        acc.update(y[start : start + 30], p[start : start + 30])
    assert acc.count == 100
    assert acc.mean == pytest.approx(mean_squared_error(y, p), rel=1e-12)


def test_log_loss_mean_equals_sklearn_log_loss_including_clipped_extremes() -> None:
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    p = np.array([0.9, 0.2, 0.6, 0.0, 0.0])  # the last is confidently wrong
    acc = RunningLoss.for_objective("logistic").update(y, p)
    assert acc.loss == "log_loss"
    assert acc.mean == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-12)


def test_merge_adds_counts_and_sums() -> None:
    a = RunningLoss().update([1.0, 2.0], [0.0, 0.0])
    b = RunningLoss().update(3.0, 1.0)
    merged = a.merge(b)
    assert (merged.count, merged.total, merged.mean) == (3, 9.0, 3.0)
    assert (a.count, b.count) == (2, 1)  # inputs untouched


def test_dict_round_trip_and_empty_mean() -> None:
    acc = RunningLoss("log_loss").update([1.0], [0.5])
    assert RunningLoss.from_dict(acc.to_dict()) == acc
    assert RunningLoss().mean is None


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="cannot merge"):
        RunningLoss("log_loss").merge(RunningLoss("squared_error"))
    with pytest.raises(DataError, match="do not line up"):
        RunningLoss().update([1.0, 2.0], [1.0])
    with pytest.raises(DataError, match="keys"):
        RunningLoss.from_dict({"loss": "log_loss", "count": 1})
    with pytest.raises(DataError, match="unknown loss"):
        RunningLoss("hinge")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="not finite"):
        RunningLoss().update([np.nan], [1.0])
