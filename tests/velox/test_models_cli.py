"""`featurestore train` and `featurestore models ...`, with the real point-in-time export over
offline files written in the documented layout (no materializer needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.cli.main import main
from featurestore.models.state_store import ModelStateStore
from featurestore.offline import layout
from tests.velox.conftest import ITEMS, fill, item_pop, item_vec, key, labels, make_store

# conftest.labels() starts at 1_700_000_000 s and adds a label a minute.
T0 = datetime.fromtimestamp(1_700_000_000 - 60, tz=timezone.utc)
HALF_HOUR = timedelta(minutes=30)


def _write_offline(store: FeatureStore) -> None:
    """item_vec once (no ttl); item_pop (ttl 1h) every half hour for 5 hours, except for item
    20, which never has one: its labels are dropped."""
    def write(view: str, rows: list[tuple[int, datetime]], features: dict[str, pa.Array]) -> None:
        table = pa.table({
            "item_id": pa.array([i for i, _ in rows], pa.int64()),
            layout.EVENT_TS: pa.array([t for _, t in rows], layout.TS_TYPE),
            layout.CREATED_TS: pa.array([t for _, t in rows], layout.TS_TYPE),
            **features,
        })
        layout.replace_interval(store.config.offline_path, store.project, view, table, T0, T0 + timedelta(days=1))

    write("item_vec", [(i, T0) for i in ITEMS], {"vec": pa.array([item_vec(i) for i in ITEMS], pa.list_(pa.float32(), 3))})
    rows = [(i, T0 + k * HALF_HOUR) for k in range(10) for i in ITEMS[:-1]]
    write("item_pop", rows, {"pop": pa.array([item_pop(i) for i, _ in rows], pa.float64()),
                             "label": pa.array([f"#{i}" for i, _ in rows])})


@pytest.fixture
def repo(tmp_path: Path, unique_project: str) -> Path:
    store = make_store(tmp_path / "repo", {"type": "embedded"}, unique_project)
    fill(store)
    _write_offline(store)
    table = labels(n=240, items=ITEMS)
    pq.write_table(table, store.repo_path / "labels.parquet")
    store.close()
    return store.repo_path


def test_train_list_show_activate_rollback(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = str(repo)
    assert main(["-r", r, "train", "taste", "--labels", str(repo / "labels.parquet")]) == 0
    out = capsys.readouterr().out
    table = pq.read_table(repo / "labels.parquet")
    dropped = int(np.sum(table["item_id"].to_numpy() == 20))
    assert "Trained model 'taste' version 1 (active)" in out
    assert f"{dropped:,} rows dropped (features: {dropped:,}, label: 0)" in out
    assert main(["-r", r, "train", "taste", "--labels", str(repo / "labels.parquet")]) == 0
    capsys.readouterr()

    assert main(["-r", r, "models", "list", "taste"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[-1].startswith("*       2") and listing[-2].startswith("        1")
    assert main(["-r", r, "models", "show", "taste", "--json"]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2 and shown["active"] is True
    assert shown["metrics"]["rows"] == 240 - dropped
    assert shown["columns"][-1] == "bias"

    assert main(["-r", r, "models", "rollback", "taste"]) == 0
    assert "rolled back to version 1" in capsys.readouterr().out
    assert main(["-r", r, "models", "rollback", "taste"]) == 1
    err = capsys.readouterr().err
    assert "error: model 'taste' has no version before the active version 1" in err and "hint:" in err
    assert main(["-r", r, "models", "activate", "taste", "2"]) == 0
    assert main(["-r", r, "models", "activate", "taste", "7"]) == 1
    assert "has no version 7" in capsys.readouterr().err

    with FeatureStore(repo) as store:
        assert store.model_versions.active_versions() == {"taste": 2}
        # The real export joined the same features the online store serves.
        prediction = store.predict("taste", {"user_id": 1}, [{"item_id": 3}])
        w = ModelStateStore(store.online_store, "taste", 2).get_state(key(1)).w
        assert prediction.scores[0] == pytest.approx(np.array([*item_vec(3), item_pop(3), 1.0]) @ w)
        store.predictor.close()


def test_unknown_model_and_missing_labels(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = str(repo)
    assert main(["-r", r, "train", "tast", "--labels", str(repo / "labels.parquet")]) == 1
    assert "did you mean 'taste'" in capsys.readouterr().err
    assert main(["-r", r, "train", "taste", "--labels", str(repo / "nope.parquet")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["-r", r, "models", "list", "taste"]) == 0
    assert "has no versions yet" in capsys.readouterr().out
    assert main(["-r", r, "models", "show", "taste"]) == 1
    assert "has no active version" in capsys.readouterr().err
