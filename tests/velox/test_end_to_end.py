"""The whole Velox loop on the example repository: the feature job learns item factors, the
materializer puts them online and offline, training joins them point-in-time onto ratings that
came later, and predictions score items with them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.cli.main import main
from featurestore.example.repo import small_config, write_example_repo


@pytest.fixture
def example(tmp_path: Path) -> Path:
    root = tmp_path / "example"
    write_example_repo(root, config=small_config())
    assert main(["-r", str(root), "apply"]) == 0
    return root


def test_feature_job_materialize_train_predict(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = str(example)
    assert main(["-r", r, "jobs", "run", "item_factors"]) == 0
    out = capsys.readouterr().out
    assert "feeds: item_embedding" in out and "item_embedding: materialized 200 rows online" in out

    factors = pq.read_table(example / "data" / "source" / "item_factors.parquet")
    learned_at = factors["event_ts"][0].as_py()
    # Ratings given after the factors were learned (the generator's, moved past that time): the
    # point-in-time join must see the factors for every one of them.
    ratings = pa.concat_tables(pq.read_table(p) for p in sorted((example / "data" / "source" / "ratings").glob("*.parquet")))
    ratings = ratings.slice(0, 5_000)
    shift = learned_at - pc.min(ratings["event_ts"]).as_py() + timedelta(hours=1)
    when = pc.add(ratings["event_ts"], pa.scalar(shift, pa.duration("us")))
    labels = ratings.select(["user_id", "item_id", "rating"]).append_column("event_timestamp", when)
    pq.write_table(labels, example / "labels.parquet")

    assert main(["-r", r, "train", "taste", "--labels", str(example / "labels.parquet")]) == 0
    out = capsys.readouterr().out
    assert "Trained model 'taste' version 1 (active) on 5,000 rows" in out

    with FeatureStore(example) as store:
        metrics = store.model_versions.get("taste", 1).metrics
        assert metrics["rows_dropped_missing_features"] == 0
        assert metrics["loss"] < metrics["loss_average_user"]
        items = [{"item_id": i} for i in range(1, 51)]
        user = int(labels["user_id"][0].as_py())
        known = store.predict("taste", {"user_id": user}, items, k=10)
        fresh = store.predict("taste", {"user_id": 10_000_000}, items)
        assert known.model_version == 1 and len(known.to_dict()["scores"]) == 10
        assert np.isfinite(fresh.scores).all()
        assert not np.allclose(known.scores, fresh.scores)
        store.predictor.close()
