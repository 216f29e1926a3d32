"""``evaluate``: every metric and slice against values computed independently from the log."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from featurestore import FeatureStore
from featurestore.evaluation import compare_versions, drift_vs_validation, evaluate, notes_of
from featurestore.feedback.export import export_feedback
from registry.errors import ConfigError, NotFoundError
from tests.evaluation.conftest import KNOWN_ITEMS, NOW, log_rows, send_feedback


def _row(table, **where):
    rows = [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]
    assert len(rows) == 1, (where, rows)
    return rows[0]


def _expected(rows, keep):
    sel = [r for r in rows if keep(r)]
    y = np.array([r.label for r in sel])
    p = np.array([r.prediction for r in sel])
    b = np.array([r.baseline for r in sel])
    return {
        "count": len(sel), "mean_label": y.mean(), "mean_prediction": p.mean(),
        "rmse": np.sqrt(((y - p) ** 2).mean()), "rmse_average_user": np.sqrt(((y - b) ** 2).mean()),
        "mae": np.abs(y - p).mean(), "mae_average_user": np.abs(y - b).mean(),
    }


def _check(table, expected, **where):
    got = _row(table, **where)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9), (where, name)


def test_every_slice_of_a_window_matches_the_log(logged: FeatureStore) -> None:
    rows = [r for r in log_rows(logged, "taste") if r.event_ts >= NOW - timedelta(days=7)]
    assert len(rows) == 60
    # The baseline in the log is the average user of the artifact times the logged x.
    manifest = json.loads((Path(logged.model_versions.get("taste", 2).artifact) / "manifest.json").read_text())
    w_avg = np.asarray(manifest["average"])
    np.testing.assert_allclose([r.baseline for r in rows], [r.features @ w_avg for r in rows], rtol=1e-12)

    table = evaluate(logged, models=["taste"], window="7d")
    assert table.column_names[:4] == ["model", "version", "slice", "count"]
    known = {str(i) for i in KNOWN_ITEMS}
    _check(table, _expected(rows, lambda r: True), model="taste", version=2, slice="all")
    _check(table, _expected(rows, lambda r: r.slice.startswith("known")), slice="users=known")
    _check(table, _expected(rows, lambda r: r.slice.startswith("new")), slice="users=new")
    _check(table, _expected(rows, lambda r: r.item_key in known), slice="items=known")
    _check(table, _expected(rows, lambda r: r.item_key not in known), slice="items=new")
    _check(table, _expected(rows, lambda r: r.slice.endswith("|web")), slice="device=web")
    assert [r["slice"] for r in table.to_pylist()] == [
        "all", "users=known", "users=new", "items=known", "items=new", "device=mobile", "device=web"]
    # Personalisation beats the average user on the known users it was trained on.
    known_users = _row(table, slice="users=known")
    assert known_users["rmse"] != known_users["rmse_average_user"]
    assert any("kept training labels" in n for n in notes_of(table))


def test_all_time_window_and_explicit_range(logged: FeatureStore) -> None:
    rows = log_rows(logged, "taste")
    everything = evaluate(logged, models="taste:2", slices="all", window="all")
    _check(everything, _expected(rows, lambda r: True), slice="all")
    # A service context (what FeatureStore.evaluate passes) answers the same.
    assert evaluate(logged.context, models="taste:2", slices="all", window="all").to_pylist() == everything.to_pylist()
    start, end = NOW - timedelta(days=11), NOW - timedelta(days=9)
    ranged = evaluate(logged, models=["taste"], slices=["all"], window=f"{start.isoformat()}..{end.isoformat()}")
    _check(ranged, _expected(rows, lambda r: start <= r.event_ts < end), slice="all")
    assert _row(ranged, slice="all")["count"] == 40


def test_parquet_view_plus_the_sql_tail_give_the_same_answer(logged: FeatureStore) -> None:
    before = evaluate(logged, models=["taste"], window="30d")
    # taste's rows are seqs 1..100: 1..64 sealed, 65..100 in an unsealed block's files as well
    # as in the table; the tail must be read from the table only, and nothing counted twice.
    result = export_feedback(logged.context, "taste", block_rows=64)
    assert (result.sealed_through, result.horizon) == (64, 100)
    after = evaluate(logged, models=["taste"], window="30d")
    assert after.num_rows == before.num_rows
    for a, b in zip(before.to_pylist(), after.to_pylist()):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == (pytest.approx(b[k], rel=1e-12) if isinstance(a[k], float) else b[k]), k
    # Rows logged after the export come from the tail.
    send_feedback(logged, np.random.default_rng(3), 10, prefix="later", days_ago=1, users=[1])
    rows = [r for r in log_rows(logged, "taste") if r.event_ts >= NOW - timedelta(days=30)]
    _check(evaluate(logged, models=["taste"], slices="all", window="30d"), _expected(rows, lambda r: True), slice="all")


def test_logistic_model_log_loss_and_auc(logged: FeatureStore) -> None:
    rows = log_rows(logged, "ctx")
    y = np.array([r.label for r in rows])
    p = np.array([r.prediction for r in rows])
    b = np.array([r.baseline for r in rows])
    table = evaluate(logged, models=["ctx"], slices=["all", "users"], window="7d")
    got = _row(table, slice="all")
    assert set(table.column_names) >= {"log_loss", "auc", "log_loss_average_user", "auc_average_user"}
    assert "rmse" not in table.column_names  # defaults follow the loss
    assert got["count"] == len(rows) > 30  # user 50 has no user features: rejected, not logged
    assert got["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-9)
    assert got["log_loss_average_user"] == pytest.approx(log_loss(y, b), rel=1e-9)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p), rel=1e-9)
    assert got["auc_average_user"] == pytest.approx(roc_auc_score(y, b), rel=1e-9)
    assert got["mean_label"] == pytest.approx(y.mean())
    every_slice = evaluate(logged, models=["ctx"], window="7d")
    assert any("ctx: no slice_column" in n for n in notes_of(every_slice))
    # ctx was trained from the SDK (no kept labels) with no earlier feedback: its training items
    # are unknown, so there is no item slice rather than every item counted as new.
    assert {r["slice"] for r in every_slice.to_pylist()} == {"all", "users=known"}
    assert any("version(s) 1: training items unknown" in n for n in notes_of(every_slice))
    # log_loss / auc of a squared-error model are null, not made up.
    both = evaluate(logged, models=["taste", "ctx"], metrics=["auc"], slices="all", window="7d")
    assert _row(both, model="taste", slice="all")["auc"] is None


def test_loss_over_time_buckets(logged: FeatureStore) -> None:
    table = evaluate(logged, models=["taste"], metrics="rmse", slices="all", window="30d", every="1d")
    assert "bucket" in table.column_names
    assert sum(table["count"].to_pylist()) == 100
    buckets = table["bucket"].to_pylist()
    assert buckets == sorted(buckets) and len(buckets) >= 2


def test_drift_vs_validation(logged: FeatureStore) -> None:
    rows = [r for r in log_rows(logged, "taste") if r.event_ts >= NOW - timedelta(days=7)]
    y = np.array([r.label for r in rows]); p = np.array([r.prediction for r in rows])
    table = drift_vs_validation(logged, window="7d")
    taste = _row(table, model="taste")
    metrics = logged.model_versions.get("taste", 2).metrics
    # The held-out loss when training recorded one, else the (in-sample) training loss.
    kind, reference = (("validation", metrics["validation_loss"]) if metrics.get("validation_loss") is not None
                       else ("training", metrics["loss"]))
    assert (taste["version"], taste["reference"], taste["count"]) == (2, kind, 60)
    assert taste["reference_loss"] == pytest.approx(reference)
    assert taste["window_loss"] == pytest.approx(((y - p) ** 2).mean(), rel=1e-9)
    assert taste["change"] == pytest.approx(((y - p) ** 2).mean() / reference - 1, rel=1e-9)
    assert _row(table, model="ctx")["loss_name"] == "log_loss"


def test_compare_versions_on_every_slice(logged: FeatureStore) -> None:
    logged.activate_model("taste", 1)
    send_feedback(logged, np.random.default_rng(11), 30, prefix="v1-", days_ago=3, users=[1, 2, 93])
    table = compare_versions(logged, "taste", 1, 2, window="7d", metrics=["rmse"])
    rows = [r for r in log_rows(logged, "taste") if r.event_ts >= NOW - timedelta(days=7)]
    v1 = [r for r in rows if r.model_version == 1]
    all_rmse = _row(table, slice="all", metric="rmse")
    assert (all_rmse["count_a"], all_rmse["count_b"]) == (30, 60)
    y1 = np.array([r.label for r in v1]); p1 = np.array([r.prediction for r in v1])
    assert all_rmse["a"] == pytest.approx(np.sqrt(((y1 - p1) ** 2).mean()), rel=1e-9)
    assert all_rmse["difference"] == pytest.approx(all_rmse["b"] - all_rmse["a"])
    assert {r["slice"] for r in table.to_pylist()} >= {"all", "users=known", "users=new", "device=web"}


def test_errors_name_what_is_accepted(logged: FeatureStore) -> None:
    with pytest.raises(ConfigError, match="unknown metric 'rsme'") as exc:
        evaluate(logged, metrics=["rsme"])
    assert "rmse" in (exc.value.hint or "")
    with pytest.raises(ConfigError, match="unknown slice"):
        evaluate(logged, slices="country")
    with pytest.raises(ConfigError, match="bad window"):
        evaluate(logged, window="last week")
    with pytest.raises(NotFoundError, match="did you mean 'taste'"):
        evaluate(logged, models=["tast"])
    with pytest.raises(NotFoundError, match="no version 9"):
        evaluate(logged, models=["taste:9"])
