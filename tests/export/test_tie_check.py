"""The tie check that lets the export order by event time alone (pit.has_key_time_ties).

A wrong "no ties" would let the join pick any of two rows with the same keys and time instead of
the latest created, so each path of the check is pinned here: the streaming pass over sorted
single-file partitions, the filter on the repeated times, the exact group-by (several files, an
unsorted file, too many repeated times) and event times stored as other timestamp types.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.export import pit

UTC = timezone.utc
T0 = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def write(path: Path, rows: list[tuple[int | None, datetime]], ts_type: pa.DataType) -> Path:
    """A feature file with (user_id, event_timestamp) rows in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    users = [u for u, _ in rows]
    times = [t if ts_type.tz is not None else t.replace(tzinfo=None) for _, t in rows]
    table = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(times, ts_type),
            "created_timestamp": pa.array(times, ts_type),
            "x": pa.array([1.0] * len(rows)),
        }
    )
    pq.write_table(table, path)
    return path


SORTED_NO_TIES = [(1, T0), (2, T0), (1, T0 + US), (3, T0 + 2 * US), (3, T0 + 3 * US)]
SORTED_TIE = [(1, T0), (2, T0 + US), (1, T0 + US), (2, T0 + US)]  # user 2 at T0 + 1 us twice

TIMESTAMP_TYPES = [
    pa.timestamp("us", tz="UTC"),  # the offline layout's type
    pa.timestamp("us"),  # naive: UTC
    pa.timestamp("ns", tz="UTC"),
    pa.timestamp("ms", tz="Asia/Kolkata"),
]


@pytest.mark.parametrize("ts_type", TIMESTAMP_TYPES, ids=str)
def test_sorted_files_are_checked_at_their_repeated_times(
    tmp_path: Path, ts_type: pa.DataType
) -> None:
    rows = SORTED_NO_TIES if ts_type.unit != "ms" else [(1, T0), (2, T0)]
    clean = write(tmp_path / "date=a" / "data.parquet", rows, ts_type)
    assert not pit.has_key_time_ties([clean], ["user_id"])
    tie = [(1, T0), (2, T0), (2, T0)] if ts_type.unit == "ms" else SORTED_TIE
    tied = write(tmp_path / "date=b" / "data.parquet", tie, ts_type)
    assert pit.has_key_time_ties([clean, tied], ["user_id"])
    assert pit.has_key_time_ties([tied], ["user_id"])


def test_too_many_repeated_times_take_the_exact_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pit, "_MAX_REPEATED_TIMES", 1)
    clean = write(
        tmp_path / "date=a" / "data.parquet",
        SORTED_NO_TIES + [(5, T0 + 3 * US)],
        pa.timestamp("us", tz="UTC"),
    )
    assert pit._repeated_times(duckdb.connect(), [clean]) is None
    assert not pit.has_key_time_ties([clean], ["user_id"])
    tied = write(
        tmp_path / "date=b" / "data.parquet",
        SORTED_TIE + [(4, T0 + 2 * US), (5, T0 + 2 * US)],
        pa.timestamp("us", tz="UTC"),
    )
    assert pit.has_key_time_ties([tied], ["user_id"])


def test_a_tie_far_apart_in_an_unsorted_file_is_found(tmp_path: Path) -> None:
    rows = [(1, T0), (2, T0 + 5 * US), (3, T0 + US), (1, T0)]  # the same row, not neighbours
    path = write(tmp_path / "date=a" / "data.parquet", rows, pa.timestamp("us", tz="UTC"))
    assert pit._repeated_times(duckdb.connect(), [path]) is None  # the scan decreases
    assert pit.has_key_time_ties([path], ["user_id"])
    unsorted_clean = [(1, T0), (2, T0 + 5 * US), (3, T0 + US), (2, T0)]
    path = write(tmp_path / "date=b" / "data.parquet", unsorted_clean, pa.timestamp("us", tz="UTC"))
    assert not pit.has_key_time_ties([path], ["user_id"])


def test_partitions_of_several_files_are_checked_across_them(tmp_path: Path) -> None:
    ts = pa.timestamp("us", tz="UTC")
    batch = write(tmp_path / "date=a" / "data.parquet", [(1, T0), (2, T0 + US)], ts)
    stream = write(tmp_path / "date=a" / "stream-1.parquet", [(1, T0 + US), (2, T0 + 2 * US)], ts)
    assert not pit.has_key_time_ties([batch, stream], ["user_id"])
    again = write(tmp_path / "date=a" / "stream-2.parquet", [(2, T0 + US)], ts)
    assert pit.has_key_time_ties([batch, stream, again], ["user_id"])


def test_null_keys_never_join_so_their_ties_do_not_count(tmp_path: Path) -> None:
    ts = pa.timestamp("us", tz="UTC")
    path = write(tmp_path / "date=a" / "data.parquet", [(None, T0), (None, T0), (1, T0)], ts)
    assert not pit.has_key_time_ties([path], ["user_id"])


def test_runs_in_the_given_connection_and_leaves_it_usable(tmp_path: Path) -> None:
    ts = pa.timestamp("us", tz="UTC")
    path = write(tmp_path / "date=a" / "data.parquet", SORTED_TIE, ts)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    assert pit.has_key_time_ties([path], ["user_id"], con)
    assert pit.has_key_time_ties([path], ["no_such_key"], con)  # the always-correct answer
    assert con.execute("SELECT 42").fetchall() == [(42,)]


def test_nanosecond_times_are_compared_whole(tmp_path: Path) -> None:
    """Repeated times are sent back as microseconds; rows must still be found at them."""
    base = int(T0.timestamp()) * 1_000_000_000
    ts = pa.timestamp("ns", tz="UTC")
    path = tmp_path / "date=a" / "data.parquet"
    path.parent.mkdir(parents=True)

    def table(users: list[int], nanos: list[int]) -> pa.Table:
        times = pa.array([base + n for n in nanos], ts)
        return pa.table({"user_id": users, "event_timestamp": times, "created_timestamp": times})

    pq.write_table(table([1, 1, 2], [300, 300, 400]), path)  # user 1 twice at .000000300
    assert pit.has_key_time_ties([path], ["user_id"])
    pq.write_table(table([1, 2, 1], [300, 300, 400]), path)  # the same microsecond, not a tie
    assert not pit.has_key_time_ties([path], ["user_id"])
