"""Issue 19: the Parquet source reads bounded batches whatever the file's row groups, pushes the
interval down exactly as before, and the online combine's bucketing and Beam's IPython probe."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.sources import ORDINAL, Interval, ParquetReader

DAY_US = 86_400_000_000
START_US = 1_767_225_600_000_000  # 2026-01-01


def _file(path: Path, rows: int, row_group: int, nulls: int = 0) -> Path:
    ts = START_US + np.arange(rows, dtype=np.int64) * (10 * DAY_US // rows)  # over 10 days
    mask = np.zeros(rows, dtype=bool)
    mask[:nulls] = True
    table = pa.table(
        {
            "id": pa.array(np.arange(rows) % 97, pa.int64()),
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC"), mask=mask),
            "v": pa.array(np.arange(rows, dtype=np.float64)),
        }
    )
    pq.write_table(table, path, row_group_size=row_group)
    return path


def _reader(path: Path, interval: Interval, batch_rows: int) -> ParquetReader:
    return ParquetReader("src", str(path), str(path.parent), ("id", "ts", "v"), "ts", interval, batch_rows)


def _utc(days: float) -> datetime:
    return datetime.fromtimestamp((START_US + days * DAY_US) / 1e6, timezone.utc)


def test_one_big_row_group_is_read_in_batches_of_batch_rows(tmp_path: Path) -> None:
    path = _file(tmp_path / "big.parquet", 50_000, row_group=50_000)
    batches = list(_reader(path, Interval.everything(), 4_096).read((3, str(path))))
    assert max(b.num_rows for b in batches) <= 4_096
    assert sum(b.num_rows for b in batches) == 50_000
    ordinals = np.concatenate([b.column(ORDINAL).to_numpy() for b in batches])
    assert (ordinals == (3 << 40) + np.arange(50_000)).all()


def test_the_interval_keeps_rows_inside_it_and_null_times(tmp_path: Path) -> None:
    path = _file(tmp_path / "groups.parquet", 20_000, row_group=2_000, nulls=5)
    interval = Interval.of(_utc(2.5), _utc(6))
    got = pa.Table.from_batches(list(_reader(path, interval, 1_000).read((0, str(path)))))
    table = pq.read_table(path)
    ts = table.column("ts")
    inside = [
        t is None or interval.start <= t < interval.end for t in ts.to_pylist()
    ]
    assert got.column("v").to_pylist() == table.filter(pa.array(inside)).column("v").to_pylist()
    assert got.column("ts").null_count == 5
    # Ordinals number the rows kept, in file order, as the dataset filter did.
    assert got.column(ORDINAL).to_pylist() == list(range(got.num_rows))


def test_row_groups_outside_the_interval_are_not_read(tmp_path: Path) -> None:
    path = _file(tmp_path / "groups.parquet", 20_000, row_group=2_000)
    reader = _reader(path, Interval.of(_utc(2.5), _utc(4)), 1_000)
    groups = reader._row_groups(pq.ParquetFile(path).metadata, bounded=True)
    assert groups == [2, 3]


def test_join_key_buckets_are_stable_and_spread() -> None:
    from materializers.online_write import join_key_buckets

    class _Schema:
        join_keys = (("id", "int64"),)
        key_names = ("id",)

    ids = pa.table({"id": pa.array(np.arange(100_000), pa.int64())})
    buckets = join_key_buckets(ids, _Schema(), 16)  # type: ignore[arg-type]
    assert buckets.min() >= 0 and buckets.max() < 16
    counts = np.bincount(buckets, minlength=16)
    assert counts.min() > 100_000 / 16 * 0.9
    again = join_key_buckets(ids.slice(500, 10), _Schema(), 16)  # type: ignore[arg-type]
    assert again.tolist() == buckets[500:510].tolist()


def test_the_ipython_probe_answers_no_without_ipython_and_asks_beam_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import apache_beam.pipeline as beam_pipeline

    from materializers.lifecycle import no_ipython_probe

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    with no_ipython_probe():
        assert beam_pipeline.is_in_ipython() is False
        assert "IPython" not in sys.modules  # answered without importing it
    # With IPython imported, Beam's own probe is asked (here a shell is running).
    asked: list[int] = []
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: asked.append(1) or object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert beam_pipeline.is_in_ipython() is True and asked == [1]


def test_a_file_without_a_requested_column_is_refused(tmp_path: Path) -> None:
    from registry.errors import DataError

    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"ts": pa.array([1, 2], pa.timestamp("us", tz="UTC")), "x": [1.0, 2.0]}), path)
    source = ParquetReader("src", str(path), str(tmp_path), ("ts", "x", "y"), "ts", Interval(None, None), 100)
    with pytest.raises(DataError) as err:
        list(source.read((0, str(path))))
    assert "'y'" in err.value.message and err.value.hint
