"""``feature_drift``: per-coordinate KS distance between served vectors and a reference, checked
against scipy, weighted by the artifact's |w_avg|."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from featurestore import FeatureStore
from featurestore.evaluation import feature_drift, ks_distance
from featurestore.models.prediction_log import PredictionLog, PredictionRecord
from tests.velox_feedback.conftest import trained_store

NOW = datetime.now(timezone.utc)


def _log(store: FeatureStore, x: np.ndarray, at: datetime, per: int = 10) -> None:
    log = PredictionLog(store.registry.engine, store.project)
    for start in range(0, len(x), per):
        block = x[start : start + per]
        log.log(PredictionRecord(uuid.uuid4().hex, store.project, "taste", 2, "1",
                                 [str(i) for i in range(len(block))], block, at))
    assert log.flush()
    log.close()


def test_ks_distance_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(0.4, 1.2, size=200)
    assert ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    assert ks_distance(a, a) == 0.0
    assert np.isnan(ks_distance(a, np.array([])))


def test_drift_weighted_by_the_average_user(tmp_path: Path, unique_project: str) -> None:
    store = trained_store(tmp_path / "repo", {"type": "embedded"}, unique_project)
    try:
        rng = np.random.default_rng(1)
        ref = rng.normal(size=(400, 5)); ref[:, 4] = 1.0
        cur = rng.normal(size=(300, 5)); cur[:, 4] = 1.0
        cur[:, 0] += 3.0  # the first factor moved a lot
        cur[:, 3] *= 1.5  # item popularity spread out
        cur[5] = np.nan  # an unscored candidate: ignored
        _log(store, ref, NOW - timedelta(days=3))
        _log(store, cur, NOW - timedelta(minutes=10))
        window_start = (NOW - timedelta(hours=1)).isoformat()
        table = feature_drift(store, "taste", window="1h",
                              reference=f"{(NOW - timedelta(days=4)).isoformat()}..{window_start}")
        w_avg = np.asarray(json.loads((Path(store.model_versions.get("taste", 2).artifact) / "manifest.json")
                                      .read_text())["average"])
        rows = {r["feature"]: r for r in table.to_pylist()}
        assert set(rows) == {"item_vec:vec[0]", "item_vec:vec[1]", "item_vec:vec[2]", "item_pop:pop", "bias"}
        clean = np.delete(cur, 5, axis=0)
        for j, name in enumerate(["item_vec:vec[0]", "item_vec:vec[1]", "item_vec:vec[2]", "item_pop:pop", "bias"]):
            expected = ks_2samp(ref[:, j], clean[:, j]).statistic if j < 4 else 0.0
            assert rows[name]["distance"] == pytest.approx(expected, abs=1e-12), name
            assert rows[name]["weight"] == pytest.approx(abs(w_avg[j]))
            assert rows[name]["weighted"] == pytest.approx(expected * abs(w_avg[j]), abs=1e-12)
        weighted = [r["weighted"] for r in table.to_pylist()]
        assert weighted == sorted(weighted, reverse=True)
        meta = table.schema.metadata
        assert (meta[b"window_vectors"], meta[b"reference_vectors"]) == (b"299", b"400")
        score = sum(r["weighted"] for r in rows.values()) / sum(r["weight"] for r in rows.values())
        assert float(meta[b"weighted_drift"]) == pytest.approx(score)
        # A duration as the reference: the same length just before the window (3 days ago is in 7d).
        again = feature_drift(store, "taste", window="1h", reference="7d")
        assert again.to_pylist() == table.to_pylist()
    finally:
        store.close()
