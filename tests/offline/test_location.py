"""Object-store offline paths (featurestore/offline/location.py) against a real S3-compatible
server (moto, started by .ci/run): the path operations the layout uses behave as on a local
disk, writes are whole or absent, and a bad URI is a one-line ConfigError."""

from __future__ import annotations

import pickle
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.config import load_config
from featurestore.offline import layout, location
from featurestore.offline.location import ObjectPath, ObjectStoreOptions
from registry.errors import ConfigError


def _root(bucket: str, endpoint: str) -> ObjectPath:
    path = location.resolve(f"{bucket}/offline", Path("/unused"), ObjectStoreOptions(endpoint))
    assert isinstance(path, ObjectPath)
    return path


def _repo(tmp_path: Path, offline: str) -> Path:
    (tmp_path / "featurestore.yaml").write_text(
        f"project: demo\noffline_store: {{path: '{offline}'}}\n"
    )
    return tmp_path


def test_a_bad_scheme_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_repo(tmp_path, "hdfs://cluster/offline"))
    message = str(caught.value)
    assert "\n" not in message
    assert "offline_store.path" in message and "'hdfs://'" in message
    assert "s3://bucket/prefix" in message and "FEATURESTORE__OFFLINE_STORE__PATH" in message


def test_a_uri_without_bucket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names no bucket"):
        load_config(_repo(tmp_path, "s3://"))
    with pytest.raises(ConfigError, match="names no bucket"):
        load_config(_repo(tmp_path, "s3:///x"))


def test_a_uri_missing_a_slash_is_not_taken_for_a_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing a slash"):
        load_config(_repo(tmp_path, "s3:/bucket/prefix"))


def test_settings_and_where_artifacts_go(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "s3://bucket/some/prefix")
    config = load_config(
        repo,
        environ={
            "FEATURESTORE__OFFLINE_STORE__ENDPOINT_OVERRIDE": "http://127.0.0.1:9",
            "FEATURESTORE__OFFLINE_STORE__REGION": "eu-west-1",
        },
    )
    offline = config.offline_path
    assert offline == ObjectPath("s3", "bucket/some/prefix")
    assert offline.options == ObjectStoreOptions("http://127.0.0.1:9", "eu-west-1")
    assert str(offline / "demo" / "v") == "s3://bucket/some/prefix/demo/v"
    # Model artifacts and the feedback export stay on a local directory.
    assert config.artifacts_path == repo.resolve() / "data" / "artifacts"
    local = load_config(_repo(tmp_path, "data/offline"), environ={})
    assert local.offline_path == local.artifacts_path == tmp_path.resolve() / "data" / "offline"
    with pytest.raises(ConfigError, match="artifacts_path"):
        load_config(repo, {"offline_store": {"artifacts_path": "s3://b/a"}}, environ={})


def test_an_object_path_is_plain_data(s3_bucket: str, s3_endpoint: str) -> None:
    root = _root(s3_bucket, s3_endpoint)
    root.filesystem()  # opened in this process; not part of what is pickled
    copy = pickle.loads(pickle.dumps(root / "x"))
    assert copy == root / "x" and copy.options == root.options
    assert len(pickle.dumps(root)) < 400


def test_listing_and_files_behave_as_on_a_local_disk(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    table = pa.table({"k": [1, 2], "event_timestamp": pa.array([0, 1], layout.TS_TYPE)})

    def fill(root: location.OfflinePath) -> None:
        for day in ("2026-01-02", "2026-01-01"):
            layout.write_atomic(table, root / "p" / "v" / f"date={day}" / "data.parquet")
        layout.write_atomic(table, root / "p" / "v" / "date=2026-01-01" / "stream-a.parquet")

    local, remote = tmp_path / "off", _root(s3_bucket, s3_endpoint)
    for root in (local, remote):
        fill(root)
        view = layout.view_dir(root, "p", "v")
        assert layout.existing_partitions(root, "p", "v") == [date(2026, 1, 1), date(2026, 1, 2)]
        assert sorted(str(p.relative_to(view)) for p in view.glob("date=*/*.parquet")) == NAMES
        target = view / "date=2026-01-01" / "data.parquet"
        assert target.exists() and not target.is_dir() and view.is_dir()
        assert location.read_table(target).equals(table)
        assert location.parquet_rows(target) == 2
        target.unlink()
        assert not target.exists() and location.parquet_rows(target) == 0
        assert layout.existing_partitions(root, "p", "v")[-1] == date(2026, 1, 2)
        assert layout.existing_partitions(root, "p", "nothing") == []
    # The same bytes either way.
    name = "p/v/date=2026-01-02/data.parquet"
    assert (local / name).read_bytes() == _bytes(remote / name)


NAMES = [
    "date=2026-01-01/data.parquet",
    "date=2026-01-01/stream-a.parquet",
    "date=2026-01-02/data.parquet",
]


def _bytes(path: ObjectPath) -> bytes:
    with path.filesystem().open_input_stream(path.path) as source:
        return source.read()


def test_a_failed_write_leaves_the_old_object(
    s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _root(s3_bucket, s3_endpoint) / "p" / "v" / "date=2026-01-01" / "data.parquet"
    old = pa.table({"a": [1, 2, 3]})
    layout.write_atomic(old, target)
    before = _bytes(target)

    class Boom(Exception):
        pass

    def failing(*args: object, **kwargs: object) -> None:
        raise Boom

    # The Parquet encoder fails half-way: nothing has been sent yet, so nothing changes.
    with monkeypatch.context() as patch:
        patch.setattr(pq, "write_table", failing)
        with pytest.raises(Boom):
            layout.write_atomic(pa.table({"a": [9]}), target)
    assert _bytes(target) == before
    # A streamed writer (the rejects file) that fails inside its block uploads nothing.
    other = target.with_name("rejects.parquet")
    with pytest.raises(Boom), location.parquet_writer(other, old.schema) as writer:
        writer.write_table(old)
        raise Boom
    assert not other.exists()
    with location.parquet_writer(other, old.schema) as writer:
        writer.write_table(old)
    assert location.read_table(other).equals(old)
    assert [p.name for p in target.parent.iterdir()] == ["data.parquet", "rejects.parquet"]


def test_remove_tree_and_rmdir(s3_bucket: str, s3_endpoint: str) -> None:
    staging = _root(s3_bucket, s3_endpoint) / "p" / "_staging" / "v"
    location.write_ipc([pa.record_batch({"a": [1]})], staging / "run" / "x.arrow")
    assert location.read_ipc(staging / "run" / "x.arrow").num_rows == 1
    with pytest.raises(OSError):
        staging.parent.rmdir()
    location.remove_tree(staging)
    location.remove_tree(staging)  # absent: nothing to do
    assert list(staging.parent.iterdir()) == []
