"""An in-process cache of decoded item feature vectors, in front of the online store.

Velox's point: f(item) changes slowly (it is materialized), so a server can keep it decoded in
memory and a prediction then costs one product ``X @ w``, not a store read per item. Here:

* one bounded cache per feature view (CLOCK eviction, an approximation of LRU that costs
  nothing per hit), keyed by entity key, holding each item's numeric features as a float64 row
  (NaN where a value is null) and its event time in preallocated numpy arrays, so the rows of a
  request are found with one C-level pass over its keys and gathered with one fancy index;
* the misses of a request, over every view, are fetched in **one** ``read_latest`` round trip and
  decoded together (one ``np.frombuffer`` for the values of a view's own layout when its
  features are all fixed-width);
* a value written under an earlier layout of the view (docs/online-store.md, "Values of an
  earlier layout") keeps the features that are still the same, read with the layout it was
  written under from the view's history in the registry; a feature added or retyped since is
  NaN, as a null is, so its item is not scored until the backfill rewrites it.

Entries are dropped when they may be stale (docs/serving.md, "The item feature cache"):

* a view's entries when its **version** in the online store moves, whoever wrote (a
  materialization, the stream job, a push, any ``write_latest``): ``poll`` reads
  ``OnlineStore.view_versions`` of the cacheable online views (one MGET on Redis, one pipeline
  on Redis Cluster) on the registry watcher's thread, every ``interval`` seconds (1 on a
  server), never on a request. The version is the view's newest event time with a count of
  winning writes, so it moves for every row written, also one older than the view's newest
  (a late or corrected row, or any row after a future-dated one pinned the newest time);
* a view's entries when a newer materialization run of it appears in the registry snapshot;
* everything when the registry version changes;
* one entry when it is older than ``max_age_seconds`` (30 s): a backstop (a poll that keeps
  failing, a store that lost its data and repeats an old version).

Views the version cannot follow are never cached: an aggregated view with a stream source
is rewritten on every micro-batch with the same event time (the next slide boundary), and
its rows change through the stream job's pane state as well as through writes. Not-found keys are never cached, so a newly
written item shows up at once. TTLs are checked by the caller on every read against the cached
event time, so a cached value expires on time.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

from featurestore.online.codec import ValueCodec
from featurestore.online.layouts import Layout, LayoutTranslator
from featurestore.retrieval import OnlineReader
from registry.errors import NotFoundError
from registry.evolution import feature_meaning
from registry.types import NUMERIC_DTYPES, parse_dtype

if TYPE_CHECKING:
    from featurestore.online.base import OnlineStore, ViewVersion
    from registry.spec import FeatureViewSpec
    from registry.watcher import RegistrySnapshot, RegistryWatcher

logger = logging.getLogger(__name__)
_NP_ELEMENT = {
    "bool": "?", "int32": "<i4", "int64": "<i8", "float32": "<f4", "float64": "<f8", "timestamp": "<i8",
}
_FIRST_CAPACITY = 1024
_UNSEEN = object()  # a view the poll has not read yet


@dataclass(frozen=True)
class ViewRows:
    """The rows of one view for the keys of a lookup, in key order."""

    values: np.ndarray  # (n, width) float64, NaN where null or not found
    event_ts: np.ndarray  # (n,) int64 microseconds, 0 where not found
    found: np.ndarray  # (n,) bool


class ViewDecoder:
    """Decodes many online payloads of one view into float64 rows of its numeric features.

    ``columns[feature]`` is the slice of a row holding that feature (vectors take several
    columns); strings, bytes, timestamps and variable-length vectors are left out.

    Payloads of the view's own layout (format 2 and its layout id, ``codec.prefix``) in a view
    whose features are all fixed-width decode together: one ``np.frombuffer`` over a structured
    dtype that mirrors the value layout of docs/online-store.md, the prefix compared for every
    row at once, the null bitmap read after it. Every other payload of the batch (format 1, an
    earlier layout of the view, a view with strings) goes through the codec row by row; with
    ``history`` (the view's value layouts, newest first, as ``OnlineReader.layouts`` gives them)
    a value of an earlier layout keeps the features that are still the same (name and dtype) and
    the others are NaN, as a null is (``featurestore.online.layouts``).

    >>> from featurestore.online.codec import ValueCodec
    >>> codec = ValueCodec(["float32[2]", "int64"], ["vec", "n"])
    >>> ViewDecoder(codec.dtypes, codec.names).decode([codec.encode_row([[1.0, 2.0], 3])]).tolist()
    [[1.0, 2.0, 3.0]]
    """

    def __init__(
        self,
        dtypes: Sequence[str],
        names: Sequence[str],
        history: Callable[[], Sequence[Layout] | None] | None = None,
        meanings: Sequence[str | None] | None = None,
    ) -> None:
        # The writer stamps aggregated views' layout ids with the features' meanings
        # (registry.evolution.feature_meaning): the reader must build the same id.
        self.codec = ValueCodec(dtypes, names, meanings=meanings)
        # How often the history could not be read. The translator asks again at the next value,
        # so a batch during which this moved may hold rows decoded without it: those are not
        # kept (a failure in another thread's batch only makes this one more careful).
        self._history_failures = 0
        if history is not None:
            self.codec.other_layouts = LayoutTranslator(self.codec, partial(self._history, history))
        self.columns: dict[str, slice] = {}
        self._numeric: list[tuple[int, slice]] = []
        self._sizes: list[tuple[int, int | None]] = []  # (feature, vector length or None)
        self._prefix = self.codec.prefix
        fields: list[tuple] = [("header", "u1", (self.codec.header_size,))]
        fixed = True
        width = 0
        for i, (name, dtype) in enumerate(zip(names, dtypes)):
            parsed = parse_dtype(dtype)
            variable = parsed.element in ("string", "bytes") or parsed.length == 0
            fixed &= not variable
            if variable:
                fields.append((f"f{i}", "<u4"))
                continue
            fields.append((f"f{i}", _NP_ELEMENT[parsed.element], (parsed.length,) if parsed.length else ()))
            if parsed.element in NUMERIC_DTYPES or parsed.element == "bool":
                n = parsed.length or 1
                self.columns[name] = slice(width, width + n)
                self._numeric.append((i, slice(width, width + n)))
                self._sizes.append((i, parsed.length))
                width += n
        self.width = width
        # The feature each column of a row comes from: a row's null bits spread over its columns.
        self._feature_of_column = np.array(
            [i for i, cols in self._numeric for _ in range(cols.start, cols.stop)], np.intp
        )
        self._np_dtype = np.dtype(fields) if fixed else None
        if self._np_dtype is not None and self._np_dtype.itemsize != self.codec.fixed_size:
            self._np_dtype = None  # never expected; the row-by-row path stays correct

    def decode(self, payloads: Sequence[bytes]) -> np.ndarray:
        """``(len(payloads), width)`` float64 rows, NaN where a feature is null or stale."""
        return self.decode_keep(payloads)[0]

    def decode_keep(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray | None]:
        """``decode``, and which rows may be cached: None for all of them, else a mask that is
        False for a value of another layout decoded while the view's history could not be read
        (all stale, or read by position alone; the next read may do better)."""
        n = len(payloads)
        dt = self._np_dtype
        failures = self._history_failures
        if dt is None or not n:
            return self._decode_rows(payloads), self._kept(payloads, failures)
        lengths = np.fromiter(map(len, payloads), np.intp, n)
        sized = lengths == dt.itemsize
        fast_at: np.ndarray | None = None  # the rows the vectorised path takes (None: all)
        if sized.all():
            blob = b"".join(payloads)
        else:
            fast_at = np.flatnonzero(sized)
            blob = b"".join([payloads[i] for i in fast_at.tolist()])
        arr = np.frombuffer(blob, dtype=dt)
        header = arr["header"]
        # Format byte and layout id (``codec.prefix``): a value of any other layout is left to the
        # codec. Byte by byte, as one (n, 5) comparison and ``all(axis=1)`` take 6 times longer.
        ours = header[:, 0] == self._prefix[0]
        for j in range(1, len(self._prefix)):
            ours &= header[:, j] == self._prefix[j]
        if not ours.all():
            arr = arr[ours]
            fast_at = np.flatnonzero(ours) if fast_at is None else fast_at[ours]
        out = np.empty((n, self.width))
        if fast_at is None:  # the common case: every value is of this layout
            self._fill(arr, out)
            return out, None
        fast = np.empty((len(fast_at), self.width))
        self._fill(arr, fast)
        out[fast_at] = fast
        rest = np.ones(n, dtype=bool)
        rest[fast_at] = False
        slow_at = np.flatnonzero(rest)
        slow = [payloads[i] for i in slow_at.tolist()]
        out[slow_at] = self._decode_rows(slow)
        keep = self._kept(slow, failures)
        if keep is None:
            return out, None
        kept = np.ones(n, dtype=bool)
        kept[slow_at] = keep
        return out, kept

    def _fill(self, arr: np.ndarray, out: np.ndarray) -> None:
        """The numeric columns of records of this layout into ``out``, NaN where null."""
        n = len(arr)
        for i, cols in self._numeric:
            out[:, cols] = arr[f"f{i}"].reshape(n, cols.stop - cols.start)
        bitmap = arr["header"][:, len(self._prefix) :]
        if bitmap.any():
            nulls = np.unpackbits(bitmap, axis=1, bitorder="little").view(bool)
            np.putmask(out, nulls[:, self._feature_of_column], np.nan)

    def _decode_rows(self, payloads: Sequence[bytes]) -> np.ndarray:
        """Row by row through the codec (another layout, format 1, variable-width features).
        Raises DataError on a damaged payload."""
        decode = self.codec.decode
        flat: list[float | None] = []
        gaps = {length: [None] * length for _, length in self._sizes if length}
        for payload in payloads:
            values = decode(payload)
            for i, length in self._sizes:
                value = values[i]
                if length is None:
                    flat.append(value)  # None becomes NaN in np.array
                else:
                    flat.extend(gaps[length] if value is None else value)
        return np.array(flat, dtype=np.float64).reshape(len(payloads), self.width)

    def _kept(self, payloads: Sequence[bytes], failures: int) -> np.ndarray | None:
        """After ``_decode_rows``: which rows may be cached (see ``decode_keep``), given the
        number of failed history reads before it."""
        if self._history_failures == failures:
            return None
        prefix = self._prefix
        return np.fromiter((p.startswith(prefix) for p in payloads), bool, len(payloads))

    def _history(self, read: Callable[[], Sequence[Layout] | None]) -> Sequence[Layout] | None:
        found = read()
        if found is None:
            self._history_failures += 1
        return found


class _Slab:
    """One view's cache: rows of preallocated arrays, a dict key -> row, and CLOCK eviction.

    CLOCK (second chance) approximates LRU without per-hit bookkeeping: a hit only sets the
    row's reference bit, in one vectorised assignment for the whole request; to evict, the hand
    sweeps the rows, clearing set bits, and takes the first row whose bit is clear (a row not
    used since the hand last passed it).
    """

    __slots__ = ("event_ts", "free", "generation", "hand", "index", "keys", "loaded", "referenced", "values")

    def __init__(self, width: int, capacity: int, generation: int) -> None:
        self.values = np.empty((capacity, width))
        self.event_ts = np.zeros(capacity, dtype=np.int64)
        self.loaded = np.zeros(capacity)  # time.monotonic() of the read that filled the row
        self.referenced = np.zeros(capacity, dtype=bool)
        self.keys: list[bytes | None] = [None] * capacity
        self.index: dict[bytes, int] = {}
        self.free = list(range(capacity - 1, -1, -1))
        self.hand = 0
        # Unique over every slab of the cache, so a read that started before a clear (or before
        # the slab was replaced) can tell that its values must not be kept.
        self.generation = generation

    def clear(self, generation: int) -> None:
        self.free = list(range(len(self.values) - 1, -1, -1))
        self.index.clear()
        self.keys = [None] * len(self.values)
        self.referenced[:] = False
        self.generation = generation

    def grow(self, capacity: int) -> None:
        old = len(self.values)
        values = np.empty((capacity, self.values.shape[1]))
        values[:old] = self.values
        event_ts = np.zeros(capacity, dtype=np.int64)
        event_ts[:old] = self.event_ts
        loaded = np.zeros(capacity)
        loaded[:old] = self.loaded
        referenced = np.zeros(capacity, dtype=bool)
        referenced[:old] = self.referenced
        self.values, self.event_ts, self.loaded, self.referenced = values, event_ts, loaded, referenced
        self.keys += [None] * (capacity - old)
        self.free = list(range(capacity - 1, old - 1, -1)) + self.free

    def evict(self) -> int:
        """Free one row by the CLOCK rule and return it."""
        referenced, n = self.referenced, len(self.values)
        while referenced[self.hand]:
            referenced[self.hand] = False
            self.hand = (self.hand + 1) % n
        row = self.hand
        self.hand = (self.hand + 1) % n
        key = self.keys[row]
        if key is not None:
            del self.index[key]
            self.keys[row] = None
        return row


class FeatureCache:
    """Decoded feature rows per (view, entity key), bounded, dropped when they may be stale.

    >>> cache = FeatureCache(store.online_store, store.context.watcher)  # doctest: +SKIP
    >>> rows = cache.lookup({"item_embedding": [b"1", b"2"]})["item_embedding"]  # doctest: +SKIP
    >>> rows.values.shape, cache.hits, cache.misses  # doctest: +SKIP
    ((2, 8), 0, 2)
    """

    def __init__(
        self,
        online_store: OnlineStore,
        watcher: RegistryWatcher,
        *,
        max_entries: int = 100_000,
        max_age_seconds: float | None = 30.0,
        layouts: Callable[[str], Sequence[Layout] | None] | None = None,
    ) -> None:
        """``max_age_seconds``: an entry read longer ago is read again (None: no bound); a
        backstop for a change the version poll cannot see (a store that lost its data).

        ``layouts(view)``: the value layouts the view has had, newest first, None while they
        cannot be read (``OnlineReader.layouts``; by default one of the cache's own over the
        watcher's registry). Asked only when a value of another layout is met, so that its
        features that are still the same are served until the backfill rewrites it."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_age_seconds is not None and max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive (or None for no bound)")
        self.online_store = online_store
        self.watcher = watcher
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        if layouts is None:
            layouts = OnlineReader(online_store, watcher).layouts
        self.layouts = layouts
        self._lock = threading.Lock()
        self._slabs: dict[str, _Slab] = {}
        self._decoders: dict[str, ViewDecoder] = {}
        self._uncacheable: set[str] = set()
        self._seen: RegistrySnapshot | None = None
        self._generations = itertools.count()
        # The version of each view at the last poll: the baseline a move is seen against.
        self._versions: dict[str, ViewVersion] = {}
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.polls = 0
        self.poll_failures = 0
        self.poll_seconds = 0.0  # the time of the last poll
        # The baseline before any row is cached, so a write between a row's read and the first
        # tick is seen; if the store is down now, the first good poll drops what was cached.
        try:
            self.poll()
        except Exception as exc:  # noqa: BLE001 - the store may be down now: the watcher's poll retries
            logger.warning("feature cache: the first poll of the online store failed (retried): %s", exc)
        watcher.add_poller(self.poll)

    # -- public -------------------------------------------------------------------------------
    def decoder(self, view: str) -> ViewDecoder:
        """The decoder of ``view`` at the current registry version (columns per feature)."""
        self._check()
        with self._lock:
            return self._decoder(view)

    def lookup(
        self, requests: Mapping[str, Sequence[bytes]], *, uncached: Collection[str] = ()
    ) -> dict[str, ViewRows]:
        """Rows of each view for its keys. Views in ``uncached`` (e.g. fast-changing user
        features) are read in the same round trip but neither served from nor kept in the cache.
        """
        pending = self.start(requests, uncached=uncached)
        return pending.finish(self.online_store.read_latest(pending.fetch) if pending.fetch else [])

    def start(self, requests: Mapping[str, Sequence[bytes]], *, uncached: Collection[str] = ()) -> PendingLookup:
        """The first half of ``lookup``: the cached rows, and the ``(view, key)`` reads still to
        do (``PendingLookup.fetch``). An asyncio caller awaits those reads together with its
        other reads, then calls ``finish`` with the replies."""
        snapshot = self._check()
        if self.watcher.interval <= 0:
            self._poll(snapshot)  # "always fresh": no thread polls, the caller does
        now = time.monotonic()
        oldest = None if self.max_age_seconds is None else now - self.max_age_seconds
        out: dict[str, ViewRows] = {}
        waiting: list[tuple[str, ViewDecoder, ViewRows, np.ndarray, int]] = []
        fetch: list[tuple[str, bytes]] = []
        with self._lock:
            for view, keys in requests.items():
                decoder = self._decoder(view)
                n = len(keys)
                if view in uncached or view in self._uncacheable:
                    rows = ViewRows(np.full((n, decoder.width), np.nan), np.zeros(n, np.int64), np.zeros(n, bool))
                    missing = np.arange(n)
                    generation = -1
                else:
                    slab = self._slab(view, decoder.width)
                    # One C-level pass over the keys (map over dict.get), then numpy.
                    positions = np.fromiter(map(slab.index.get, keys, repeat(-1, n)), np.intp, n)
                    found = positions >= 0
                    if oldest is not None:  # too old counts as a miss: read again, rewritten in place
                        found &= slab.loaded[positions] >= oldest
                    slab.referenced[positions[found]] = True
                    values = slab.values[positions]
                    event_ts = slab.event_ts[positions]
                    missing = np.flatnonzero(~found)
                    values[missing] = np.nan
                    event_ts[missing] = 0
                    rows = ViewRows(values, event_ts, found)
                    self.hits += n - len(missing)
                    self.misses += len(missing)
                    generation = slab.generation
                out[view] = rows
                if len(missing):
                    waiting.append((view, decoder, rows, missing, generation))
                    fetch += [(view, keys[i]) for i in missing.tolist()]
        return PendingLookup(self, requests, out, waiting, fetch, now)

    def poll(self) -> None:
        """Drop the cached rows of every view whose version in the online store moved since
        the last poll: one ``view_versions`` read of the cacheable online views. The
        registry watcher calls it on its thread every ``interval`` seconds; with
        ``interval <= 0`` each lookup does. Raises what the store raises (the watcher logs it
        and polls again at the next tick; the rows stay until then)."""
        self._poll(self.watcher.snapshot)

    def invalidate(self, view: str | None = None) -> None:
        """Drop the cached rows of ``view`` (or of every view)."""
        with self._lock:
            for name, slab in self._slabs.items():
                if view is None or name == view:
                    slab.clear(next(self._generations))
            self.invalidations += 1

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {
            "hits": float(self.hits),
            "misses": float(self.misses),
            "hit_rate": self.hits / total if total else 0.0,
            "entries": float(sum(len(s.index) for s in self._slabs.values())),
            "invalidations": float(self.invalidations),
            "polls": float(self.polls),
            "poll_failures": float(self.poll_failures),
            "poll_seconds": self.poll_seconds,
        }

    # -- internals ----------------------------------------------------------------------------
    def _check(self) -> RegistrySnapshot:
        """Follow the watcher's snapshot: a new registry version drops everything, a newer
        materialization run of a view drops that view. An attribute read when nothing moved."""
        snapshot = self.watcher.snapshot
        seen = self._seen
        if snapshot is seen:
            return snapshot
        with self._lock:
            if seen is None or snapshot.version != seen.version:
                self._decoders.clear()
                self._uncacheable.clear()
                for slab in self._slabs.values():
                    slab.clear(next(self._generations))
                self._slabs.clear()
                self.invalidations += 1
            elif snapshot.run_ids != seen.run_ids:
                for view, run_id in snapshot.run_ids.items():
                    if seen.run_ids.get(view) != run_id and view in self._slabs:
                        self._slabs[view].clear(next(self._generations))
                        self.invalidations += 1
            self._seen = snapshot
        return snapshot

    def _poll(self, snapshot: RegistrySnapshot) -> None:
        views = [name for name, spec in snapshot.definitions.feature_views.items() if spec.online and not _live(spec)]
        if not views:
            return
        started = time.perf_counter()
        try:
            versions = self.online_store.view_versions(views)
        except Exception:
            self.poll_failures += 1
            raise
        with self._lock:
            baseline = self._versions
            for view in views:
                version = versions.get(view)
                # A view read for the first time (a new view, or the first poll failed) has no
                # baseline: a write may have come between a row's read and now, so drop it too.
                if version is None or baseline.get(view, _UNSEEN) != version:
                    if version is not None:
                        baseline[view] = version
                    slab = self._slabs.get(view)
                    if slab is not None:
                        slab.clear(next(self._generations))
                        self.invalidations += 1
        self.polls += 1
        self.poll_seconds = time.perf_counter() - started

    def _finish(self, pending: PendingLookup, results: Sequence[tuple[int, bytes] | None]) -> dict[str, ViewRows]:
        offset = 0
        for view, decoder, rows, missing, generation in pending.waiting:
            chunk = results[offset : offset + len(missing)]
            offset += len(missing)
            present = [j for j, hit in enumerate(chunk) if hit is not None]
            if not present:
                continue
            where = missing[present]
            decoded, keep = decoder.decode_keep([chunk[j][1] for j in present])  # type: ignore[index]
            stamps = np.fromiter((chunk[j][0] for j in present), np.int64, len(present))  # type: ignore[index]
            rows.values[where] = decoded
            rows.event_ts[where] = stamps
            rows.found[where] = True
            if generation >= 0:
                if keep is not None:
                    where, decoded, stamps = where[keep], decoded[keep], stamps[keep]
                keys = pending.requests[view]
                self._insert(view, generation, [keys[i] for i in where.tolist()], decoded, stamps, pending.started)
        return pending.rows

    def _decoder(self, view: str) -> ViewDecoder:
        decoder = self._decoders.get(view)
        if decoder is None:
            spec: FeatureViewSpec | None = self.watcher.snapshot.definitions.feature_views.get(view)
            if spec is None:
                raise NotFoundError(
                    f"unknown feature view {view!r}", hint="run `featurestore registry show feature_view`"
                )
            features = spec.features
            decoder = ViewDecoder(
                [f.dtype for f in features],
                [f.name for f in features],
                partial(self.layouts, view),
                meanings=[feature_meaning(f) for f in features],
            )
            self._decoders[view] = decoder
            if _live(spec):
                self._uncacheable.add(view)
        return decoder

    def _slab(self, view: str, width: int) -> _Slab:
        slab = self._slabs.get(view)
        if slab is None:
            slab = _Slab(width, min(self.max_entries, _FIRST_CAPACITY), next(self._generations))
            self._slabs[view] = slab
        return slab

    def _insert(
        self, view: str, generation: int, keys: list[bytes], values: np.ndarray, event_ts: np.ndarray, loaded: float
    ) -> None:
        if len(keys) > self.max_entries:  # keep the last ones, as an LRU would
            keys, values, event_ts = keys[-self.max_entries :], values[-self.max_entries :], event_ts[-self.max_entries :]
        with self._lock:
            slab = self._slabs.get(view)
            # A newer materialization or registry version arrived while we read: do not keep
            # values that may predate it.
            if slab is None or slab.generation != generation:
                return
            rows = np.empty(len(keys), dtype=np.intp)
            index = slab.index
            for i, key in enumerate(keys):
                row = index.get(key)
                if row is None:
                    if not slab.free and len(slab.values) < self.max_entries:
                        slab.grow(min(self.max_entries, 2 * len(slab.values)))
                    row = slab.free.pop() if slab.free else slab.evict()
                    index[key] = row
                    slab.keys[row] = key
                rows[i] = row
            slab.values[rows] = values
            slab.event_ts[rows] = event_ts
            slab.loaded[rows] = loaded
            # Left unreferenced: a row read once is the first to go, one read again survives.


@dataclass(eq=False)
class PendingLookup:
    """A lookup between ``FeatureCache.start`` and ``finish``: ``fetch`` are the reads to do."""

    cache: FeatureCache
    requests: Mapping[str, Sequence[bytes]]
    rows: dict[str, ViewRows]
    waiting: list[tuple[str, ViewDecoder, ViewRows, np.ndarray, int]]
    fetch: list[tuple[str, bytes]]
    started: float = 0.0  # time.monotonic() before the reads: the age of what they bring

    def finish(self, results: Sequence[tuple[int, bytes] | None]) -> dict[str, ViewRows]:
        """The rows of every view, given the replies to ``fetch`` (in its order)."""
        return self.cache._finish(self, results)


def _live(spec: FeatureViewSpec) -> bool:
    """An aggregated view with a stream source: the stream job rewrites its rows with the same
    event time (the next slide boundary) all through a slide, so its newest time cannot tell a
    cache that they changed; it is read on every request instead."""
    return spec.stream_source is not None and any(f.aggregation is not None for f in spec.features)
