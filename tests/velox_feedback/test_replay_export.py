"""Derived data rebuilt from the log: `replay` after the online state is lost, the offline
Parquet view (`export-feedback`, idempotent), and `retrain` on the labels plus the feedback —
from the CLI, from `models status` when auto_retrain is on, and as the server's subprocess."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.cli.main import main
from featurestore.feedback import replay
from featurestore.feedback.export import (
    LABELS_FILE,
    export_feedback,
    read_feedback_view,
)
from featurestore.feedback.log import FeedbackLog
from featurestore.models.state_codec import encode_state
from featurestore.models.state_store import state_namespace
from featurestore.feedback.maintenance import launch_retrain
from tests.velox.conftest import ITEMS, fill, key, labels, make_store
from tests.velox.test_models_cli import T0, _write_offline
from tests.velox_feedback.conftest import AUTO_DEFS, DEFS, state


def _feedback(store: FeatureStore, n: int, *, prefix: str = "f", offset: float = 0.0, step_minutes: int = 5) -> None:
    """``n`` observations of users 1-4, from an hour after T0 on: inside the offline features'
    window of tests/velox/test_models_cli.py (item_pop lives until T0 + 5.5 h) at 5-minute steps."""
    rng = np.random.default_rng(len(prefix) + n)
    store.feedback_many([
        {"model": "taste", "user": {"user_id": int(rng.integers(1, 5))}, "item": {"item_id": int(rng.integers(1, 20))},
         "label": float(rng.normal(3, 1)) + offset, "feedback_id": f"{prefix}{k}", "ts": T0 + timedelta(hours=1, minutes=step_minutes * k)}
        for k in range(n)
    ])


def test_replay_rebuilds_the_states_after_the_online_store_lost_them(trained: FeatureStore) -> None:
    _feedback(trained, 30)
    live = {u: encode_state(state(trained, key(u))) for u in (1, 2, 3, 4)}
    assert replay(trained.context, "taste", write=False).changed == 0
    trained.online_store.delete_namespace(state_namespace("taste", 2))  # "Redis was flushed"
    result = replay(trained.context, "taste")
    assert result.restored and result.observations == 30 and result.users == 4
    # Same observations in the same order as they were learned live: the same bytes.
    assert {u: encode_state(state(trained, key(u))) for u in (1, 2, 3, 4)} == live
    assert replay(trained.context, "taste").changed == 0


def test_the_offline_view_is_written_from_the_log_idempotently(trained: FeatureStore, capsys: pytest.CaptureFixture[str]) -> None:
    _feedback(trained, 260, step_minutes=7)  # two days
    trained.feedback("ctx", {"user_id": 1}, {"item_id": 3}, 1, "c1", request_features={"hour": 13.0})
    first = export_feedback(trained.context, "taste", block_rows=100)
    assert (first.rows, first.sealed_through, first.horizon) == (260, 200, 260)
    directory = trained.context.feedback_dir("taste")
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.parquet"))
    assert files[0] == "date=2023-11-14/seq-000000000001-000000000100.parquet"
    assert {f.split("/")[1] for f in files} == {f"seq-{lo:012d}-{lo + 99:012d}.parquet" for lo in (1, 101, 201)}
    view = read_feedback_view(trained.context, "taste")
    assert view is not None and view.num_rows == 260
    assert view["feedback_id"].to_pylist() == [f"f{k}" for k in range(260)]
    assert view.schema.field("user_id").type == "int64" and view.schema.field("rating").type == "double"
    assert str(view.schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
    before = {f: pq.read_table(directory / f) for f in files}
    # Re-running, or losing the watermark (a crash before it was written), rewrites the same files.
    export_feedback(trained.context, "taste", block_rows=100)
    (directory / "_export.json").unlink()
    assert export_feedback(trained.context, "taste", block_rows=100).rows == 260
    assert {f: pq.read_table(directory / f) for f in files} == before
    _feedback(trained, 5, prefix="g")
    assert main(["-r", str(trained.repo_path), "models", "export-feedback", "taste"]) == 1  # other block size
    assert "blocks of 100 rows" in capsys.readouterr().err
    export_feedback(trained.context, "taste", block_rows=100)
    view = read_feedback_view(trained.context, "taste")
    assert view is not None and view.num_rows == 265 and len(set(view["feedback_id"].to_pylist())) == 265
    # A model with request features gets them back as columns, from the logged x.
    export_feedback(trained.context, "ctx")
    ctx = read_feedback_view(trained.context, "ctx")
    assert ctx is not None and ctx["hour"].to_pylist() == [13.0] and ctx["clicked"].to_pylist() == [1.0]


@pytest.fixture
def repo(tmp_path: Path, unique_project: str) -> Path:
    store = make_store(tmp_path / "repo", {"type": "embedded"}, unique_project, AUTO_DEFS)
    fill(store)
    _write_offline(store)
    pq.write_table(labels(n=240, items=ITEMS), store.repo_path / "labels.parquet")
    store.close()
    return store.repo_path


def test_retrain_on_labels_plus_feedback_from_cli_status_and_server(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = str(repo)
    assert main(["-r", r, "train", "taste", "--labels", str(repo / "labels.parquet")]) == 0
    store = FeatureStore(repo)
    try:
        kept = store.model_versions.get("taste", 1).metrics["rows"]
        assert (Path(store.model_versions.get("taste", 1).artifact) / LABELS_FILE).is_file()
        _feedback(store, 40)
        capsys.readouterr()
        # Too few observations (40 < 100) to judge version 1 by its feedback: compared with its
        # validation loss; on these exact labels that is tiny, so the gate keeps version 1.
        assert main(["-r", r, "models", "retrain", "taste"]) == 0
        out = capsys.readouterr().out
        assert "wrote 40 feedback row(s)" in out and "version 2 (inactive)" in out
        assert "Kept version 1 active: validation loss" in out and "version 1's validation loss" in out
        assert store.model_versions.active_versions()["taste"] == 1
        store.activate_model("taste", 2)
        assert store.model_versions.get("taste", 2).metrics["rows"] == kept + 40
        saved = pq.read_table(Path(store.model_versions.get("taste", 2).artifact) / LABELS_FILE)
        assert saved.num_rows == 240  # the original labels only: feedback comes from the log

        # Feedback far off what the model predicts: stale; auto_retrain makes `status` retrain.
        store.watcher.refresh()  # what its next tick (within a second) does: version 2 is active
        _feedback(store, 30, prefix="off", offset=12.0)  # far off, inside the learned label bounds
        assert main(["-r", r, "models", "status", "taste", "--min-observations", "20", "--no-retrain", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["stale"] and not status["retraining"] and status["recent"]["count"] == 30
        assert status["recent"]["personalised"] > status["threshold"]
        assert main(["-r", r, "models", "status", "taste", "--min-observations", "20"]) == 0
        out = capsys.readouterr().out
        assert "STALE; auto_retrain is on" in out and "version 3 (active)" in out
        assert store.model_versions.get("taste", 3).metrics["rows"] == kept + 70
        assert main(["-r", r, "models", "status", "taste", "--min-observations", "20"]) == 0
        assert "Status: ok." in capsys.readouterr().out  # nothing logged for version 3 yet

        # The server's way: a subprocess, launched once per stale version.
        assert launch_retrain(store.context, "taste", 3) and not launch_retrain(store.context, "taste", 3)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(store.model_versions.list("taste")) < 4:
            time.sleep(0.2)
        log = Path(store.model_versions.get("taste", 3).artifact) / "retrain.log"
        assert len(store.model_versions.list("taste")) == 4, log.read_text()
        assert FeedbackLog(store.registry.engine, store.project).count("taste") == 70
    finally:
        store.predictor.close()
        store.close()


def test_retrain_without_saved_labels_says_what_to_pass(trained: FeatureStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert DEFS in (trained.repo_path / "features" / "defs.yaml").read_text()
    assert main(["-r", str(trained.repo_path), "models", "retrain", "taste"]) == 1
    err = capsys.readouterr().err
    assert "has no saved training labels" in err and "--labels FILE" in err
