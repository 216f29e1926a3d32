"""Learning by default on the example repository (issue 17): labels at their real timestamps
train on the learned item factors, Unix-second timestamps, a validation loss recorded with the
version, scores clipped to the label range, the average item for items the feature job has not
learned (status `prior`, feedback logged), and `models retrain` closing the loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.cli.main import main
from featurestore.example.repo import small_config, write_example_repo

NEW_ITEM = 10_000


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The example with its item factors learned and `taste` trained on the ratings as they are:
    every label at its own time, all of them before the factors' event time."""
    root = tmp_path / "example"
    write_example_repo(root, config=small_config())
    r = str(root)
    assert main(["-r", r, "apply"]) == 0
    assert main(["-r", r, "jobs", "run", "item_factors"]) == 0
    ratings = pa.concat_tables(pq.read_table(p) for p in sorted((root / "data/source/ratings").glob("*.parquet")))
    labels = ratings.select(["user_id", "item_id", "rating"]).append_column("event_timestamp", ratings["event_ts"])
    pq.write_table(labels, root / "labels.parquet")
    assert main(["-r", r, "train", "taste", "--labels", str(root / "labels.parquet")]) == 0
    capsys.readouterr()
    return root


def test_labels_at_their_real_time_join_the_learned_factors(trained: Path) -> None:
    factors = pq.read_table(trained / "data/source/item_factors.parquet")
    labels = pq.read_table(trained / "labels.parquet")
    # Every label is at or before the factors' time: a plain point-in-time join would find none.
    assert pc.max(labels["event_timestamp"]).as_py() <= factors["event_ts"][0].as_py()
    with FeatureStore(trained) as store:
        m = store.model_versions.get("taste", 1).metrics
        v = store.model_versions.get("taste", 1)
    assert m["rows_dropped_missing_features"] == 0 and m["rows"] == labels.num_rows
    # The version's data range is the labels' own times, not the join time.
    assert v.data_end == pc.max(labels["event_timestamp"]).as_py()
    # A held-out validation loss, worse than the in-sample one and better than the average user's.
    assert m["validation_rows"] > 0
    assert m["loss"] < m["validation_loss"] < m["validation_loss_average_user"]
    assert (m["clip_min"], m["clip_max"]) == (m["label_min"], m["label_max"])
    # The average item: the learned coordinates (8 factors and the bias), null for the model's bias.
    prior = m["item_prior"]
    assert m["item_prior_views"] == ["item_embedding"] and len(prior) == 10
    assert all(isinstance(p, float) for p in prior[:9]) and prior[9] is None
    # How the feature job fitted the factors the version is served with.
    fit = m["feature_jobs"]["item_factors"]
    assert fit["seed"] == 0 and fit["l2"] > 0 and fit["mean"] == pytest.approx(float(pc.mean(labels["rating"]).as_py()))


def test_unix_second_timestamps_train_the_same(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = pq.read_table(trained / "labels.parquet")
    seconds = pc.divide(pc.cast(labels["event_timestamp"].cast(pa.timestamp("us")), pa.int64()), 1_000_000)
    as_unix = labels.set_column(3, "event_timestamp", seconds)
    assert pa.types.is_integer(as_unix.schema.field("event_timestamp").type)
    pq.write_table(as_unix, trained / "unix.parquet")
    assert main(["-r", str(trained), "train", "taste", "--labels", str(trained / "unix.parquet")]) == 0
    with FeatureStore(trained) as store:
        one, two = (store.model_versions.get("taste", v) for v in (1, 2))
    assert two.metrics["rows"] == one.metrics["rows"]
    assert two.data_end is not None and one.data_end is not None
    assert abs((two.data_end - one.data_end).total_seconds()) < 1.0
    assert two.metrics["l2"] == one.metrics["l2"]
    assert two.metrics["validation_loss"] == pytest.approx(one.metrics["validation_loss"], rel=1e-6)
    # The labels kept for `models retrain` hold the instants the seconds meant.
    from featurestore.feedback.export import LABELS_FILE

    saved = pq.read_table(Path(two.artifact) / LABELS_FILE)
    assert saved["event_timestamp"].type == pa.timestamp("us", tz="UTC")
    assert saved["event_timestamp"][0].as_py() == labels["event_timestamp"][0].as_py().replace(microsecond=0)


def test_scores_are_clipped_to_the_label_range_and_ranked_unclipped(trained: Path) -> None:
    with FeatureStore(trained) as store:
        m = store.model_versions.get("taste", 1).metrics
        plan = store.predictor.planner.plan("taste")
        items = [{"item_id": i} for i in range(1, 201)]
        # A user whose weights push scores out of the range: scale the average user.
        from featurestore.models.linear import new_user_state
        from featurestore.models.state_codec import encode_state

        w = plan.states.average().copy()
        w[:-1] *= 40.0  # the bias (last) keeps the scores centred in the range
        blob = encode_state(new_user_state(w, plan.layout.l2))
        store.online_store.put_blobs(plan.states.namespace, {plan.user_key({"user_id": 777_777}): blob})
        p = store.predict("taste", {"user_id": 777_777}, items)
        top = store.predict("taste", {"user_id": 777_777}, items, k=5)
        store.predictor.close()
    X = p.features
    raw = X @ w
    assert (raw > m["label_max"]).any() and (raw < m["label_min"]).any()
    assert p.scores.min() == m["label_min"] and p.scores.max() == m["label_max"]
    np.testing.assert_array_equal(p.scores, np.clip(raw, m["label_min"], m["label_max"]))
    # The top 5 by the unclipped score, although all five are reported at the top of the range.
    assert top.order.tolist() == np.argsort(-raw, kind="stable")[:5].tolist()


def test_a_new_item_gets_the_average_item_and_its_feedback_is_logged(trained: Path) -> None:
    with FeatureStore(trained) as store:
        m = store.model_versions.get("taste", 1).metrics
        p = store.predict("taste", {"user_id": 3}, [{"item_id": 1}, {"item_id": NEW_ITEM}])
        assert p.statuses == ["present", "prior"]
        prior = np.array([np.nan if v is None else v for v in m["item_prior"]])
        np.testing.assert_array_equal(p.features[1, :9], prior[:9])
        assert np.isfinite(p.scores).all()
        result = store.feedback("taste", {"user_id": 3}, {"item_id": NEW_ITEM}, label=4.5, feedback_id="new-item")
        assert (result.new, len(result.rejected)) == (1, 0)
        store.predictor.close()
        from featurestore.feedback.export import export_feedback, read_feedback_view

        export_feedback(store.context, "taste")
        logged = read_feedback_view(store.context, "taste")
    assert logged is not None and logged["item_id"].to_pylist() == [NEW_ITEM]


def test_retrain_learns_the_logged_feedback_and_keeps_a_version_when_told(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = str(trained)
    with FeatureStore(trained) as store:
        for k in range(30):
            store.feedback("taste", {"user_id": 1 + k % 7}, {"item_id": NEW_ITEM}, label=5.0, feedback_id=f"n{k}")
        before = store.get_online_features(["item_embedding:factors"], [{"item_id": 1}]).to_dict()["factors"][0]
        store.predictor.close()
    assert main(["-r", r, "models", "retrain", "taste", "--activate", "never"]) == 0
    out = capsys.readouterr().out
    assert "30 of them from the logged feedback" in out
    assert "Kept version 1 active: --activate never" in out
    with FeatureStore(trained) as store:
        assert store.model_versions.active_versions()["taste"] == 1
        assert store.model_versions.get("taste", 2).metrics["validation_loss"] is not None
        # The active version is served with the factors it was trained on again.
        again = store.get_online_features(["item_embedding:factors"], [{"item_id": 1}]).to_dict()["factors"][0]
        assert again == before
    # The default: activated when no worse; the new item is learned.
    assert main(["-r", r, "models", "retrain", "taste", "--activate", "always"]) == 0
    out = capsys.readouterr().out
    assert "Activated version 3: --activate always" in out
    factors = pq.read_table(trained / "data/source/item_factors.parquet")
    assert NEW_ITEM in factors["item_id"].to_pylist()
    with FeatureStore(trained) as store:
        assert store.model_versions.active_versions()["taste"] == 3
        p = store.predict("taste", {"user_id": 1}, [{"item_id": NEW_ITEM}])
        assert p.statuses == ["present"]
        store.predictor.close()
