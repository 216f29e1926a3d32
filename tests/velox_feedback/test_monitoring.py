"""Quality monitoring (the evaluation-store idea): the prediction each user would have got,
scored before learning, in the log and in the process's running losses; the status aggregated
from the log with SQL; the stale flag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.feedback import model_status
from featurestore.feedback.log import FeedbackLog
from featurestore.models.state_store import ModelStateStore
from tests.velox.conftest import item_x, key
from tests.velox_feedback.conftest import state


def test_predictions_before_learning_in_the_log_the_counters_and_the_status(trained: FeatureStore) -> None:
    known = state(trained, key(1))
    w_avg = ModelStateStore(trained.online_store, "taste", 2).average()
    obs = [(1, 3, 4.0, "mobile"), (77, 4, 1.0, "web"), (1, 5, 2.0, "mobile")]
    trained.feedback_many([
        {"model": "taste", "user": {"user_id": u}, "item": {"item_id": i}, "label": y, "feedback_id": f"m{k}", "slice": s}
        for k, (u, i, y, s) in enumerate(obs)
    ])
    # Scored with the states as read, before this request's updates (both of user 1's from the
    # same state); user 77 was never seen, so it got the average user.
    personal = np.array([item_x(3) @ known.w, item_x(4) @ w_avg, item_x(5) @ known.w])
    average = np.array([item_x(i) @ w_avg for _, i, _, _ in obs])
    y = np.array([o[2] for o in obs])
    rows = [o for b in FeedbackLog(trained.registry.engine, trained.project).read("taste") for o in b]
    np.testing.assert_allclose([r.prediction for r in rows], personal, rtol=1e-12)
    np.testing.assert_allclose([r.baseline for r in rows], average, rtol=1e-12)
    assert [r.slice for r in rows] == ["known|mobile", "new|web", "known|mobile"]

    losses = trained.feedback_service.losses()
    sq = lambda idx, p: float(((y[idx] - p[idx]) ** 2).sum())
    assert losses[("taste", 2, "personalised", "all")].count == 3
    assert losses[("taste", 2, "personalised", "all")].total == pytest.approx(sq([0, 1, 2], personal))
    assert losses[("taste", 2, "average_user", "known_users")].total == pytest.approx(sq([0, 2], average))
    assert losses[("taste", 2, "personalised", "new_users")].count == 1
    assert losses[("taste", 2, "personalised", "device=mobile")].total == pytest.approx(sq([0, 2], personal))

    # A second store on the same repository (another process, as far as the log is concerned).
    other = FeatureStore(trained.repo_path, config_overrides={"online_store": trained.config.online_store.model_dump()})
    before = state(trained, key(2)).w
    try:
        other.feedback("taste", {"user_id": 2}, {"item_id": 6}, 3.0, "other", slice="web")
        assert not np.allclose(state(trained, key(2)).w, before)  # this process sees the update
    finally:
        if "predictor" in other.__dict__:
            other.predictor.close()
        other.close()
    status = model_status(trained.context, "taste", min_observations=1)
    assert (status.version, status.loss_name, status.overall.count) == (2, "squared_error", 4)
    all_personal = np.append(personal, item_x(6) @ before)
    all_y = np.append(y, 3.0)
    assert status.overall.personalised is not None
    assert status.overall.personalised == pytest.approx(float(((all_y - all_personal) ** 2).mean()), rel=1e-9)
    assert set(status.slices) == {"known_users", "new_users", "device=mobile", "device=web"}
    assert status.slices["device=web"].count == 2 and status.slices["known_users"].count == 3
    assert status.slices["new_users"].average_user == pytest.approx((1.0 - average[1]) ** 2)


def test_stale_when_recent_loss_exceeds_the_validation_loss_by_the_margin(trained: FeatureStore) -> None:
    metrics = trained.model_versions.get("taste", 2).metrics
    validation = metrics["validation_loss"]
    # The held-out loss, not the in-sample one, is the baseline: honest, so larger.
    assert validation > metrics["loss"]
    status = model_status(trained.context, "taste", window=10, min_observations=10)
    assert (status.recent.count, status.stale) == (0, False)
    assert (status.baseline, status.baseline_loss) == ("validation", validation)
    assert status.threshold == pytest.approx(validation * 1.5)  # stale_margin: 0.5 in the conftest

    def send(prefix: str, offset: float, n: int) -> None:
        for k in range(n):
            item = 1 + k % 19
            w = state(trained, key(3)).w
            trained.feedback("taste", {"user_id": 3}, {"item_id": item}, float(item_x(item) @ w) + offset, f"{prefix}{k}")

    send("exact", 0.0, 12)  # labels equal to what the user was predicted: loss 0
    assert not model_status(trained.context, "taste", window=10, min_observations=10).stale
    send("off", 3.0, 10)
    status = model_status(trained.context, "taste", window=10, min_observations=10)
    assert status.stale and status.recent.personalised > status.threshold
    # Too few recent observations never flag.
    assert not model_status(trained.context, "taste", window=10, min_observations=1_000).stale


def test_a_version_without_a_validation_loss_compares_with_its_training_loss(trained: FeatureStore) -> None:
    """Versions trained before the validation slice existed recorded only the training loss."""
    import sqlalchemy as sa

    from registry import tables as t

    metrics = dict(trained.model_versions.get("taste", 2).metrics)
    metrics.pop("validation_loss")
    table = t.model_versions
    with trained.context.engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.project == trained.context.project, table.c.model == "taste",
                                            table.c.version == 2).values(metrics=json.dumps(metrics, sort_keys=True)))
    status = model_status(trained.context, "taste", window=10, min_observations=10)
    assert (status.baseline, status.baseline_loss) == ("training", metrics["loss"])
    assert status.threshold == pytest.approx(metrics["loss"] * 1.5)
