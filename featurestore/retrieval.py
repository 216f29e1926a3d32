"""Online retrieval: the latest feature values of many entities in one round trip.

The hot path per call is: encode entity keys, one ``read_latest`` on the online store, decode
payloads with the view's precompiled codec, check the ttl. Everything else (resolving feature
references, codecs, which tuple positions to pick) is compiled once per (registry version,
feature list) into a ``RetrievalPlan`` and cached; the definitions come from the process's
registry snapshot (``registry.watcher``), never from a query per request. The two common shapes
of a call have their own short paths, which give exactly what the row-by-row path gives
(tests/online/test_retrieval_fast_paths.py): one entity row (plain loops, no per-view lists), and
many rows of a view whose values are all fresh, of its own layout and without nulls (decoded at
once, ``ValueCodec.decode_columns``).

Statuses, per feature and entity row: ``present``; ``not_found`` (no value stored for the
entity); ``expired`` (the stored value's event time t is not within the view's ttl D of now:
t <= now - D, the same boundary as the point-in-time export); ``stale_layout`` (the stored value
was written under an earlier layout of the view that does not hold this feature as now declared:
it was added or retyped since; the view's next materialization rewrites it). The other features
of such a value are decoded with the layout it was written under (``featurestore.online.layouts``),
whose description is read from the registry once per view and registry version, and only when a
value of another layout is met.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from featurestore.inputs import bad_key_value
from featurestore.online.codec import INT_KEY_RANGES, ValueCodec, encode_entity_key, encode_int_keys
from featurestore.online.layouts import Layout, LayoutTranslator
from registry.definitions import Definitions
from registry.errors import DataError, InputError, UserError
from registry.evolution import feature_meaning

if TYPE_CHECKING:
    import pandas
    import pyarrow

    from featurestore.online.base import OnlineStore
    from registry.sql_registry import SqlRegistry
    from registry.watcher import RegistryWatcher

PRESENT, NOT_FOUND, EXPIRED, STALE_LAYOUT = "present", "not_found", "expired", "stale_layout"
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
#: From this many entity rows on, a view's values are decoded all at once when they can be
#: (``ValueCodec.decode_columns``); below it, decoding row by row is quicker.
_BATCH_ROWS = 8
#: Seconds before the layout history of a view is asked for again after the registry failed.
_HISTORY_RETRY_SECONDS = 5.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ViewPlan:
    view: str
    key_names: tuple[str, ...]
    key_dtypes: tuple[str, ...]
    codec: ValueCodec
    picks: tuple[int, ...]  # positions in the decoded tuple, one per requested feature
    columns: tuple[str, ...]  # output column names of those features
    ttl_us: int
    #: The requested features of a decoded row (or of the columns of many), in ``picks`` order:
    #: one itemgetter call instead of a loop over ``picks``.
    take: Callable[[Sequence[Any]], tuple[Any, ...]] = field(init=False, repr=False, compare=False)
    #: The join key values of an entity row, in ``key_names`` order (KeyError, TypeError as
    #: ``row[name]`` raises them).
    key_values: Callable[[Mapping[str, Any]], tuple[Any, ...]] = field(
        init=False, repr=False, compare=False
    )
    #: The join key when the view has a single integer one (its key is the value's decimal
    #: text, ``encode_entity_key``), and the bounds of its dtype.
    int_key: str | None = field(init=False, repr=False, compare=False)
    int_low: int = field(init=False, repr=False, compare=False)
    int_high: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = partial(object.__setattr__, self)
        set_("take", _getter(self.picks))
        set_("key_values", _getter(self.key_names))
        bounds = INT_KEY_RANGES.get(self.key_dtypes[0]) if len(self.key_names) == 1 else None
        set_("int_key", None if bounds is None else self.key_names[0])
        set_("int_low", bounds[0] if bounds else 0)
        set_("int_high", bounds[1] if bounds else 0)


def _getter(items: Sequence[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """``itemgetter(*items)`` that gives a tuple for one item too."""
    getter = itemgetter(*items)
    return getter if len(items) > 1 else lambda row: (getter(row),)


@dataclass(frozen=True)
class RetrievalPlan:
    views: tuple[_ViewPlan, ...]
    columns: tuple[str, ...]  # every output feature column, in request order
    join_keys: tuple[str, ...]
    #: Per view, the position in ``views`` of the first view with the same join keys: views of
    #: one entity share their encoded keys.
    key_sources: tuple[int, ...] = field(init=False, repr=False, compare=False)
    #: Whether the views' columns, view after view, are already in request order.
    grouped_in_order: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        first: dict[tuple[str, ...], int] = {}
        sources = tuple(first.setdefault(vp.key_names, i) for i, vp in enumerate(self.views))
        object.__setattr__(self, "key_sources", sources)
        grouped = tuple(c for vp in self.views for c in vp.columns) == self.columns
        object.__setattr__(self, "grouped_in_order", grouped)

    @classmethod
    def compile(
        cls,
        defs: Definitions,
        features: Sequence[str] | str,
        full_names: bool,
        history: Callable[[str], Sequence[Layout] | None] | None = None,
    ) -> "RetrievalPlan":
        """``history(view)``: the view's value layouts, newest first, to read values written
        under an earlier one (without it, their features are all ``stale_layout``)."""
        refs = defs.resolve_features(list(features) if not isinstance(features, str) else features)
        if not refs:
            raise UserError("no features requested", hint="pass feature references or a feature service")
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            by_view.setdefault(ref.view, []).append(ref.feature)
        names = [f"{r.view}__{r.feature}" if full_names else r.feature for r in refs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise UserError(
                f"feature name(s) {', '.join(dup)} come from more than one view",
                hint="pass full_names=True to get view__feature column names",
            )
        views, keys = [], []
        for view_name, wanted in by_view.items():
            spec = defs.feature_views[view_name]
            if not spec.online:
                raise UserError(
                    f"feature view {view_name!r} is not served online (online: false)",
                    hint="set `online: true` on the view, apply and materialize it",
                )
            declared = [f.name for f in spec.features]
            key_specs = [k for e in spec.entities for k in defs.entities[e].join_keys]
            codec = ValueCodec(
                [f.dtype for f in spec.features],
                declared,
                meanings=[feature_meaning(f) for f in spec.features],
            )
            if history is not None:
                codec.other_layouts = LayoutTranslator(codec, partial(history, view_name))
            views.append(
                _ViewPlan(
                    view=view_name,
                    key_names=tuple(k.name for k in key_specs),
                    key_dtypes=tuple(k.dtype for k in key_specs),
                    codec=codec,
                    picks=tuple(declared.index(w) for w in wanted),
                    columns=tuple(f"{view_name}__{w}" if full_names else w for w in wanted),
                    ttl_us=spec.ttl_seconds * 1_000_000,
                )
            )
            keys += [k.name for k in key_specs if k.name not in keys]
        return cls(tuple(views), tuple(names), tuple(keys))


class OnlineResponse:
    """Feature values for each requested entity row, column-wise, in request order."""

    def __init__(
        self,
        entity_rows: Sequence[Mapping[str, Any]],
        join_keys: tuple[str, ...],
        values: dict[str, list[Any]],
        statuses: dict[str, list[str]],
        event_timestamps: dict[str, list[int | None]] | None,
    ) -> None:
        self._rows = entity_rows
        self._join_keys = join_keys
        self.values = values
        self.statuses = statuses
        self.event_timestamps = event_timestamps

    def __len__(self) -> int:
        return len(self._rows)

    def to_dict(self, include_status: bool = False) -> dict[str, list[Any]]:
        """``{join key: [...], feature: [...]}``; with ``include_status``, ``feature__status`` too.

        >>> response.to_dict()  # doctest: +SKIP
        {'user_id': [1, 2], 'ratings_1d': [3, None]}
        """
        out: dict[str, list[Any]] = {k: [row.get(k) for row in self._rows] for k in self._join_keys}
        out.update(self.values)
        if include_status:
            out.update({f"{name}__status": s for name, s in self.statuses.items()})
        if self.event_timestamps is not None:
            out.update({f"{name}__event_timestamp": t for name, t in self.event_timestamps.items()})
        return out

    def to_arrow(self) -> "pyarrow.Table":
        import pyarrow as pa

        return pa.table(self.to_dict(include_status=True))

    def to_pandas(self) -> "pandas.DataFrame":
        return self.to_arrow().to_pandas()


class OnlineReader:
    """Serves ``get_online_features`` for one online store and registry watcher.

    ``registry`` is where the layout history of a view is read from when a value written under
    an earlier layout is met (default: the watcher's registry).
    """

    def __init__(
        self,
        store: "OnlineStore",
        watcher: "RegistryWatcher",
        max_plans: int = 256,
        registry: "SqlRegistry | None" = None,
    ) -> None:
        self.store = store
        self.watcher = watcher
        self.registry = registry if registry is not None else getattr(watcher, "_registry", None)
        self._plans: dict[tuple[Any, ...], RetrievalPlan] = {}
        self._max_plans = max_plans
        self._layouts: dict[tuple[str, int], list[Layout]] = {}
        self._history_retry_at = float("-inf")

    def plan(self, features: Sequence[str] | str, full_names: bool = False) -> RetrievalPlan:
        snapshot = self.watcher.snapshot
        key = (snapshot.version, features if isinstance(features, str) else tuple(features), full_names)
        plan = self._plans.get(key)
        if plan is None:
            plan = RetrievalPlan.compile(snapshot.definitions, features, full_names, self.layouts)
            if len(self._plans) >= self._max_plans:
                self._plans.clear()  # plans are cheap to rebuild; a stale version must not pile up
            self._plans[key] = plan
        return plan

    def layouts(self, view: str) -> list[Layout] | None:
        """The value layouts ``view`` has had, newest first; read from the registry once per view
        and registry version, and None (try later) while the registry cannot be read."""
        key = (view, self.watcher.version)
        found = self._layouts.get(key)
        if found is not None:
            return found
        if self.registry is None:
            return []
        if time.monotonic() < self._history_retry_at:
            return None
        from sqlalchemy.exc import SQLAlchemyError

        from registry.evolution import value_layouts, view_history

        try:
            found = list(value_layouts(view_history(self.registry.engine, self.registry.project, view)))
        except SQLAlchemyError as exc:
            self._history_retry_at = time.monotonic() + _HISTORY_RETRY_SECONDS
            logger.warning("layout history of view %r not read (registry: %s); its older values are stale", view, exc)
            return None
        if len(self._layouts) >= self._max_plans:
            self._layouts.clear()
        self._layouts[key] = found
        return found

    def get_online_features(
        self,
        features: Sequence[str] | str,
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        full_names: bool = False,
        with_timestamps: bool = False,
        now_us: int | None = None,
    ) -> OnlineResponse:
        plan, requests = self._requests(features, entity_rows, full_names)
        results = self.store.read_latest(requests) if requests else []
        return _assemble(plan, entity_rows, results, with_timestamps, now_us)

    async def get_online_features_async(
        self,
        features: Sequence[str] | str,
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        full_names: bool = False,
        with_timestamps: bool = False,
        now_us: int | None = None,
    ) -> OnlineResponse:
        """The same, awaiting the store's read so the event loop serves others meanwhile."""
        plan, requests = self._requests(features, entity_rows, full_names)
        results = await self.store.read_latest_async(requests) if requests else []
        return _assemble(plan, entity_rows, results, with_timestamps, now_us)

    def _requests(
        self, features: Sequence[str] | str, entity_rows: Sequence[Mapping[str, Any]], full_names: bool
    ) -> tuple[RetrievalPlan, list[tuple[str, bytes]]]:
        """The plan and the ``(view, key)`` reads of one call, view by view."""
        plan = self.plan(features, full_names)
        requests: list[tuple[str, bytes]] = []
        if len(entity_rows) == 1:  # one key per view: plain loops beat lists of one
            row = entity_rows[0]
            for vp, source in zip(plan.views, plan.key_sources):
                key = requests[source][1] if source < len(requests) else _key(vp, row, 0)
                requests.append((vp.view, key))
            return plan, requests
        # Views of the same entity share their keys: encode each key set once per call.
        encoded: list[list[bytes]] = []
        for vp, source in zip(plan.views, plan.key_sources):
            keys = encoded[source] if source < len(encoded) else _keys(vp, entity_rows)
            encoded.append(keys)
            requests += zip(repeat(vp.view), keys)
        return plan, requests

    def freshness(self, views: Iterable[str] | None = None, now_us: int | None = None) -> dict[str, float | None]:
        """Seconds since the newest materialized event of each view (None: nothing written)."""
        defs = self.watcher.snapshot.definitions
        names = list(views) if views is not None else [v for v, s in defs.feature_views.items() if s.online]
        newest = self.store.newest_event_ts(names)
        now = time.time_ns() // 1000 if now_us is None else now_us
        # An aggregate's newest row is stamped with its window's end, which may lie ahead of now.
        return {v: None if newest.get(v) is None else max(0.0, (now - newest[v]) / 1e6) for v in names}  # type: ignore[operator]


def _assemble(
    plan: RetrievalPlan,
    entity_rows: Sequence[Mapping[str, Any]],
    results: Sequence[tuple[int, bytes] | None],
    with_timestamps: bool,
    now_us: int | None,
) -> OnlineResponse:
    """Decode the store's replies into columns, enforcing each view's ttl against ``now``."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    n = len(entity_rows)
    values: dict[str, list[Any]] = {}
    statuses: dict[str, list[str]] = {}
    stamps: dict[str, list[int | None]] | None = {} if with_timestamps else None
    if n == 1:  # one entity, a typical serving call: one reply per view
        _one_entity(plan, results, now, values, statuses, stamps)
    else:
        offset = 0
        for vp in plan.views:
            chunk = results[offset : offset + n]
            offset += n
            times = _view_columns(vp, chunk, now, values, statuses, stamps is not None)
            if stamps is not None:
                stamps.update(dict.fromkeys(vp.columns, times))
    ordered = values if plan.grouped_in_order else {c: values[c] for c in plan.columns}
    return OnlineResponse(entity_rows, plan.join_keys, ordered, statuses, stamps)


def _one_entity(
    plan: RetrievalPlan,
    results: Sequence[tuple[int, bytes] | None],
    now: int,
    values: dict[str, list[Any]],
    statuses: dict[str, list[str]],
    stamps: dict[str, list[int | None]] | None,
) -> None:
    """What ``_view_columns`` gives, view by view, for a single entity row: plain loops, which
    beat its lists and C calls on one row, in one frame for every view."""
    for vp, hit in zip(plan.views, results):
        old = None
        if hit is None:
            row, status, event_ts = None, [NOT_FOUND], None
        else:
            event_ts = hit[0]
            if vp.ttl_us and event_ts <= now - vp.ttl_us:
                row, status = None, [EXPIRED]
            else:
                row, old = vp.codec.decode_status(hit[1])
                status = [PRESENT]
        columns = vp.columns
        if row is None:
            for column in columns:
                values[column] = [None]
                statuses[column] = status  # shared by the view's columns, as for many rows
        else:
            for column, value in zip(columns, vp.take(row)):
                values[column] = [value]
                statuses[column] = status
            if old:  # written under an earlier layout (rare)
                for pick, column in zip(vp.picks, columns):
                    if pick in old:
                        statuses[column] = [STALE_LAYOUT]
        if stamps is not None:
            times = [event_ts]  # shared by the view's columns, as for many rows
            stamps.update(dict.fromkeys(columns, times))


def _view_columns(
    vp: _ViewPlan,
    chunk: Sequence[tuple[int, bytes] | None],
    now: int,
    values: dict[str, list[Any]],
    statuses: dict[str, list[str]],
    with_times: bool = True,
) -> list[int | None] | None:
    """Put the values and statuses of one view's replies (one per entity row) into ``values``
    and ``statuses``; return their event times (perhaps None without ``with_times``)."""
    columns, ttl = vp.columns, vp.ttl_us
    n = len(chunk)
    if n >= _BATCH_ROWS and None not in chunk:
        # Many entities, each with a value: if every one is within the ttl and of the view's
        # layout without nulls, the codec decodes them all at once.
        if not ttl or min(map(_FIRST, chunk)) > now - ttl:  # type: ignore[type-var,operator]
            found = vp.codec.decode_columns(list(map(_SECOND, chunk)))
            if found is not None:
                values.update(zip(columns, vp.take(found)))
                statuses.update(dict.fromkeys(columns, [PRESENT] * n))
                return list(map(_FIRST, chunk)) if with_times else None
    decoded: list[Any] = []
    status: list[str] = []
    times: list[int | None] = []
    stale: dict[int, frozenset[int]] = {}  # row -> features of an earlier layout
    decode = vp.codec.decode_status
    for hit in chunk:
        if hit is None:
            decoded.append(None)
            status.append(NOT_FOUND)
            times.append(None)
            continue
        event_ts, payload = hit
        times.append(event_ts)
        if ttl and event_ts <= now - ttl:
            decoded.append(None)
            status.append(EXPIRED)
        else:
            row, old = decode(payload)
            if old:
                stale[len(decoded)] = old
            decoded.append(row)
            status.append(PRESENT)
    if not decoded or None in decoded:  # an entity without a value: None in its place
        for pick, column in zip(vp.picks, columns):
            values[column] = [None if d is None else d[pick] for d in decoded]
    else:  # every entity has a row: one transpose in C instead of a loop per column
        values.update(zip(columns, map(list, vp.take(list(zip(*decoded))))))
    statuses.update(dict.fromkeys(columns, status))  # shared until a stale row splits it
    for r, old in stale.items():  # rows written under an earlier layout (rare)
        for pick, column in zip(vp.picks, columns):
            if pick in old:
                if statuses[column] is status:
                    statuses[column] = list(status)
                statuses[column][r] = STALE_LAYOUT
    return times


def _keys(vp: _ViewPlan, rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The store keys of ``rows`` for one view. A single integer key, the common case, takes the
    codec's vectorised path; anything else, or a bad value, goes row by row (naming the row)."""
    if len(vp.key_names) == 1:
        try:
            fast = encode_int_keys(vp.key_dtypes[0], list(map(itemgetter(vp.key_names[0]), rows)))
        except (KeyError, TypeError):
            fast = None  # the slow path names the bad row
        if fast is not None:
            return fast[0]
    return [_key(vp, row, i) for i, row in enumerate(rows)]


def _key(vp: _ViewPlan, row: Mapping[str, Any], index: int) -> bytes:
    try:
        if vp.int_key is not None:  # one integer join key: its text if it is an int in range
            value = row[vp.int_key]
            if type(value) is int and vp.int_low <= value <= vp.int_high:
                return b"%d" % value
        values = vp.key_values(row)
    except KeyError as exc:
        raise InputError(
            f"entity_rows.{index}", f"has no join key {exc.args[0]!r} needed by view {vp.view!r}",
            hint=f"give every entity row the keys {', '.join(vp.key_names)}",
        ) from None
    except TypeError:
        raise InputError(
            f"entity_rows.{index}", "is not a mapping of join keys to values"
        ) from None
    try:
        return encode_entity_key(vp.key_dtypes, values)
    except DataError:
        raise bad_key_value(f"entity_rows.{index}", vp.key_names, vp.key_dtypes, row) from None
