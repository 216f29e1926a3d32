"""The model request plan: one per (model, version, registry version), shared by ``/predict``
and ``/feedback`` (and their SDK twins), so both resolve versions, encode keys, check request
features and assemble x the same way.

A plan holds everything about a model version that does not depend on a request: the layout of
x (``state_store.ModelLayout``), the entities' join keys, which view columns land in which
coordinates of x, the ttls, and the version's ``ModelStateStore``. ``Planner.plan`` resolves the
active version from the registry snapshot (an attribute read, no SQL) and compiles a plan the
first time it is asked for one.

Per request, a plan:

* encodes the user and the items (``featurestore.inputs``: one rule set, errors name the field);
* says which (view, keys) to read (``reads``) and assembles x from the rows read (``assemble``):
  x = [item features, user features, request features, 1.0];
* reports for each view which rows were not found or expired (``missing``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.inputs import LabelBounds, entity_key, entity_keys, label_value, request_vector
from featurestore.models.state_store import ModelLayout, ModelStateStore
from registry.errors import NotFoundError

if TYPE_CHECKING:
    from featurestore.context import ServiceContext
    from featurestore.feature_cache import FeatureCache, ViewRows
    from registry.definitions import Definitions
    from registry.spec import ModelSpec


logger = logging.getLogger(__name__)
# Least time between two registry reads caused by one model without an active version.
_MISS_REFRESH_SECONDS = 0.1


@dataclass(frozen=True)
class _Block:
    view: str
    src: np.ndarray | slice  # columns in the view's cached row (a slice when contiguous)
    dst: np.ndarray | slice  # columns in x


@dataclass(frozen=True)
class ModelPlan:
    """Everything about a (model, version, registry version) that does not depend on a request."""

    model: str
    spec: ModelSpec
    version: int
    registry_version: int
    layout: ModelLayout
    states: ModelStateStore
    user_entity: str
    user_keys: tuple[str, ...]
    user_dtypes: tuple[str, ...]
    item_entity: str
    item_keys: tuple[str, ...]
    item_dtypes: tuple[str, ...]
    item_views: tuple[str, ...]
    item_blocks: tuple[_Block, ...]
    user_views: tuple[str, ...]
    user_blocks: tuple[_Block, ...]
    ttl_us: dict[str, int]
    alpha: float | None  # the LinUCB exploration weight, None without exploration
    label_bounds: LabelBounds | None  # what feedback labels may be (None: any finite number)
    clip: tuple[float, float] | None = None  # squared error: scores are clipped to this range
    # The average item (x coordinates of the learned item views, NaN elsewhere) and those views:
    # an item a feature job has not learned yet is scored with it (status ``prior``).
    item_prior: np.ndarray | None = None
    prior_views: frozenset[str] = frozenset()

    def fill_prior(self, X: np.ndarray, absent: Mapping[str, np.ndarray]) -> np.ndarray:
        """Fill the rows of X that a learned item view (``prior_views``) has not found with the
        average item; returns the mask of rows filled. ``absent``: view -> not-found mask."""
        filled = np.zeros(X.shape[0], dtype=bool)
        if self.item_prior is None:
            return filled
        columns = np.arange(X.shape[1])
        for block in self.item_blocks:
            if block.view in self.prior_views and block.view in absent and absent[block.view].any():
                rows = np.flatnonzero(absent[block.view])
                cols = columns[block.dst]
                X[np.ix_(rows, cols)] = self.item_prior[cols]
                filled[rows] = True
        return filled

    def clipped(self, scores: np.ndarray) -> np.ndarray:
        """Scores clipped to the label range (squared-error models; others are returned as is)."""
        return scores if self.clip is None else np.clip(scores, self.clip[0], self.clip[1])

    @property
    def int_key(self) -> bool:
        """One integer item join key: its text is its JSON."""
        return len(self.item_keys) == 1 and self.item_dtypes[0] in ("int32", "int64")

    # -- inputs --------------------------------------------------------------------------------
    def user_key(self, row: Any, field: str = "user") -> bytes:
        return entity_key(self.user_keys, self.user_dtypes, row, field, self.user_entity)

    def item_key(self, row: Any, field: str = "item") -> bytes:
        return entity_key(self.item_keys, self.item_dtypes, row, field, self.item_entity)

    def encode_items(self, rows: Sequence[Any], field: str = "items") -> tuple[list[bytes], list[str]]:
        """(keys, keys as text) of candidate items; item i is checked as ``items.{i}``."""
        return entity_keys(self.item_keys, self.item_dtypes, rows, field, self.item_entity)

    def request_vector(self, given: Any) -> np.ndarray:
        return request_vector(self.layout.request, given, self.model)

    def label(self, value: Any) -> float:
        return label_value(value, self.layout.objective, self.model, self.label_bounds)

    # -- features ------------------------------------------------------------------------------
    def reads(self, items: Sequence[bytes], users: Sequence[bytes]) -> dict[str, Sequence[bytes]]:
        """The (view -> keys) reads that x needs: item views for ``items``, user views for
        ``users`` (one user for a prediction, one per row for feedback)."""
        requests: dict[str, Sequence[bytes]] = {v: items for v in self.item_views}
        for view in self.user_views:
            requests[view] = users
        return requests

    def assemble(self, rows: Mapping[str, ViewRows], m: int, request: np.ndarray) -> np.ndarray:
        """x of m rows, (m, d), from the rows read for ``reads`` (user rows broadcast when one
        user was read for m items) and the request features ((r,) or (m, r))."""
        layout = self.layout
        X = np.empty((m, layout.d))
        for block in self.item_blocks:
            X[:, block.dst] = rows[block.view].values[:, block.src]
        for block in self.user_blocks:
            values = rows[block.view].values
            X[:, block.dst] = values[0, block.src] if len(values) == 1 else values[:, block.src]
        col = layout.item_width + layout.user_width
        if layout.request:
            X[:, col : col + len(layout.request)] = request
        if layout.bias:
            X[:, -1] = 1.0
        return X

    def missing(self, rows: Mapping[str, ViewRows], now_us: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """view -> (not found, expired) masks over the rows read for it."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for view in (*self.item_views, *self.user_views):
            r = rows[view]
            ttl = self.ttl_us[view]
            expired = r.found & (r.event_ts <= now_us - ttl) if ttl else np.zeros(len(r.found), bool)
            out[view] = (~r.found, expired)
        return out


class Planner:
    """Plans of the models of one process, following the registry snapshot.

    >>> planner = Planner(store.context, cache)  # doctest: +SKIP
    >>> planner.plan("taste").layout.d  # doctest: +SKIP
    17
    """

    def __init__(self, context: ServiceContext, cache: FeatureCache) -> None:
        self.context = context
        self.cache = cache
        self._plans: dict[tuple[str, int, int], ModelPlan] = {}
        self._states: dict[tuple[str, int], ModelStateStore] = {}
        self._layouts: dict[tuple[str, int], ModelLayout] = {}
        self._lock = threading.Lock()
        self._miss_refreshed_at: dict[str, float] = {}

    def active_version(self, model: str) -> int:
        """The model's active version in the registry snapshot. On a miss the registry is read
        again, at most once per ``_MISS_REFRESH_SECONDS`` whatever the request rate: the model
        may have been trained by another process a moment ago."""
        watcher = self.context.watcher
        version = watcher.snapshot.active_models.get(model)
        if version is None:
            now = time.monotonic()
            if now - self._miss_refreshed_at.get(model, float("-inf")) >= _MISS_REFRESH_SECONDS:
                self._miss_refreshed_at[model] = now
                try:
                    version = watcher.refresh().active_models.get(model)
                except Exception as exc:  # noqa: BLE001 - the registry is down: the snapshot answers
                    logger.warning("registry refresh for model %r failed: %s", model, exc)
        if version is None:
            raise NotFoundError(
                f"model {model!r} has no trained version",
                hint=f"train it with `featurestore train {model} --labels LABELS.parquet`",
            )
        return version

    def plan(self, model: str, version: int | None = None) -> ModelPlan:
        """The plan of ``version`` (default: the active one) at the current registry version."""
        snapshot = self.context.watcher.snapshot
        spec: ModelSpec = snapshot.definitions.get("model", model)
        if version is None:
            version = self.active_version(model)
        key = (model, version, snapshot.version)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                states = self.states(model, version)
                metrics = self.context.model_versions.get(model, version).metrics
                bounds = LabelBounds.of(spec.label_range, metrics)
                plan = _compile(snapshot.definitions, spec, states, snapshot.version, self.cache, bounds)
                plan = replace(plan, clip=score_range(spec.label_range, metrics, plan.layout.objective),
                               **item_prior(metrics, plan.layout.d))
                if len(self._plans) > 256:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def states(self, model: str, version: int) -> ModelStateStore:
        """The version's state store (its layout and average user are read once and kept)."""
        states = self._states.get((model, version))
        if states is None:
            states = self._states[(model, version)] = ModelStateStore(self.context.online_store, model, version)
        return states

    def layout(self, model: str, version: int) -> ModelLayout | None:
        """A version's layout (fixed once published, so kept); None if its state is gone."""
        layout = self._layouts.get((model, version))
        if layout is None:
            try:
                layout = self._layouts[(model, version)] = self.states(model, version).layout()
            except NotFoundError:
                return None
        return layout


def score_range(
    declared: tuple[float, float] | None, metrics: Mapping[str, Any], objective: str
) -> tuple[float, float] | None:
    """The range a squared-error version's scores are clipped to: the declared ``label_range``,
    else its training labels' range (None for logistic models, or a version that recorded none).

    >>> score_range(None, {"label_min": 1.0, "label_max": 5.0}, "squared_error")
    (1.0, 5.0)
    """
    if objective != "squared_error":
        return None
    if declared is not None:
        return float(declared[0]), float(declared[1])
    low, high = metrics.get("label_min"), metrics.get("label_max")
    if low is None or high is None:
        return None
    return float(low), float(high)


def item_prior(metrics: Mapping[str, Any], d: int) -> dict[str, Any]:
    """The plan's ``item_prior`` and ``prior_views`` from a version's metrics (none recorded:
    no prior, new items are ``not_found`` as before).

    >>> item_prior({"item_prior": [0.5, None, None], "item_prior_views": ["v"]}, 3)["prior_views"]
    frozenset({'v'})
    """
    values, views = metrics.get("item_prior"), metrics.get("item_prior_views")
    if not values or not views or len(values) != d:
        return {}
    prior = np.array([np.nan if v is None else float(v) for v in values])
    return {"item_prior": prior, "prior_views": frozenset(views)}


def _compile(
    defs: Definitions,
    spec: ModelSpec,
    states: ModelStateStore,
    registry_version: int,
    cache: FeatureCache,
    label_bounds: LabelBounds | None,
) -> ModelPlan:
    layout = states.layout()
    user_entity = defs.entities.get(layout.user_entity)
    item_entity = defs.entities.get(layout.item_entity)
    if user_entity is None or item_entity is None:
        raise NotFoundError(
            f"model {spec.name!r} version {states.version} was trained for entities "
            f"{layout.user_entity!r} and {layout.item_entity!r}, which are no longer defined",
            hint="train the model again on the current definitions",
        )
    ttl: dict[str, int] = {}

    def blocks(group: tuple, start: int) -> tuple[tuple[str, ...], tuple[_Block, ...]]:
        views: list[str] = []
        src: dict[str, list[int]] = {}
        dst: dict[str, list[int]] = {}
        col = start
        for block in group:
            view = defs.feature_views.get(block.view)
            current = next((f for f in view.features if f.name == block.feature), None) if view else None
            if current is None or current.dtype != block.dtype:
                raise NotFoundError(
                    f"model {spec.name!r} version {states.version} was trained on {block.ref} "
                    f"({block.dtype}), which the applied definitions "
                    + ("no longer have" if current is None else f"now declare as {current.dtype}"),
                    hint="train the model again, or activate a version trained on the current features",
                )
            assert view is not None
            if block.view not in views:
                views.append(block.view)
                ttl[block.view] = view.ttl_seconds * 1_000_000
            columns = cache.decoder(block.view).columns[block.feature]
            src.setdefault(block.view, []).extend(range(columns.start, columns.stop))
            dst.setdefault(block.view, []).extend(range(col, col + block.width))
            col += block.width
        return tuple(views), tuple(_Block(v, _columns(src[v]), _columns(dst[v])) for v in views)

    item_views, item_blocks = blocks(layout.item, 0)
    user_views, user_blocks = blocks(layout.user, layout.item_width)
    exploration = spec.exploration
    return ModelPlan(
        model=spec.name,
        spec=spec,
        version=states.version,
        registry_version=registry_version,
        layout=layout,
        states=states,
        user_entity=user_entity.name,
        user_keys=tuple(k.name for k in user_entity.join_keys),
        user_dtypes=tuple(k.dtype for k in user_entity.join_keys),
        item_entity=item_entity.name,
        item_keys=tuple(k.name for k in item_entity.join_keys),
        item_dtypes=tuple(k.dtype for k in item_entity.join_keys),
        item_views=item_views,
        item_blocks=item_blocks,
        user_views=user_views,
        user_blocks=user_blocks,
        ttl_us=ttl,
        alpha=float(exploration.alpha) if exploration.type == "linucb" else None,
        label_bounds=label_bounds,
    )


def _columns(index: list[int]) -> np.ndarray | slice:
    """A slice when the columns are contiguous (copying a block beats a fancy index)."""
    if index == list(range(index[0], index[0] + len(index))):
        return slice(index[0], index[0] + len(index))
    return np.asarray(index, dtype=np.intp)
