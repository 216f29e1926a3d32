"""Feedback: what users did with predictions, made durable first, then learned from online.

``FeedbackService.submit`` (behind ``POST /feedback`` and ``FeatureStore.feedback``), per request:

1. **Check** every observation and find its x: the exact row that was served when it names a
   ``prediction_id`` (the prediction log keeps the n × d matrix of every prediction), otherwise
   the item's current features through the Predictor's feature cache and the version's layout —
   the same assembly as ``predict``. A bad observation is rejected with the field and the reason;
   the others go on.
2. **Score before learning**: one ``get_blobs`` for the users' states; the personalised prediction
   w·x and the average user's w_avg·x are what the user would have got (the monitoring numbers).
3. **Log**: one ``FeedbackLog.append`` (committed) for the whole request. Nothing is acknowledged
   before it; a ``feedback_id`` seen before is a duplicate and changes nothing after this step.
4. **Learn and swap**: the new observations update their users' states (``StateBatch.learn``:
   Sherman–Morrison for squared error, the online Newton step for logistic, vectorised across
   users), then ``compare_and_swap_blobs`` writes them *only if each user's stored bytes are still
   the ones read in step 2*. Users whose swap failed (another process wrote first) are re-read,
   re-learned from their fresh state and swapped again, so no concurrent update is ever lost.

The online states are derived data: ``replay`` rebuilds every user's state of a version from the
version's trained states (its artifact) plus the log, so losing Redis loses nothing.
``model_status`` aggregates the log with SQL (exact across processes) into the running loss of
the personalised and the average-user predictions, overall and per slice, and the stale flag.
docs/feedback.md has the whole design.
"""

from __future__ import annotations

import math
import random
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.feedback_log import FeedbackLog, Observation
from featurestore.models.linear import StateBatch, UserState, learn_one, new_user_state, sigmoid
from featurestore.models.metrics import RunningLoss
from featurestore.models.state_codec import decode_state, encode_state
from featurestore.online.codec import encode_entity_key
from registry.errors import ConflictError, DataError, NotFoundError, UserError

if TYPE_CHECKING:
    from featurestore.models.prediction_log import PredictionRecord
    from featurestore.models.serving import Predictor
    from featurestore.models.state_store import ModelLayout
    from featurestore.store import FeatureStore
    from registry.spec import ModelSpec

MAX_BATCH = 10_000
MAX_FEEDBACK_ID = 128
MAX_PREDICTION_ID = 64
MAX_SLICE = 200
# Cohorts of the monitoring slices: a user with a trained state is "known" (n - version > 0:
# training sets n and leaves version at 0, every online update adds one to both).
NEW, KNOWN = "new", "known"
ALL_SLICE = "all"
# Distinct slice_column values tracked per model in this process's counters; the rest are
# counted under "(other)" so a high-cardinality column cannot grow /metrics without bound.
MAX_SLICE_VALUES = 100
_HEADER = struct.Struct("<2sBBHQQ")  # the state header of docs/model-state.md
_HEAD = struct.Struct("<2sBBH")
_COUNTS = struct.Struct("<QQ")
_FIELDS = ("model", "user", "item", "label", "feedback_id", "prediction_id", "ts", "slice", "request_features")


# -- inputs and results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackInput:
    """One observation as received: ``label`` for ``item`` shown to ``user``.

    ``prediction_id`` (from ``/predict``) makes the update use the exact x that was served;
    ``ts`` is when it happened (default: when it was received); ``slice`` is the value of the
    model's ``slice_column`` for monitoring; ``request_features`` are needed only without a
    prediction id, by models that declare request features.

    >>> FeedbackInput("taste", {"user_id": 7}, {"item_id": 3}, 4.0, "fb-1").label
    4.0
    """

    model: str
    user: Mapping[str, Any]
    item: Mapping[str, Any]
    label: float
    feedback_id: str
    prediction_id: str | None = None
    ts: datetime | None = None
    slice: str | None = None
    request_features: Mapping[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeedbackInput:
        """Build from a mapping with the keys of the HTTP body; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise UserError(f"an observation must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        missing = [k for k in ("model", "user", "item", "label", "feedback_id") if k not in data]
        if unknown or missing:
            raise UserError(
                f"observation has unknown key(s) {unknown} / lacks {missing}" if unknown and missing
                else f"observation has unknown key(s) {unknown}" if unknown
                else f"observation lacks {', '.join(missing)}",
                hint="keys: " + ", ".join(_FIELDS),
            )
        return cls(**data)


@dataclass(frozen=True)
class Rejection:
    """Why observation ``index`` of a request was not accepted; ``field`` names the bad key."""

    index: int
    field: str
    reason: str
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason, "hint": self.hint}


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to a request's observations.

    ``new`` were logged and learned from; ``duplicates`` had a ``feedback_id`` already in the log
    (accepted, nothing changed); ``rejected`` were not accepted. ``model_versions`` is the
    version each model's observations were logged under and learned into.
    """

    received: int
    new: int
    duplicates: int
    rejected: tuple[Rejection, ...]
    model_versions: dict[str, int]
    cas_retries: int = 0

    @property
    def accepted(self) -> int:
        return self.new + self.duplicates

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "new": self.new,
            "duplicates": self.duplicates,
            "rejected": [r.to_dict() for r in self.rejected],
            "model_versions": self.model_versions,
        }


class _Reject(Exception):
    def __init__(self, field: str, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.field, self.reason, self.hint = field, reason, hint


@dataclass
class _Group:
    """The observations of one model in a request that passed the first checks."""

    model: str
    spec: ModelSpec
    plan: Any  # featurestore.models.serving._Plan of the active version
    index: list[int] = field(default_factory=list)
    users: list[bytes] = field(default_factory=list)
    items: list[bytes] = field(default_factory=list)
    rows: list[np.ndarray | None] = field(default_factory=list)  # None: use current features
    request: list[np.ndarray] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    pids: list[str | None] = field(default_factory=list)
    ts: list[datetime] = field(default_factory=list)
    slices: list[str | None] = field(default_factory=list)


# -- states in bulk -----------------------------------------------------------------------------


class BatchStateCodec:
    """``encode_state`` / ``decode_state`` for many users at once (docs/model-state.md, format 1).

    One ``np.frombuffer`` over the joined blobs instead of a decode per user: the layout is a
    22-byte header then float64s, so a structured dtype reads all of them. Anything that does not
    look like a format-1 float64 state of this d goes through ``decode_state``, which raises its
    precise error. Output is byte-identical to ``encode_state`` (a test pins it).

    >>> codec = BatchStateCodec(2)
    >>> batch, stored = codec.decode([None], np.array([1.0, 2.0]), l2=1.0)
    >>> batch.w.tolist(), stored.tolist()
    ([[1.0, 2.0]], [False])
    """

    def __init__(self, d: int) -> None:
        self.d = d
        self.upper = np.triu_indices(d)
        tri = d * (d + 1) // 2
        self.floats = 2 * d + 2 * tri
        self.dtype = np.dtype(
            [("magic", "S2"), ("format", "u1"), ("code", "u1"), ("d", "<u2"), ("n", "<u8"),
             ("version", "<u8"), ("body", "<f8", (self.floats,))]
        )
        self._cuts = (d, d + tri, d + 2 * tri)
        rows, cols = self.upper
        self._flat_upper = rows * d + cols
        self._flat_lower = cols * d + rows
        # For every cell of a d x d matrix, its index in the row-by-row upper triangle.
        self._from_triangle = np.empty(d * d, np.intp)
        self._from_triangle[self._flat_upper] = np.arange(len(rows))
        self._from_triangle[self._flat_lower] = np.arange(len(rows))

    def decode(self, blobs: Sequence[bytes | None], w_avg: np.ndarray, l2: float) -> tuple[StateBatch, np.ndarray]:
        """(states, stored): a missing blob is the average user (``new_user_state``)."""
        k, d = len(blobs), self.d
        if k == 1:
            s = self.decode_one(blobs[0], w_avg, l2)
            return (StateBatch(s.w[None], s.A_inv[None], s.xtx[None], s.xty[None], np.array([s.n], np.int64),
                               np.array([s.version], np.int64)), np.array([blobs[0] is not None]))
        stored = np.fromiter((b is not None for b in blobs), bool, k)
        w = np.empty((k, d))
        A_inv = np.empty((k, d, d))
        xtx = np.empty((k, d, d))
        xty = np.empty((k, d))
        n = np.zeros(k, np.int64)
        version = np.zeros(k, np.int64)
        fresh = np.flatnonzero(~stored)
        if fresh.size:
            w[fresh] = w_avg
            A_inv[fresh] = np.eye(d) / l2
            xtx[fresh] = 0.0
            xty[fresh] = 0.0
        where = np.flatnonzero(stored)
        if where.size:
            present = [blobs[i] for i in where.tolist()]
            size = self.dtype.itemsize
            arr = None
            # One frombuffer pays off from a few states on; one state decodes faster alone.
            if len(present) > 2 and all(len(b) == size for b in present):  # type: ignore[arg-type]
                arr = np.frombuffer(b"".join(present), dtype=self.dtype)  # type: ignore[arg-type]
                if not ((arr["magic"] == b"VS").all() and (arr["format"] == 1).all()
                        and (arr["code"] == 1).all() and (arr["d"] == d).all()):
                    arr = None
            if arr is None:
                for i, blob in zip(where.tolist(), present):
                    s = decode_state(blob)  # type: ignore[arg-type]
                    if s.d != d:
                        raise DataError(f"a stored user state has d={s.d}, the model version has d={d}",
                                        hint="train the model again")
                    w[i], A_inv[i], xtx[i], xty[i], n[i], version[i] = s.w, s.A_inv, s.xtx, s.xty, s.n, s.version
            else:
                body = arr["body"]
                a, b, c = self._cuts
                w[where] = body[:, :a]
                for target, part in ((A_inv, body[:, a:b]), (xtx, body[:, b:c])):
                    # One gather from the triangle to every cell: cheaper than two scatters.
                    full = np.take(part, self._from_triangle, axis=1).reshape(-1, d, d)
                    if len(where) == k:
                        target[...] = full
                    else:
                        target[where] = full
                xty[where] = body[:, c:]
                n[where] = arr["n"].astype(np.int64)
                version[where] = arr["version"].astype(np.int64)
        return StateBatch(w, A_inv, xtx, xty, n, version), stored

    def decode_one(self, blob: bytes | None, w_avg: np.ndarray, l2: float) -> UserState:
        """One state (the single-observation path: a third of ``decode_state``'s cost)."""
        d = self.d
        if blob is None:
            return new_user_state(w_avg, l2)
        if len(blob) != self.dtype.itemsize or _HEAD.unpack_from(blob) != (b"VS", 1, 1, d):
            s = decode_state(blob)  # raises its precise error, or reads another d
            if s.d != d:
                raise DataError(f"a stored user state has d={s.d}, the model version has d={d}",
                                hint="train the model again")
            return s
        body = np.frombuffer(blob, "<f8", self.floats, 22)
        a, b, c = self._cuts
        A_inv = np.empty(d * d)
        xtx = np.empty(d * d)
        A_inv[self._flat_upper] = body[a:b]
        A_inv[self._flat_lower] = body[a:b]
        xtx[self._flat_upper] = body[b:c]
        xtx[self._flat_lower] = body[b:c]
        n, version = _COUNTS.unpack_from(blob, 6)
        return UserState(body[:a].copy(), A_inv.reshape(d, d), xtx.reshape(d, d), body[c:].copy(), n, version)

    def encode_one(self, state: UserState) -> bytes:
        """``encode_state`` of one state, byte for byte, with the checks the maths makes true."""
        if state.d != self.d or not (np.array_equal(state.A_inv, state.A_inv.T) and np.array_equal(state.xtx, state.xtx.T)):
            return encode_state(state)
        flat = self._flat_upper
        body = np.concatenate((state.w, state.A_inv.ravel()[flat], state.xtx.ravel()[flat], state.xty))
        return _HEADER.pack(b"VS", 1, 1, self.d, state.n, state.version) + body.tobytes()

    def encode(self, batch: StateBatch) -> list[bytes]:
        """One blob per state, byte-identical to ``encode_state``."""
        k = len(batch)
        if k == 0:
            return []
        if k == 1:
            return [self.encode_one(_first(batch))]
        # The maths keeps both matrices exactly symmetric; only the upper triangle is written,
        # so anything else must go through encode_state, which refuses it by name.
        if not (np.array_equal(batch.A_inv, batch.A_inv.swapaxes(1, 2))
                and np.array_equal(batch.xtx, batch.xtx.swapaxes(1, 2))):
            return [encode_state(s) for s in batch.to_states()]
        d, flat = self.d, self._flat_upper
        arr = np.empty(k, dtype=self.dtype)
        arr["magic"], arr["format"], arr["code"], arr["d"] = b"VS", 1, 1, d
        arr["n"], arr["version"] = batch.n, batch.version
        arr["body"] = np.concatenate(
            (batch.w, batch.A_inv.reshape(k, d * d)[:, flat], batch.xtx.reshape(k, d * d)[:, flat], batch.xty), axis=1
        )
        raw = arr.tobytes()
        size = self.dtype.itemsize
        return [raw[i : i + size] for i in range(0, k * size, size)]


def take(batch: StateBatch, index: np.ndarray) -> StateBatch:
    """The states at ``index`` as a new batch (copies)."""
    return StateBatch(batch.w[index], batch.A_inv[index], batch.xtx[index], batch.xty[index],
                      batch.n[index], batch.version[index])


def _put(batch: StateBatch, index: np.ndarray, values: StateBatch) -> None:
    batch.w[index], batch.A_inv[index], batch.xtx[index] = values.w, values.A_inv, values.xtx
    batch.xty[index], batch.n[index], batch.version[index] = values.xty, values.n, values.version


def learn_encode(
    codec: BatchStateCodec, batch: StateBatch, rows: np.ndarray, X: np.ndarray, y: np.ndarray, objective: Any
) -> list[bytes]:
    """The update itself: learn the observations (in order per user), encode the new states.
    One observation takes ``learn_one``, ten times cheaper than a vectorised round of one."""
    if len(y) != 1:
        return codec.encode(batch.learn(rows, X, y, objective))
    return [codec.encode_one(learn_one(_first(batch), X[0], float(y[0]), objective))]


def _first(batch: StateBatch) -> UserState:
    """The first state as views (``to_states`` would freeze the batch, which is written again)."""
    return UserState(batch.w[0], batch.A_inv[0], batch.xtx[0], batch.xty[0], int(batch.n[0]), int(batch.version[0]))


def local_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values in first-appearance order, each row's index into them)."""
    uniq, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inverse]


# -- the service --------------------------------------------------------------------------------


class FeedbackService:
    """Validates, logs and learns observations; shared by the server and the SDK.

    >>> service = FeedbackService(store)  # doctest: +SKIP
    >>> service.submit([FeedbackInput("taste", {"user_id": 7}, {"item_id": 3}, 4.0, "fb-1")]).new  # doctest: +SKIP
    1
    """

    def __init__(
        self,
        store: FeatureStore,
        *,
        predictor: Predictor | None = None,
        max_attempts: int = 1_000,
        prediction_wait_seconds: float = 0.1,
    ) -> None:
        self.store = store
        self.predictor = predictor if predictor is not None else store.predictor
        self.log = FeedbackLog(store.registry.engine, store.project)
        self.max_attempts = max_attempts
        # A prediction made by another process is in the table within the prediction log's
        # flush interval (~50 ms): an id not found is looked up once more after this wait.
        self.prediction_wait_seconds = prediction_wait_seconds
        self._lock = threading.Lock()
        self._losses: dict[tuple[str, int, str, str], RunningLoss] = {}
        self._slice_values: dict[str, set[str]] = {}
        self._codecs: dict[int, BatchStateCodec] = {}
        self._layouts: dict[tuple[str, int], ModelLayout] = {}
        self._counts: dict[tuple[str, str], int] = {}  # (model, new|duplicate|rejected) -> n
        self.cas_retries = 0

    # -- the request path -------------------------------------------------------------------------
    def submit(self, observations: Sequence[FeedbackInput]) -> FeedbackResult:
        """Check, log (durably) and learn a batch of observations; see the module docstring."""
        obs = list(observations)
        if not obs:
            raise UserError("no observations given", hint="send at least one observation")
        if len(obs) > MAX_BATCH:
            raise UserError(f"{len(obs):,} observations in one request", hint=f"send at most {MAX_BATCH:,} per request")
        received = datetime.now(timezone.utc)
        rejected: list[Rejection] = []
        groups: dict[str, _Group] = {}
        defs = self.store.registry_cache.get()
        records = self._predictions([o.prediction_id for o in obs if isinstance(o, FeedbackInput) and isinstance(o.prediction_id, str)])
        positions: dict[str, dict[str, int]] = {}
        for i, o in enumerate(obs):
            try:
                self._prepare(o, i, defs, groups, records, positions, received)
            except _Reject as exc:
                rejected.append(Rejection(i, exc.field, exc.reason, exc.hint))

        # Current features for the observations without a usable served row, per model.
        ready: list[tuple[_Group, np.ndarray, np.ndarray]] = []
        for group in groups.values():
            X, bad = self._assemble(group)
            for j, (fld, reason, hint) in bad.items():
                rejected.append(Rejection(group.index[j], fld, reason, hint))
            keep = np.array([j not in bad for j in range(len(group.index))], dtype=bool)
            if keep.any():
                ready.append((group, X, keep))

        # Score before learning, from one read of every user's state.
        staged = []
        to_log: list[Observation] = []
        for group, X, keep in ready:
            stage = self._stage(group, X, keep)
            staged.append(stage)
            to_log += stage.observations
        flags = self.log.append(to_log) if to_log else []

        new = duplicates = retries = 0
        offset = 0
        for stage in staged:
            fresh = np.asarray(flags[offset : offset + len(stage.observations)], dtype=bool)
            offset += len(stage.observations)
            retries += self._learn(stage, fresh)
            self._monitor(stage, fresh)
            n_new = int(fresh.sum())
            new += n_new
            duplicates += len(fresh) - n_new
            self._count(stage.group.model, "new", n_new)
            self._count(stage.group.model, "duplicate", len(fresh) - n_new)
        for r in rejected:
            model = getattr(obs[r.index], "model", None)
            self._count(model if isinstance(model, str) and model in defs.models else "(unknown)", "rejected", 1)
        rejected.sort(key=lambda r: r.index)
        with self._lock:
            self.cas_retries += retries
        return FeedbackResult(
            received=len(obs),
            new=new,
            duplicates=duplicates,
            rejected=tuple(rejected),
            model_versions={s.group.model: s.group.plan.version for s in staged},
            cas_retries=retries,
        )

    # -- monitoring counters ------------------------------------------------------------------------
    def counts(self) -> dict[tuple[str, str], int]:
        """(model, result) -> observations this process handled, result being ``new``,
        ``duplicate`` or ``rejected`` (model ``(unknown)`` for unknown names). A copy."""
        with self._lock:
            return dict(self._counts)

    def note_rejected(self, model: str, amount: int = 1) -> None:
        """Count observations rejected before they reached ``submit`` (e.g. a body that did not
        validate), so ``counts`` covers every observation received."""
        self._count(model, "rejected", amount)

    def losses(self) -> dict[tuple[str, int, str, str], RunningLoss]:
        """(model, version, predictor, slice) -> running loss of this process, predictor being
        ``personalised`` or ``average_user``; slice ``all``, ``new_users``, ``known_users`` or
        ``{slice_column}={value}``. A copy."""
        with self._lock:
            return {k: RunningLoss(v.loss, v.count, v.total) for k, v in self._losses.items()}

    # -- steps ------------------------------------------------------------------------------------
    def _prepare(
        self,
        o: Any,
        i: int,
        defs: Any,
        groups: dict[str, _Group],
        records: Mapping[str, PredictionRecord | None],
        positions: dict[str, dict[str, int]],
        received: datetime,
    ) -> None:
        if not isinstance(o, FeedbackInput):
            raise _Reject("(observation)", f"expected a FeedbackInput, got {type(o).__name__}")
        if not isinstance(o.model, str):
            raise _Reject("model", "must be a model name")
        group = groups.get(o.model)
        if group is None:
            try:
                spec = defs.get("model", o.model)
                plan = self.predictor._plan(o.model, None)
            except UserError as exc:
                raise _Reject("model", exc.message, exc.hint) from None
            group = groups[o.model] = _Group(o.model, spec, plan)
        plan = group.plan
        layout = plan.layout
        fid = o.feedback_id
        if not isinstance(fid, str) or not 0 < len(fid) <= MAX_FEEDBACK_ID:
            raise _Reject("feedback_id", f"must be a string of 1 to {MAX_FEEDBACK_ID} characters, got {fid!r:.80}",
                          "use an id unique per observation, e.g. a uuid; retries must reuse it")
        label = o.label
        if isinstance(label, bool):
            label = float(label)
        if not isinstance(label, (int, float)) or not math.isfinite(label):
            raise _Reject("label", f"must be a finite number, got {label!r:.50}")
        label = float(label)
        if layout.objective == "logistic" and label not in (0.0, 1.0):
            raise _Reject("label", f"model {o.model!r} is logistic: the label must be 0 or 1, got {label:g}",
                          "send 1 for a positive outcome (a click), 0 otherwise")
        user = _key(plan.user_keys, plan.user_dtypes, o.user, "user")
        item = _key(plan.item_keys, plan.item_dtypes, o.item, "item")
        ts = o.ts
        if ts is None:
            ts = received
        elif not isinstance(ts, datetime):
            raise _Reject("ts", f"must be a timestamp, got {ts!r:.50}", "ISO 8601, e.g. 2026-01-01T12:00:00Z")
        elif ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        sl = o.slice
        if sl is not None and (not isinstance(sl, str) or len(sl) > MAX_SLICE):
            raise _Reject("slice", f"must be a string of at most {MAX_SLICE} characters")
        pid = o.prediction_id
        row: np.ndarray | None = None
        request = np.empty(0)
        if pid is not None:
            if not isinstance(pid, str) or not 0 < len(pid) <= MAX_PREDICTION_ID:
                raise _Reject("prediction_id", f"must be a string of 1 to {MAX_PREDICTION_ID} characters")
            row = self._served_row(pid, records.get(pid), o.model, user, item, plan, positions)
        if row is None:
            request = _request_vector(layout, o.request_features)
        group.index.append(i)
        group.users.append(user)
        group.items.append(item)
        group.rows.append(row)
        group.request.append(request)
        group.labels.append(label)
        group.ids.append(fid)
        group.pids.append(pid)
        group.ts.append(ts)
        group.slices.append(sl)

    def _served_row(
        self,
        pid: str,
        record: PredictionRecord | None,
        model: str,
        user: bytes,
        item: bytes,
        plan: Any,
        positions: dict[str, dict[str, int]],
    ) -> np.ndarray | None:
        """The x served for ``item`` in prediction ``pid``; None when the prediction was made by
        a version with another layout (its x does not fit the active version's weights)."""
        if record is None:
            raise _Reject(
                "prediction_id", f"unknown prediction id {pid!r}",
                "pass the prediction_id that /predict returned for this user (predictions are logged within ~50 ms)",
            )
        if record.model != model:
            raise _Reject("prediction_id", f"prediction {pid} was made by model {record.model!r}, not {model!r}")
        user_text = _text(user)
        if record.user_key != user_text:
            raise _Reject("user", f"prediction {pid} was made for user {record.user_key!r}, not {user_text!r}",
                          "send the user the prediction was made for")
        index = positions.get(pid)
        if index is None:
            index = positions[pid] = {}
            for j, text in enumerate(record.items):
                index.setdefault(text, j)
        at = index.get(_text(item))
        if at is None:
            raise _Reject("item", f"item {_text(item)!r} was not a candidate of prediction {pid}",
                          "send feedback for an item that was in the prediction, or omit prediction_id")
        x = np.asarray(record.features[at], dtype=np.float64)
        if not np.isfinite(x).all():
            raise _Reject("item", f"item {_text(item)!r} was not scored in prediction {pid} (missing features)",
                          "an item that could not be scored cannot be learned from")
        if record.model_version == plan.version:
            return x
        other = self._layout(model, record.model_version)
        if other is not None and other.columns() == plan.layout.columns():
            return x  # same columns: the served x means the same to the active version
        return None

    def _layout(self, model: str, version: int) -> ModelLayout | None:
        """A version's layout (fixed once published, so kept); None if its state is gone."""
        layout = self._layouts.get((model, version))
        if layout is None:
            from featurestore.models.state_store import ModelStateStore

            try:
                layout = self._layouts[(model, version)] = ModelStateStore(self.store.online_store, model, version).layout()
            except NotFoundError:
                return None
        return layout

    def _predictions(self, ids: list[str]) -> dict[str, PredictionRecord | None]:
        out: dict[str, PredictionRecord | None] = {}
        log = self.predictor.log
        for pid in dict.fromkeys(ids):
            if 0 < len(pid) <= MAX_PREDICTION_ID:
                out[pid] = log.get(pid)
        missing = [pid for pid, r in out.items() if r is None]
        if missing and self.prediction_wait_seconds > 0:
            time.sleep(self.prediction_wait_seconds)
            for pid in missing:
                out[pid] = log.get(pid)
        return out

    def _assemble(self, group: _Group) -> tuple[np.ndarray, dict[int, tuple[str, str, str | None]]]:
        """x of every observation of the group, (m, d); and the ones that cannot be learned."""
        plan = group.plan
        layout = plan.layout
        m, d = len(group.index), layout.d
        X = np.empty((m, d))
        bad: dict[int, tuple[str, str, str | None]] = {}
        need = [j for j, r in enumerate(group.rows) if r is None]
        for j, r in enumerate(group.rows):
            if r is not None:
                X[j] = r
        if not need:
            return X, bad
        items = [group.items[j] for j in need]
        users = [group.users[j] for j in need]
        requests: dict[str, Sequence[bytes]] = {v: items for v in plan.item_views}
        for view in plan.user_views:
            requests[view] = users
        rows = self.predictor.cache.lookup(requests, uncached=plan.user_views)
        now_us = time.time_ns() // 1000
        Z = np.empty((len(need), d))
        for block in plan.item_blocks:
            Z[:, block.dst] = rows[block.view].values[:, block.src]
        for block in plan.user_blocks:
            Z[:, block.dst] = rows[block.view].values[:, block.src]
        col = layout.item_width + layout.user_width
        if layout.request:
            Z[:, col : col + len(layout.request)] = np.stack([group.request[j] for j in need])
        if layout.bias:
            Z[:, -1] = 1.0
        for what, views in (("item", plan.item_views), ("user", plan.user_views)):
            for view in views:
                found = rows[view]
                ttl = plan.ttl_us[view]
                expired = found.found & (found.event_ts <= now_us - ttl) if ttl else np.zeros(len(need), bool)
                for k in np.flatnonzero(~found.found | expired).tolist():
                    status = "not_found" if not found.found[k] else "expired"
                    current = "current " if status == "expired" else ""
                    reason = f"missing features: view {view!r} has no {current}value for this {what} ({status})"
                    hint = f"materialize {view!r}, or send the prediction_id of a prediction that scored it"
                    bad.setdefault(need[k], (what, reason, hint))
        nulls = np.flatnonzero(np.isnan(Z).any(axis=1)).tolist()
        for k in nulls:
            bad.setdefault(need[k], ("item", "missing features: a feature value of this item or user is null",
                                     "materialize the model's views, or send a prediction_id"))
        X[need] = Z
        return X, bad

    def _stage(self, group: _Group, X: np.ndarray, keep: np.ndarray) -> _Stage:
        plan = group.plan
        layout = plan.layout
        sel = np.flatnonzero(keep)
        users = [group.users[j] for j in sel.tolist()]
        X = X[sel]
        y = np.asarray([group.labels[j] for j in sel.tolist()], dtype=np.float64)
        keys, rows = _distinct(users)
        states = plan.states  # ModelStateStore: layout and average already loaded by the plan
        blobs = self.store.online_store.get_blobs(states.namespace, keys)
        codec = self._codec(layout.d)
        w_avg = states.average()
        batch, stored = codec.decode(blobs, w_avg, layout.l2)
        known = stored & (batch.n - batch.version > 0)
        personal = np.einsum("md,md->m", batch.w[rows], X)
        average = X @ w_avg
        if layout.objective == "logistic":
            personal, average = sigmoid(personal), sigmoid(average)
        cohorts = np.where(known[rows], KNOWN, NEW)
        observations = []
        for k, j in enumerate(sel.tolist()):
            sl = group.slices[j]
            observations.append(
                Observation(
                    feedback_id=group.ids[j],
                    model=group.model,
                    model_version=plan.version,
                    user_key=_text(users[k]),
                    item_key=_text(group.items[j]),
                    label=y[k],
                    features=X[k],
                    event_ts=group.ts[j],
                    prediction_id=group.pids[j],
                    prediction=float(personal[k]),
                    baseline=float(average[k]),
                    slice=encode_slice(str(cohorts[k]), sl),
                )
            )
        return _Stage(group, keys, rows, blobs, batch, X, y, personal, average, cohorts, observations)

    def _learn(self, stage: _Stage, fresh: np.ndarray) -> int:
        """Learn the new observations and swap the states in; returns how many retries it took."""
        sel = np.flatnonzero(fresh)
        if not sel.size:
            return 0
        plan = stage.group.plan
        layout = plan.layout
        namespace = plan.states.namespace
        online = self.store.online_store
        codec = self._codec(layout.d)
        rows, X, y = stage.rows[sel], stage.X[sel], stage.y[sel]
        current = stage.batch
        expected = list(stage.blobs)
        todo = np.unique(rows)
        retries = 0
        while True:
            mask = np.isin(rows, todo) if retries else np.ones(len(rows), bool)
            users, local = local_rows(rows[mask])
            # Usually every user of the request, in order: learn on them without another copy.
            whole = len(users) == len(current) and bool((users == np.arange(len(users))).all())
            sub = current if whole else take(current, users)
            encoded = learn_encode(codec, sub, local, X[mask], y[mask], layout.objective)
            keys = [stage.keys[u] for u in users.tolist()]
            failed = online.compare_and_swap_blobs(
                namespace, {key: (expected[u], blob) for key, u, blob in zip(keys, users.tolist(), encoded)}
            )
            if not failed:
                return retries
            retries += 1
            if retries >= self.max_attempts:
                raise ConflictError(
                    f"model {stage.group.model!r}: the states of {len(failed)} user(s) kept changing "
                    f"under {retries} attempts to update them",
                    hint="the observations are in the feedback log; run `featurestore models replay "
                    f"{stage.group.model}` once the load drops",
                )
            lost = set(failed)
            todo = np.asarray([u for u, key in zip(users.tolist(), keys) if key in lost], dtype=np.intp)
            fresh_blobs = online.get_blobs(namespace, [stage.keys[u] for u in todo.tolist()])
            for u, blob in zip(todo.tolist(), fresh_blobs):
                expected[u] = blob
            reread, _ = codec.decode(fresh_blobs, plan.states.average(), layout.l2)
            _put(current, todo, reread)
            if retries > 2:  # two writers racing for one user: let the other finish
                time.sleep(random.random() * min(0.002 * retries, 0.05))

    def _monitor(self, stage: _Stage, fresh: np.ndarray) -> None:
        sel = np.flatnonzero(fresh)
        if not sel.size:
            return
        group = stage.group
        model, version = group.model, group.plan.version
        loss_kind = "log_loss" if group.plan.layout.objective == "logistic" else "squared_error"
        column = group.spec.slice_column
        labels_of: dict[str, list[int]] = {ALL_SLICE: sel.tolist()}
        for k in sel.tolist():
            labels_of.setdefault(f"{stage.cohorts[k]}_users", []).append(k)
            value = stage.observations[k].slice
            _, sl = decode_slice(value)
            if column and sl is not None:
                labels_of.setdefault(self._slice_label(model, column, sl), []).append(k)
        with self._lock:
            for label, idx in labels_of.items():
                for predictor, values in (("personalised", stage.personal), ("average_user", stage.average)):
                    key = (model, version, predictor, label)
                    acc = self._losses.get(key)
                    if acc is None:
                        acc = self._losses[key] = RunningLoss(loss_kind)  # type: ignore[arg-type]
                    acc.update(stage.y[idx], values[idx])

    def _slice_label(self, model: str, column: str, value: str) -> str:
        seen = self._slice_values.setdefault(model, set())
        if value not in seen and len(seen) >= MAX_SLICE_VALUES:
            return f"{column}=(other)"
        seen.add(value)
        return f"{column}={value}"

    def _count(self, model: str, result: str, amount: int) -> None:
        if amount:
            with self._lock:
                self._counts[(model, result)] = self._counts.get((model, result), 0) + amount

    def _codec(self, d: int) -> BatchStateCodec:
        codec = self._codecs.get(d)
        if codec is None:
            codec = self._codecs[d] = BatchStateCodec(d)
        return codec


@dataclass(eq=False)
class _Stage:
    """One model's accepted observations of a request, scored and ready to log and learn."""

    group: _Group
    keys: list[bytes]  # distinct users
    rows: np.ndarray  # observation -> index into keys
    blobs: list[bytes | None]  # the users' states as read (the compare-and-swap expectation)
    batch: StateBatch  # the same, decoded
    X: np.ndarray
    y: np.ndarray
    personal: np.ndarray
    average: np.ndarray
    cohorts: np.ndarray
    observations: list[Observation]


# -- helpers ------------------------------------------------------------------------------------


def encode_slice(cohort: str, value: str | None) -> str:
    """The ``slice`` column of the log: the cohort, then ``|`` and the slice_column value.

    >>> encode_slice("known", "mobile"), encode_slice("new", None)
    ('known|mobile', 'new')
    """
    return cohort if value is None else f"{cohort}|{value}"


def decode_slice(text: str | None) -> tuple[str | None, str | None]:
    """(cohort, slice value) of the log's ``slice`` column.

    >>> decode_slice("known|a|b")
    ('known', 'a|b')
    """
    if text is None:
        return None, None
    cohort, sep, value = text.partition("|")
    return cohort, (value if sep else None)


def _text(key: bytes) -> str:
    """An entity key as the logs store it (the prediction log's convention)."""
    return key.decode("utf-8", "backslashreplace")


def _distinct(keys: list[bytes]) -> tuple[list[bytes], np.ndarray]:
    slot: dict[bytes, int] = {}
    rows = np.fromiter((slot.setdefault(k, len(slot)) for k in keys), np.intp, len(keys))
    return list(slot), rows


_INT_RANGE = {"int64": (-(2**63), 2**63 - 1), "int32": (-(2**31), 2**31 - 1)}


def _key(names: tuple[str, ...], dtypes: tuple[str, ...], row: Any, what: str) -> bytes:
    if len(names) == 1 and type(row) is dict and len(row) == 1:
        value = row.get(names[0])
        bounds = _INT_RANGE.get(dtypes[0])
        # One integer join key, the common case: what encode_entity_key writes, without its checks.
        if type(value) is int and bounds is not None and bounds[0] <= value <= bounds[1]:
            return b"%d" % value
    if not isinstance(row, Mapping):
        raise _Reject(what, f"must be a mapping of join keys to values, got {row!r:.80}")
    extra = [k for k in row if k not in names]
    try:
        if extra:
            raise KeyError(extra[0])
        return encode_entity_key(dtypes, [row[name] for name in names])
    except KeyError as exc:
        described = ", ".join(f"{n} ({d})" for n, d in zip(names, dtypes))
        if extra:
            raise _Reject(f"{what}.{exc.args[0]}", f"is not a join key of the {what} entity",
                          f"give exactly {described}") from None
        raise _Reject(what, f"has no join key {exc.args[0]!r}", f"give {described}") from None
    except DataError as exc:
        raise _Reject(what, exc.message, exc.hint) from None


def _request_vector(layout: ModelLayout, given: Any) -> np.ndarray:
    if not layout.request:
        return np.empty(0)
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise _Reject("request_features", "must be a mapping of request feature names to numbers")
    out = np.empty(len(layout.request))
    for i, name in enumerate(layout.request):
        value = given.get(name)
        if value is None:
            raise _Reject(
                "request_features", f"model {layout.model!r} needs request feature {name!r}",
                "send the values the prediction used, or the prediction_id",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Reject(f"request_features.{name}", f"must be a finite number, got {value!r:.50}")
        out[i] = float(value)
    return out


# -- replay -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayResult:
    model: str
    version: int
    observations: int  # log rows replayed
    users: int  # users with a state after the replay (trained or with feedback)
    changed: int  # users whose stored bytes differed from the replayed state (rewritten)
    mismatched: int  # of those, users whose observation count differed (missing or extra updates)
    written: bool
    restored: bool  # the version's trained states had to be reloaded from its artifact
    max_weight_diff: float  # largest |w_live - w_replayed| over users (0.0 when none stored)

    def summary(self) -> str:
        what = "rewrote" if self.written else "would rewrite"
        return (
            f"Model {self.model!r} version {self.version}: replayed {self.observations:,} logged "
            f"observation(s) over {self.users:,} user state(s); {what} {self.changed:,} that differed "
            f"from the online store, {self.mismatched:,} of them by their number of observations "
            f"(largest weight difference {self.max_weight_diff:.3g}; differences near 1e-15 are the "
            "rounding of another update order)"
            + ("; the trained states were reloaded from the artifact first" if self.restored else "")
            + "."
        )


def replay(
    store: FeatureStore,
    model: str,
    version: int | None = None,
    *,
    write: bool = True,
    chunk: int = 10_000,
) -> ReplayResult:
    """Rebuild every user's state of a version: its trained states (the artifact) + the log's
    observations of that version, in log order; then write the states that differ.

    Writes are compare-and-swaps against a snapshot taken *before* the log is read, so an update
    a server completes meanwhile is not overwritten: its user is re-read, the log read on, and
    the swap retried. Run it with feedback paused: an observation still in flight in a server
    when its user is rewritten would be applied on top of a state that already holds it.

    >>> replay(store, "taste").changed  # doctest: +SKIP
    0
    """
    import sqlalchemy as sa

    from featurestore.models.training import read_artifact, restore_version
    from registry import tables as t

    defs = store.definitions()
    defs.get("model", model)
    if version is None:
        version = store.model_versions.active_versions().get(model)
        if version is None:
            raise NotFoundError(f"model {model!r} has no active version",
                                hint=f"train it with `featurestore train {model} --labels FILE`")
    recorded = store.model_versions.get(model, version)
    restored = restore_version(store, model, version) if write else False
    _, layout, w_avg, base = read_artifact(Path(recorded.artifact))
    from featurestore.models.state_store import state_namespace

    namespace = state_namespace(model, version)
    online = store.online_store
    codec = BatchStateCodec(layout.d)
    f = t.feedback
    with store.registry.engine.connect() as conn:
        logged_users = conn.execute(
            sa.select(f.c.user_key).where(f.c.project == store.project, f.c.model == model,
                                          f.c.model_version == version).distinct()
        ).scalars().all()
    keys = list(dict.fromkeys([*base, *(u.encode("utf-8") for u in logged_users)]))
    slot = {k: i for i, k in enumerate(keys)}
    snapshot = _get_blobs(online, namespace, keys)  # before the log is read: see the docstring
    states, _ = codec.decode([None] * len(keys), w_avg, layout.l2)
    if base:
        _put(states, np.fromiter((slot[k] for k in base), np.intp, len(base)), StateBatch.from_states(list(base.values())))
    log = FeedbackLog(store.registry.engine, store.project)
    last = 0
    total = 0
    objective: Any = layout.objective

    def apply_log() -> set[int]:
        nonlocal last, total, states
        touched: set[int] = set()
        for rows in log.read(model, version, after_seq=last, batch=chunk):
            users = [r.user_key.encode("utf-8") for r in rows]
            for u in users:
                if u not in slot:  # first seen after the snapshot: extend the batch
                    slot[u] = len(keys)
                    keys.append(u)
                    snapshot.append(online.get_blobs(namespace, [u])[0])
                    extra, _ = codec.decode([None], w_avg, layout.l2)
                    states = _concat(states, extra)
            idx = np.fromiter((slot[u] for u in users), np.intp, len(users))
            X = np.stack([r.features for r in rows])
            y = np.fromiter((r.label for r in rows), np.float64, len(rows))
            distinct, local = local_rows(idx)
            _put(states, distinct, take(states, distinct).learn(local, X, y, objective))
            touched.update(distinct.tolist())
            last = rows[-1].seq
            total += len(rows)
        return touched

    apply_log()
    encoded = codec.encode(states)
    live, _ = codec.decode(snapshot, w_avg, layout.l2)
    diff = float(np.abs(live.w - states.w).max()) if len(keys) else 0.0
    todo = [i for i in range(len(keys)) if snapshot[i] != encoded[i]]
    changed = len(todo)
    mismatched = int(((live.n != states.n) | (live.version != states.version)).sum())
    if write:
        for _ in range(1_000):
            failed: list[int] = []
            for start in range(0, len(todo), 1_000):
                part = todo[start : start + 1_000]
                lost = set(online.compare_and_swap_blobs(namespace, {keys[i]: (snapshot[i], encoded[i]) for i in part}))
                failed += [i for i in part if keys[i] in lost]
            if not failed:
                break
            # Someone wrote these users since the snapshot: re-read them, read the log on, retry.
            for i, blob in zip(failed, online.get_blobs(namespace, [keys[i] for i in failed])):
                snapshot[i] = blob
            touched = apply_log()
            encoded = codec.encode(states)
            todo = sorted(set(failed) | touched)
        else:
            raise ConflictError(f"model {model!r}: user states kept changing during the replay",
                                hint="pause feedback for the model and run the replay again")
    return ReplayResult(model, version, total, len(keys), changed, mismatched, write, restored, diff)


def _concat(a: StateBatch, b: StateBatch) -> StateBatch:
    return StateBatch(*(np.concatenate((x, y)) for x, y in zip(
        (a.w, a.A_inv, a.xtx, a.xty, a.n, a.version), (b.w, b.A_inv, b.xtx, b.xty, b.n, b.version))))


def _get_blobs(online: Any, namespace: str, keys: list[bytes]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for start in range(0, len(keys), 5_000):
        out += online.get_blobs(namespace, keys[start : start + 5_000])
    return out


# -- monitoring from the log --------------------------------------------------------------------


@dataclass(frozen=True)
class LossSummary:
    """Mean loss of the personalised and the average-user predictions over ``count`` rows."""

    count: int
    personalised: float | None
    average_user: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "personalised": self.personalised, "average_user": self.average_user}


@dataclass(frozen=True)
class ModelStatus:
    model: str
    version: int
    loss_name: str
    training_loss: float | None
    overall: LossSummary
    slices: dict[str, LossSummary]  # new_users, known_users, {slice_column}={value}
    recent: LossSummary  # the last ``window`` observations
    window: int
    stale_margin: float
    min_observations: int
    stale: bool
    auto_retrain: bool

    @property
    def threshold(self) -> float | None:
        return None if self.training_loss is None else self.training_loss * (1.0 + self.stale_margin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "loss_name": self.loss_name,
            "training_loss": self.training_loss, "threshold": self.threshold,
            "overall": self.overall.to_dict(), "recent": self.recent.to_dict(), "window": self.window,
            "slices": {k: v.to_dict() for k, v in self.slices.items()},
            "stale_margin": self.stale_margin, "min_observations": self.min_observations,
            "stale": self.stale, "auto_retrain": self.auto_retrain,
        }


def model_status(
    store: FeatureStore,
    model: str,
    version: int | None = None,
    *,
    window: int = 1_000,
    min_observations: int = 100,
) -> ModelStatus:
    """Feedback quality of a model version, aggregated from the log with SQL (so it is exact
    whatever process received the feedback).

    Stale when the personalised loss over the last ``window`` observations is above the
    version's training loss × (1 + ``stale_margin``) and at least ``min_observations`` count.

    >>> model_status(store, "taste").stale  # doctest: +SKIP
    False
    """
    import sqlalchemy as sa

    from registry import tables as t

    spec = store.definitions().get("model", model)
    if version is None:
        version = store.model_versions.active_versions().get(model)
        if version is None:
            raise NotFoundError(f"model {model!r} has no active version",
                                hint=f"train it with `featurestore train {model} --labels FILE`")
    recorded = store.model_versions.get(model, version)
    logistic = recorded.metrics.get("objective", spec.objective) == "logistic"
    f = t.feedback
    where = (f.c.project == store.project, f.c.model == model, f.c.model_version == version,
             f.c.prediction.is_not(None), f.c.baseline.is_not(None))

    def loss(column: Any, label: Any) -> Any:
        if not logistic:
            return (label - column) * (label - column)
        eps = float(np.finfo(np.float64).eps)
        p = sa.case((column < eps, eps), (column > 1.0 - eps, 1.0 - eps), else_=column)
        return -(label * sa.func.ln(p) + (1.0 - label) * sa.func.ln(1.0 - p))

    with store.registry.engine.connect() as conn:
        by_slice = conn.execute(
            sa.select(f.c.slice, sa.func.count(), sa.func.sum(loss(f.c.prediction, f.c.label)),
                      sa.func.sum(loss(f.c.baseline, f.c.label)))
            .where(*where).group_by(f.c.slice)
        ).all()
        recent_rows = (
            sa.select(f.c.label, f.c.prediction, f.c.baseline).where(*where)
            .order_by(f.c.seq.desc()).limit(window).subquery()
        )
        r = recent_rows.c
        recent = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(loss(r.prediction, r.label)), sa.func.sum(loss(r.baseline, r.label)))
        ).one()
    totals: dict[str, list[float]] = {}
    overall = [0, 0.0, 0.0]
    for text, count, personal, average in by_slice:
        cohort, value = decode_slice(text)
        names = [f"{cohort}_users"] if cohort else []
        if value is not None and spec.slice_column:
            names.append(f"{spec.slice_column}={value}")
        for name in names:
            acc = totals.setdefault(name, [0, 0.0, 0.0])
            acc[0] += count
            acc[1] += personal or 0.0
            acc[2] += average or 0.0
        overall[0] += count
        overall[1] += personal or 0.0
        overall[2] += average or 0.0
    training = recorded.metrics.get("loss")
    recent_summary = _summary(recent[0], recent[1], recent[2])
    stale = (
        training is not None
        and recent_summary.count >= min_observations
        and recent_summary.personalised is not None
        and recent_summary.personalised > float(training) * (1.0 + spec.stale_margin)
    )
    return ModelStatus(
        model=model,
        version=version,
        loss_name="log_loss" if logistic else "squared_error",
        training_loss=None if training is None else float(training),
        overall=_summary(*overall),
        slices={k: _summary(*v) for k, v in sorted(totals.items())},
        recent=recent_summary,
        window=window,
        stale_margin=spec.stale_margin,
        min_observations=min_observations,
        stale=bool(stale),
        auto_retrain=spec.auto_retrain,
    )


def _summary(count: Any, personal: Any, average: Any) -> LossSummary:
    count = int(count or 0)
    if not count:
        return LossSummary(0, None, None)
    return LossSummary(count, float(personal or 0.0) / count, float(average or 0.0) / count)

