"""Offline training: x assembled from point-in-time features, the closed forms (checked against
scikit-learn), dropped rows, the version record, the online state and the artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import Ridge

from featurestore import FeatureStore
from featurestore.models.state_codec import decode_state
from featurestore.models.state_store import ModelLayout, ModelStateStore
from featurestore.models.artifacts import read_artifact, restore_version
from registry.errors import ConfigError, DataError, NotFoundError
from tests.velox.conftest import ITEMS, fake_export, item_x, key, labels, make_store

L2 = 2.0  # taste's l2


def _closed_form(table: pa.Table) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The maths of docs/model-state.md written out with plain numpy solves."""
    users = table["user_id"].to_numpy()
    X = np.stack([item_x(int(i)) for i in table["item_id"].to_numpy()])
    y = table["rating"].to_numpy()
    mask = np.diag([1.0, 1.0, 1.0, 1.0, 0.0])  # the bias (last) is not penalised for w_avg
    w_avg = np.linalg.solve(X.T @ X + L2 * mask, X.T @ y)
    per_user = {}
    for u in np.unique(users):
        Xu, yu = X[users == u], y[users == u]
        per_user[int(u)] = np.linalg.solve(Xu.T @ Xu + L2 * np.eye(5), Xu.T @ yu + L2 * w_avg)
    return w_avg, per_user


def test_training_matches_the_closed_form_and_scikit_learn(store: FeatureStore) -> None:
    calls = fake_export(store)
    table = labels()
    result = store.train("taste", table)
    assert calls == [{"features": ["item_vec:vec", "item_pop:pop"], "timestamp_column": "event_timestamp", "full_names": True}]
    w_avg, per_user = _closed_form(table)
    np.testing.assert_allclose(result.w_avg, w_avg, rtol=1e-9, atol=1e-10)

    # The closed forms are scikit-learn's ridge: the average user with an unpenalised intercept,
    # each user as a ridge without intercept on the residual of the average user.
    X = np.stack([item_x(int(i)) for i in table["item_id"].to_numpy()])
    y = table["rating"].to_numpy()
    ref = Ridge(alpha=L2, fit_intercept=True).fit(X[:, :-1], y)
    np.testing.assert_allclose(result.w_avg, [*ref.coef_, ref.intercept_], rtol=1e-8, atol=1e-9)

    states = ModelStateStore(store.online_store, "taste", result.version)
    users = table["user_id"].to_numpy()
    for user, w in per_user.items():
        state = states.get_state(key(user))
        np.testing.assert_allclose(state.w, w, rtol=1e-9, atol=1e-10)
        Xu, yu = X[users == user], y[users == user]
        delta = Ridge(alpha=L2, fit_intercept=False).fit(Xu, yu - Xu @ w_avg).coef_
        np.testing.assert_allclose(state.w - w_avg, delta, rtol=1e-7, atol=1e-9)
        assert state.n == int((users == user).sum())


def test_version_record_metrics_and_artifact(store: FeatureStore) -> None:
    fake_export(store)
    table = labels()
    result = store.train("taste", table)
    assert result.version == 1 and store.model_versions.active_versions() == {"taste": 1}
    recorded = store.model_versions.get("taste", 1)
    assert recorded.registry_version == 1
    assert recorded.data_start is not None and recorded.data_end is not None
    assert recorded.data_start < recorded.data_end
    m = recorded.metrics
    assert m["rows"] == 300 and m["users"] == 3 and m["loss_name"] == "squared_error"
    # Personalised weights fit the training rows better than the average user does.
    assert m["loss"] < m["loss_average_user"]
    assert Path(recorded.artifact) == store.config.offline_path / store.project / "_models" / "taste" / "v1"

    manifest, layout, w_avg, states = read_artifact(Path(recorded.artifact))
    assert manifest["version"] == 1 and manifest["users"] == 3
    assert layout.columns() == ["item_vec:vec[0]", "item_vec:vec[1]", "item_vec:vec[2]", "item_pop:pop", "bias"]
    np.testing.assert_array_equal(w_avg, result.w_avg)
    online = ModelStateStore(store.online_store, "taste", 1)
    for user_key, state in states.items():
        np.testing.assert_array_equal(state.w, online.get_state(user_key).w)
    raw = pq.read_table(Path(recorded.artifact) / "states.parquet")
    assert raw.column_names == ["user_key", "state"]
    assert sorted(raw["user_key"].to_pylist()) == [b"1", b"2", b"3"]
    assert decode_state(raw["state"][0].as_py()).d == 5
    assert json.loads((Path(recorded.artifact) / "manifest.json").read_text())["layout"]["d"] == 5

    second = store.train("taste", table)
    assert second.version == 2 and store.model_versions.active_versions() == {"taste": 2}


def test_rows_with_missing_features_or_labels_are_dropped_and_counted(store: FeatureStore) -> None:
    fake_export(store, missing_items=frozenset({1, 2}))
    table = labels(n=200)
    items = table["item_id"].to_numpy()
    rating = table["rating"].to_pylist()
    rating[0] = None
    table = table.set_column(table.column_names.index("rating"), "rating", pa.array(rating, pa.float64()))
    result = store.train("taste", table)
    missing = int(np.isin(items, [1, 2]).sum())
    label_only = 0 if items[0] in (1, 2) else 1
    assert missing > 0
    assert result.metrics["rows_dropped_missing_features"] == missing
    assert result.metrics["rows_dropped_missing_label"] == label_only
    assert result.rows == 200 - missing - label_only
    assert f"{missing + label_only:,} rows dropped (features: {missing:,}, label: {label_only:,})" in result.summary()


def test_logistic_model_with_user_and_request_features(store: FeatureStore) -> None:
    calls = fake_export(store)
    result = store.train("ctx", labels())
    assert calls[0]["features"] == ["item_vec:vec", "user_stats:activity"]
    assert result.d == 6 and result.metrics["loss_name"] == "log_loss"
    layout = ModelStateStore(store.online_store, "ctx", result.version).layout()
    assert layout.columns()[-3:] == ["user_stats:activity", "request:hour", "bias"]


def test_labels_missing_a_column_name_it(store: FeatureStore) -> None:
    fake_export(store)
    with pytest.raises(DataError, match="no column\\(s\\) hour"):
        store.train("ctx", labels().drop(["hour"]))
    with pytest.raises(DataError, match="event_timestamp"):
        store.train("taste", labels().drop(["event_timestamp"]))
    # --timestamp-column names another column
    renamed = labels().rename_columns(["user_id", "item_id", "rating", "clicked", "hour", "ts"])
    assert store.train("taste", renamed, timestamp_column="ts").version == 1


def test_unknown_model_suggests_the_nearest(store: FeatureStore) -> None:
    with pytest.raises(NotFoundError, match="did you mean 'taste'"):
        store.train("tastes", labels())


def test_layout_rejects_features_a_linear_model_cannot_use(tmp_path: Path, unique_project: str) -> None:
    bad = """\
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
  - {name: item, join_keys: [{name: item_id, dtype: int64}]}
sources:
  - {name: src, type: parquet, path: data/x.parquet, timestamp_field: ts}
feature_views:
  - name: item_text
    entities: [item]
    source: src
    features: [{name: title, dtype: string}, {name: emb, dtype: "float32[]"}]
  - name: user_stats
    entities: [user]
    source: src
    features: [{name: activity, dtype: float64}]
models:
  - {name: strings, user_entity: user, item_entity: item, features: [item_text:title], label: y}
  - {name: ragged, user_entity: user, item_entity: item, features: [item_text:emb], label: y}
  - {name: wrong_entity, user_entity: user, item_entity: item, features: [user_stats:activity], label: y}
"""
    store = make_store(tmp_path / "r", {"type": "memory"}, unique_project, defs=bad)
    defs = store.definitions()
    with pytest.raises(ConfigError, match="dtype string"):
        ModelLayout.from_spec(defs, defs.models["strings"])
    with pytest.raises(ConfigError, match=r"float32\[\]"):
        ModelLayout.from_spec(defs, defs.models["ragged"])
    with pytest.raises(ConfigError, match="keyed by user"):
        ModelLayout.from_spec(defs, defs.models["wrong_entity"])
    store.close()


def test_activate_restores_a_version_whose_online_state_is_gone(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels())
    store.train("taste", labels(seed=1))
    states = ModelStateStore(store.online_store, "taste", 1)
    expected = states.get_state(key(1)).w
    assert store.online_store.delete_namespace(states.namespace) == 5  # 3 users, average, layout
    assert not states.exists()
    store.activate_model("taste", 1)
    assert store.model_versions.active_versions() == {"taste": 1}
    np.testing.assert_array_equal(ModelStateStore(store.online_store, "taste", 1).get_state(key(1)).w, expected)
    assert restore_version(store.context, "taste", 1) is False  # present now: nothing to do


def test_no_rows_left_is_a_clear_error(store: FeatureStore) -> None:
    fake_export(store, missing_items=frozenset(ITEMS))
    with pytest.raises(DataError, match="no training rows left"):
        store.train("taste", labels(n=20))
    assert store.model_versions.list("taste") == []


def test_weights_only_read_equals_the_decoded_state(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels())
    states = ModelStateStore(store.online_store, "taste", 1)
    users = [key(1), key(999), key(3)]
    W = states.get_weights(users)
    full = states.get_states(users)
    np.testing.assert_array_equal(W, np.stack([s.w for s in full]))
    np.testing.assert_array_equal(W[1], states.average())
    store.online_store.put_blobs(states.namespace, {key(3): b"VS\x01\x01garbage"})
    with pytest.raises(DataError, match="not a valid encoded user state"):
        states.get_weights([key(3)])
