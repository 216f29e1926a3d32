"""What one batch run wrote, counted from the stores themselves, checked before it is recorded.

A runner's word is not enough: a runner may report no metrics, report them early, or finish
"DONE" having dropped outputs (Beam's DaskRunner did, silently). So after the job ends and
before the run is recorded or the watermark moves, ``verify_run`` reads:

* **offline**, per date partition of the interval: the rows inside [start, end) of the
  partition's batch file. For a view without aggregations each date must hold exactly the
  distinct (join keys, event time) rows the run staged for it (the staging files are the input
  of the per-date deduplication; a copy staged twice by a retried bundle counts once);
* **rejects**: the rows of the run's rejects file;
* **online**: for every entity, the newest event time of its rows in the interval (from the
  offline files just counted); unless expired by the view's ``ttl``, the online store must hold
  that event time or a newer one.

The runner's counters, when it reports them, must agree with these counts; when it reports none,
the counts are taken from the stores (``Verified.counts``). Any disagreement is a
``VerificationError``: nothing is recorded, the watermark stays, and re-running is safe.

    >>> verified = verify_run(run, store.online_store, counters)  # doctest: +SKIP
    >>> verified.counts(counters)  # doctest: +SKIP
    {'rows_read': 7717, 'rows_offline': 7717, 'rows_online': 472, 'rows_rejected': 0}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from featurestore.offline import layout, location
from featurestore.offline.location import OfflinePath
from registry.errors import FeatureStoreError

if TYPE_CHECKING:
    from featurestore.online.base import OnlineStore
    from featurestore.sources import Interval
    from materializers.schema import ViewSchema

__all__ = ["RunFiles", "VerificationError", "Verified", "verify_run"]

_LOG = logging.getLogger(__name__)
EVENT_TS = layout.EVENT_TS
#: Entities read from the online store per round trip.
READ_CHUNK = 5_000
#: An entity expiring within this margin is not checked online (Redis may drop it meanwhile).
TTL_MARGIN_US = 60_000_000
#: Examples named in an error message.
EXAMPLES = 3


class RunFiles(Protocol):
    """What verification needs of a run (``materializers.batch.ViewRun`` has it)."""

    @property
    def schema(self) -> ViewSchema: ...

    @property
    def interval(self) -> Interval: ...

    @property
    def project(self) -> str: ...

    @property
    def offline_path(self) -> OfflinePath: ...

    @property
    def staging_dir(self) -> OfflinePath: ...

    @property
    def rejects_target(self) -> OfflinePath: ...


class VerificationError(FeatureStoreError):
    """The stores do not hold what the run should have written; nothing was recorded."""


@dataclass(frozen=True)
class Verified:
    """One run's writes as the stores hold them."""

    #: ISO date -> rows inside the interval in that date's batch file.
    partitions: dict[str, int]
    rows_rejected: int
    #: Valid rows staged before deduplication (views without aggregations; else None).
    rows_staged: int | None
    #: Entities whose newest row in the interval is not expired, so must be online.
    online_expected: int
    #: Of those, the entities holding exactly that row's event time online.
    online_current: int

    @property
    def rows_offline(self) -> int:
        return sum(self.partitions.values())

    def counts(self, counters: dict[str, int] | None) -> dict[str, int]:
        """The counts to record: the stores' for what they can tell, the runner's for the rest
        (rows read; rows online, as the store keeps newer-only writes indistinguishable).

        Without the runner's counters, rows read is what was staged plus rejected (a view with
        aggregations stages nothing: 0, with a warning) and rows online the entities that hold
        this run's newest value.
        """
        counters = counters or {}
        read = counters.get("rows_read")
        if read is None:
            if self.rows_staged is None:
                _LOG.warning(
                    "the runner reported no metrics: rows read of a view with aggregations is "
                    "not known and is recorded as 0 (the written rows were verified)"
                )
                read = 0
            else:
                read = self.rows_staged + self.rows_rejected
        online = counters.get("rows_online")
        return {
            "rows_read": read,
            "rows_offline": self.rows_offline,
            "rows_online": self.online_current if online is None else online,
            "rows_rejected": self.rows_rejected,
        }


def verify_run(
    run: RunFiles, online_store: OnlineStore | None, counters: dict[str, int] | None
) -> Verified:
    """Count what ``run`` wrote and check it (module docstring); raise ``VerificationError``
    naming every disagreement. ``counters``: the runner's, None when it reports none."""
    problems: list[str] = []
    s = run.schema
    start, end = run.interval.start, run.interval.end
    files = _partition_files(run.offline_path, run.project, s.view, start, end)
    partitions: dict[str, int] = {}
    newest: _NewestPerEntity | None = _NewestPerEntity(s.key_names) if s.online else None
    for day, path in files:
        try:
            table = location.read_table(path, columns=[*s.key_names, EVENT_TS])
        except (OSError, pa.ArrowInvalid) as exc:
            problems.append(f"offline partition {path} cannot be read: {exc}")
            continue
        inside = table.filter(_inside(table, start, end))
        if inside.num_rows:
            partitions[day] = inside.num_rows
            if newest is not None:
                newest.add(inside)

    rows_staged = None
    if not s.aggregated:
        staged, rows_staged = _staged_distinct(
            run.staging_dir / "offline", [*s.key_names, EVENT_TS]
        )
        wrong = [
            f"date={d}: {partitions.get(d, 0):,} rows in the offline file, "
            f"{staged.get(d, 0):,} staged"
            for d in sorted(set(staged) | set(partitions))
            if partitions.get(d, 0) != staged.get(d, 0)
        ]
        if wrong:
            problems.append(
                f"{len(wrong)} offline partition(s) do not hold the rows the run staged: "
                + _some(wrong)
            )

    rows_rejected = _rows(run.rejects_target)
    staged_rejects = _ipc_rows(sorted((run.staging_dir / "rejects").glob("*.arrow")))
    if staged_rejects and not rows_rejected:
        problems.append(
            f"{staged_rejects:,} rejected rows were staged but the rejects file "
            f"{run.rejects_target} holds none"
        )

    if counters is not None:
        verified = {"rows_offline": sum(partitions.values()), "rows_rejected": rows_rejected}
        for name, value in verified.items():
            reported = counters.get(name)
            if reported is not None and reported != value:
                problems.append(
                    f"the runner counted {reported:,} {name}, the stores hold {value:,}"
                )
        read = counters.get("rows_read")
        if rows_staged is not None and read is not None and rows_staged + staged_rejects < read:
            problems.append(
                f"the runner validated {read:,} rows but only {rows_staged + staged_rejects:,} "
                "reached the staging files"
            )

    expected = current = 0
    if newest is not None and online_store is not None:
        expected, current, missing, examples = _check_online(s, newest, online_store)
        if missing:
            problems.append(
                f"{missing:,} of {expected:,} entities are missing online or older than the run's "
                f"newest row, e.g. {', '.join(examples)}"
            )

    if problems:
        raise VerificationError(
            f"feature view {s.view!r}: the stores do not hold what the run wrote "
            f"({run.interval.start:%Y-%m-%d %H:%M} .. {run.interval.end:%Y-%m-%d %H:%M}): "
            + "; ".join(problems),
            hint="nothing was recorded and the watermark did not move. Either the runner lost "
            "outputs (see docs/materialization.md, Runners) or another run of this view wrote "
            f"at the same time; the run's staging files are kept in {run.staging_dir}. "
            "Re-running rewrites the same partitions",
        )
    return Verified(partitions, rows_rejected, rows_staged, expected, current)


# -- offline ---------------------------------------------------------------------------------------


def _partition_files(
    offline_path: OfflinePath, project: str, view: str, start: datetime, end: datetime
) -> list[tuple[str, OfflinePath]]:
    """``(ISO date, batch file)`` of every existing partition the interval touches."""
    first = start.date()
    last = (end - timedelta(microseconds=1)).date()
    out = []
    for day in layout.existing_partitions(offline_path, project, view):
        if first <= day <= last:
            path = layout.partition_dir(offline_path, project, view, day) / layout.BATCH_FILE
            if path.exists():
                out.append((day.isoformat(), path))
    return out


def _inside(table: pa.Table, start: datetime, end: datetime) -> pa.ChunkedArray:
    ts = table.column(EVENT_TS)
    return pc.and_(
        pc.greater_equal(ts, pa.scalar(start, layout.TS_TYPE)),
        pc.less(ts, pa.scalar(end, layout.TS_TYPE)),
    )


def _staged_distinct(directory: OfflinePath, keys: list[str]) -> tuple[dict[str, int], int]:
    """Per staged date, the distinct (join keys, event time) rows; and all rows staged."""
    out: dict[str, int] = {}
    total = 0
    if isinstance(directory, Path) and not directory.is_dir():  # an object store lists nothing
        return out, total
    by_day: dict[str, list[OfflinePath]] = {}
    for path in sorted(directory.glob("date=*/*.arrow")):  # one listing on an object store
        by_day.setdefault(path.parent.name, []).append(path)
    for day_name, paths in sorted(by_day.items()):
        tables = [location.read_ipc(path).select(keys) for path in paths]
        table = pa.concat_tables(tables)
        total += table.num_rows
        distinct = table.group_by(keys).aggregate([]).num_rows
        if distinct:
            out[day_name.removeprefix("date=")] = distinct
    return out, total


def _ipc_rows(paths: Iterable[OfflinePath]) -> int:
    rows = 0
    for path in paths:
        if location.is_remote(path):
            rows += location.read_ipc(path).num_rows
            continue
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            rows += sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return rows


def _rows(path: OfflinePath) -> int:
    return location.parquet_rows(path)


# -- online ----------------------------------------------------------------------------------------


class _NewestPerEntity:
    """The newest event time per entity over tables added one partition at a time; memory
    follows the number of entities, not rows."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)
        self.parts: list[pa.Table] = []
        self.pending = 0
        self.size = 0

    def add(self, table: pa.Table) -> None:
        self.parts.append(self._reduce(table))
        self.pending += self.parts[-1].num_rows
        if self.pending > max(self.size, 1_000_000):
            self.parts = [self.table()]

    def _reduce(self, table: pa.Table) -> pa.Table:
        out = table.group_by(self.keys).aggregate([(EVENT_TS, "max")])
        return out.rename_columns(
            [EVENT_TS if c == f"{EVENT_TS}_max" else c for c in out.column_names]
        )

    def table(self) -> pa.Table:
        if not self.parts:
            return pa.table({})
        merged = (
            self._reduce(pa.concat_tables(self.parts)) if len(self.parts) > 1 else self.parts[0]
        )
        self.parts = [merged]
        self.pending = 0
        self.size = merged.num_rows
        return merged


def _check_online(
    s: ViewSchema, newest: _NewestPerEntity, store: OnlineStore
) -> tuple[int, int, int, list[str]]:
    """``(entities expected online, entities holding exactly the run's newest event time,
    entities missing or older, a few of those)``."""
    from featurestore.online.base import expiry_cutoff_us
    from featurestore.online.codec import encode_entity_keys

    table = newest.table()
    if not table.num_rows:
        return 0, 0, 0, []
    cutoff = expiry_cutoff_us(s.ttl_seconds)
    wanted = pc.cast(table.column(EVENT_TS), pa.int64())
    if cutoff is not None:
        keep = pc.greater(wanted, pa.scalar(cutoff + TTL_MARGIN_US, pa.int64()))
        table, wanted = table.filter(keep), wanted.filter(keep)
    keys = encode_entity_keys([d for _, d in s.join_keys], [table.column(n) for n in s.key_names])
    times = wanted.to_pylist()
    current = wrong = 0
    examples: list[str] = []
    for at in range(0, len(keys), READ_CHUNK):
        chunk = keys[at : at + READ_CHUNK]
        found = store.read_latest([(s.view, k) for k in chunk])
        for key, want, got in zip(chunk, times[at : at + READ_CHUNK], found):
            if got is not None and got[0] >= want:
                current += got[0] == want
                continue
            wrong += 1
            if len(examples) < EXAMPLES:
                held = "nothing" if got is None else _iso(got[0])
                examples.append(f"{key!r} holds {held}, newest row at {_iso(want)}")
    return len(keys), current, wrong, examples


def _iso(us: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(microseconds=us)).isoformat(timespec="seconds")


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f" (and {len(items) - EXAMPLES:,} more)" if len(items) > EXAMPLES else "")
