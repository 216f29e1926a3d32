"""``FeedbackService.submit``: check, log durably, then learn (behind ``POST /feedback`` and
``FeatureStore.feedback``). Per request:

1. **Check** every observation with the shared input rules (``featurestore.inputs``) against the
   model's plan (``models.plan``, the same one ``/predict`` uses) and find its x: the exact row
   that was served when it names a ``prediction_id`` (all ids of a request are looked up in one
   query), otherwise the item's current features, assembled as ``predict`` does. A bad
   observation is rejected with the field and the reason; the others go on.
2. **Score before learning**: one ``get_blobs`` for the users' states; the personalised prediction
   w·x and the average user's w_avg·x are what the user would have got (the monitoring numbers).
3. **Log**: one ``FeedbackLog.append`` (committed) for the whole request. Nothing is acknowledged
   before it; a ``feedback_id`` seen before is a duplicate and changes nothing after this step.
4. **Learn and swap**: the new observations update their users' states (``StateBatch.learn``:
   Sherman–Morrison for squared error, the online Newton step for logistic, vectorised across
   users), then ``compare_and_swap_blobs`` writes them *only if each user's stored bytes are still
   the ones read in step 2*. Users whose swap failed (another process wrote first) are re-read,
   re-learned from their fresh state and swapped again, so no concurrent update is ever lost.
5. **Mark applied**: the swapped observations' log rows lose their ``pending`` flag (queued,
   cleared in one statement every 0.1 s by the log's background thread). Nothing
   after step 3 may fail the request: when the state store fails, or the swaps keep losing for
   ``APPLY_DEADLINE_SECONDS``, the rest stays pending (counted as ``deferred``) and the servers'
   catch-up (``feedback.catch_up``) applies it from the log. The deadline is what makes the
   catch-up safe: a process never swaps an observation in after it, so an old pending row is
   never in flight.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.feedback.log import FeedbackLog, Observation
from featurestore.feedback.monitoring import KNOWN, NEW, FeedbackCounters, encode_slice
from featurestore.feedback.types import (
    MAX_BATCH,
    MAX_FEEDBACK_ID,
    MAX_PREDICTION_ID,
    MAX_SLICE,
    FeedbackInput,
    FeedbackResult,
    Rejection,
)
from featurestore.inputs import key_text, text_value, timestamp_value
from featurestore.models.linear import StateBatch, learn_one, local_rows, sigmoid
from featurestore.models.state_codec import BatchStateCodec
from registry.errors import FeatureStoreError, InputError, UserError

_REUSED_HINT = "give every observation its own feedback_id; a retry must repeat the observation exactly"

logger = logging.getLogger(__name__)

#: A process stops retrying a contended swap this long after it received the observation; and
#: sends no swap at all after ``LAST_SWAP_SECONDS`` (a commit that slow). The catch-up
#: (``feedback.catch_up``) waits far beyond both (300 s: a slow last swap, up to 90 s of Redis
#: timeouts and retries, plus clock skew) before it treats a pending row as cut off.
APPLY_DEADLINE_SECONDS = 5.0
LAST_SWAP_SECONDS = 60.0

if TYPE_CHECKING:
    from featurestore.context import ServiceContext
    from featurestore.models.plan import ModelPlan, Planner
    from featurestore.models.prediction_log import PredictionLog, PredictionRecord


@dataclass
class _Group:
    """The observations of one model in a request that passed the first checks."""

    plan: ModelPlan
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


@dataclass(eq=False)
class _Stage:
    """One model's accepted observations of a request, scored and ready to log and learn."""

    group: _Group
    indices: list[int]  # each observation's index in the request
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


class FeedbackService:
    """Validates, logs and learns observations; shared by the server and the SDK.

    It takes the narrow things it uses: the context (online store, registry database), the
    model planner shared with the predictor in the process, and the prediction log (to find
    the x that was served).

    >>> service = FeedbackService(store.context, store.predictor.planner, store.predictor.log)  # doctest: +SKIP
    >>> service.submit([FeedbackInput("taste", {"user_id": 7}, {"item_id": 3}, 4.0, "fb-1")]).new  # doctest: +SKIP
    1
    """

    def __init__(
        self,
        context: ServiceContext,
        planner: Planner,
        predictions: PredictionLog,
        *,
        max_attempts: int = 1_000,
        prediction_wait_seconds: float = 0.1,
        apply_deadline_seconds: float = APPLY_DEADLINE_SECONDS,
    ) -> None:
        self.context = context
        self.planner = planner
        self.predictions = predictions
        self.log = FeedbackLog(context.engine, context.project)
        self.max_attempts = max_attempts
        self.apply_deadline_seconds = apply_deadline_seconds
        # A prediction made by another process is in the table within the prediction log's
        # flush interval (~50 ms): an id not found is looked for until this much time passed.
        self.prediction_wait_seconds = prediction_wait_seconds
        self.counters = FeedbackCounters()

    @property
    def cas_retries(self) -> int:
        return self.counters.cas_retries

    def counts(self) -> dict[tuple[str, str], int]:
        """See ``FeedbackCounters.counts``."""
        return self.counters.counts()

    def losses(self) -> dict[tuple[str, int, str, str], Any]:
        """See ``FeedbackCounters.losses``."""
        return self.counters.losses()

    def note_rejected(self, model: str, amount: int = 1) -> None:
        """Count observations rejected before they reached ``submit`` (e.g. a body that did not
        validate), so ``counts`` covers every observation received."""
        self.counters.count(model, "rejected", amount)

    # -- the request path -------------------------------------------------------------------------
    def submit(self, observations: Sequence[FeedbackInput]) -> FeedbackResult:
        """Check, log (durably) and learn a batch of observations; see the module docstring."""
        obs = list(observations)
        if not obs:
            raise UserError("no observations given", hint="send at least one observation")
        if len(obs) > MAX_BATCH:
            raise UserError(f"{len(obs):,} observations in one request", hint=f"send at most {MAX_BATCH:,} per request")
        received = datetime.now(timezone.utc)
        # The apply deadline runs from before the log append: the row's received_at is stamped
        # then, and the catch-up's wait is measured from it (a slow commit eats into both).
        started = time.monotonic()
        deadline = started + self.apply_deadline_seconds
        last_swap = started + LAST_SWAP_SECONDS  # see ``_learn``
        rejected: list[Rejection] = []
        groups: dict[str, _Group] = {}
        defs = self.context.watcher.snapshot.definitions
        pids = [o.prediction_id for o in obs if isinstance(o, FeedbackInput) and isinstance(o.prediction_id, str)]
        # Only well-formed ids reach the query (a NUL would be an error of the database itself).
        ids = [pid for pid in dict.fromkeys(pids) if 0 < len(pid) <= MAX_PREDICTION_ID and "\x00" not in pid]
        records = self.predictions.get_many(ids, wait_seconds=self.prediction_wait_seconds) if ids else {}
        positions: dict[str, dict[str, int]] = {}
        for i, o in enumerate(obs):
            try:
                self._prepare(o, groups, records, positions, received)
            except InputError as exc:
                rejected.append(Rejection(i, exc.field, exc.reason, exc.hint))
            else:
                groups[o.model].index.append(i)

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
        staged = [stage for group, X, keep in ready if (stage := self._stage(group, X, keep, rejected)) is not None]
        to_log = [o for stage in staged for o in stage.observations]
        seqs = self.log.append_seqs(to_log) if to_log else []
        flags = [seq is not None for seq in seqs]
        try:
            reused = self._reused(to_log, flags)
        except Exception as exc:  # noqa: BLE001 - after the commit nothing may fail the request
            # Cannot tell a retry from a reused id now: both were not recorded, so answering
            # "duplicate" loses nothing (the first observation stays the logged one).
            logger.warning("could not check %d already-logged feedback id(s): %s", flags.count(False), exc)
            reused = {}

        new = duplicates = retries = deferred = 0
        offset = 0
        counters = self.counters
        applied: list[int] = []
        for stage in staged:
            n = len(stage.observations)
            fresh = np.asarray(flags[offset : offset + n], dtype=bool)
            for k in range(n):
                why = reused.get(offset + k)
                if why is not None:
                    rejected.append(Rejection(stage.indices[k], "feedback_id", why, _REUSED_HINT, status=409))
            conflicts = sum(1 for k in range(n) if offset + k in reused)
            done, tries = self._apply(stage, fresh, deadline, last_swap)
            retries += tries
            deferred += int((fresh & ~done).sum())
            applied += [seqs[offset + k] for k in np.flatnonzero(fresh & done).tolist()]  # type: ignore[misc]
            offset += n
            try:
                self._monitor(stage, fresh)
            except Exception as exc:  # noqa: BLE001 - monitoring must not fail a committed request
                logger.warning("model %r: feedback monitoring failed: %s", stage.group.plan.model, exc)
            n_new = int(fresh.sum())
            new += n_new
            duplicates += n - n_new - conflicts
            counters.count(stage.group.plan.model, "new", n_new)
            counters.count(stage.group.plan.model, "duplicate", len(fresh) - n_new)
        for r in rejected:
            model = getattr(obs[r.index], "model", None)
            counters.count(model if isinstance(model, str) and model in defs.models else "(unknown)", "rejected", 1)
        rejected.sort(key=lambda r: r.index)
        counters.add_retries(retries)
        counters.count_deferred(deferred)
        # Queued: the request does not wait for it, and a lost mark costs only an idempotent rebuild.
        self.log.mark_applied(applied, wait=False)
        return FeedbackResult(
            received=len(obs),
            new=new,
            duplicates=duplicates,
            rejected=tuple(rejected),
            model_versions={s.group.plan.model: s.group.plan.version for s in staged},
            cas_retries=retries,
            deferred=deferred,
        )

    # -- steps ------------------------------------------------------------------------------------
    def _reused(self, logged: list[Observation], fresh: list[bool]) -> dict[int, str]:
        """Positions of ``logged`` whose feedback_id was already logged (before, or earlier in
        this request) with another model, user, item or label: a reused id, not a retry."""
        stale = [o.feedback_id for o, f in zip(logged, fresh) if not f]
        if not stale:
            return {}
        stored = self.log.logged(stale)
        out: dict[int, str] = {}
        for k, (o, f) in enumerate(zip(logged, fresh)):
            first = stored.get(o.feedback_id)
            if f or first is None:
                continue
            mine = (o.model, o.user_key, o.item_key, float(o.label))
            if mine != first:
                out[k] = (f"feedback_id {o.feedback_id!r} was already used for another observation "
                          f"(model {first[0]!r}, user {first[1]!r}, item {first[2]!r}, label {first[3]:g}); "
                          "this one was not recorded")
        return out

    def _prepare(
        self,
        o: Any,
        groups: dict[str, _Group],
        records: Mapping[str, PredictionRecord | None],
        positions: dict[str, dict[str, int]],
        received: datetime,
    ) -> None:
        """Check one observation and add it to its model's group (the caller adds its index)."""
        if not isinstance(o, FeedbackInput):
            raise InputError("(observation)", f"expected a FeedbackInput, got {type(o).__name__}")
        if not isinstance(o.model, str):
            raise InputError("model", "must be a model name")
        group = groups.get(o.model)
        if group is None:
            try:
                plan = self.planner.plan(o.model)
            except UserError as exc:
                raise InputError("model", exc.message, hint=exc.hint) from None
            group = groups[o.model] = _Group(plan)
        plan = group.plan
        fid = text_value(o.feedback_id, "feedback_id", MAX_FEEDBACK_ID,
                         hint="use an id unique per observation, e.g. a uuid; retries must reuse it")
        label = plan.label(o.label)
        user = plan.user_key(o.user)
        item = plan.item_key(o.item)
        ts = timestamp_value(o.ts, "ts", received)
        sl = None if o.slice is None else text_value(o.slice, "slice", MAX_SLICE)
        pid = None if o.prediction_id is None else text_value(o.prediction_id, "prediction_id", MAX_PREDICTION_ID)
        row: np.ndarray | None = None
        request = np.empty(0)
        if pid is not None:
            row = self._served_row(pid, records.get(pid), o.model, user, item, plan, positions)
        if row is None:
            request = plan.request_vector(o.request_features)
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
        plan: ModelPlan,
        positions: dict[str, dict[str, int]],
    ) -> np.ndarray | None:
        """The x served for ``item`` in prediction ``pid``; None when the prediction was made by
        a version with another layout (its x does not fit the active version's weights)."""
        if record is None:
            raise InputError(
                "prediction_id", f"unknown prediction id {pid!r}",
                hint="pass the prediction_id that /predict returned for this user (predictions are logged within ~50 ms)",
            )
        if record.model != model:
            raise InputError("prediction_id", f"prediction {pid} was made by model {record.model!r}, not {model!r}")
        user_text = key_text(user)
        if record.user_key != user_text:
            raise InputError("user", f"prediction {pid} was made for user {record.user_key!r}, not {user_text!r}",
                             hint="send the user the prediction was made for")
        index = positions.get(pid)
        if index is None:
            index = positions[pid] = {}
            for j, text in enumerate(record.items):
                index.setdefault(text, j)
        at = index.get(key_text(item))
        if at is None:
            raise InputError("item", f"item {key_text(item)!r} was not a candidate of prediction {pid}",
                             hint="send feedback for an item that was in the prediction, or omit prediction_id")
        x = np.asarray(record.features[at], dtype=np.float64)
        if not np.isfinite(x).all():
            raise InputError("item", f"item {key_text(item)!r} was not scored in prediction {pid} (missing features)",
                             hint="an item that could not be scored cannot be learned from")
        if record.model_version == plan.version:
            return x
        other = self.planner.layout(model, record.model_version)
        if other is not None and other.columns() == plan.layout.columns():
            return x  # same columns: the served x means the same to the active version
        return None

    def _assemble(self, group: _Group) -> tuple[np.ndarray, dict[int, tuple[str, str, str | None]]]:
        """x of every observation of the group, (m, d); and the ones that cannot be learned."""
        plan = group.plan
        m, d = len(group.index), plan.layout.d
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
        rows = self.planner.cache.lookup(plan.reads(items, users), uncached=plan.user_views)
        request = np.stack([group.request[j] for j in need]) if plan.layout.request else np.empty(0)
        Z = plan.assemble(rows, len(need), request)
        missing = plan.missing(rows, time.time_ns() // 1000)
        # An item its feature job has not learned yet: the average item, as /predict scores it;
        # the observation is logged, and the next retrain learns the item from it.
        plan.fill_prior(Z, {v: m[0] for v, m in missing.items() if v in plan.prior_views})
        for view, (absent, expired) in missing.items():
            what = "item" if view in plan.item_views else "user"
            if view in plan.prior_views and plan.item_prior is not None:
                absent = np.zeros_like(absent)
            for k in np.flatnonzero(absent | expired).tolist():
                status = "not_found" if absent[k] else "expired"
                current = "current " if status == "expired" else ""
                reason = f"missing features: view {view!r} has no {current}value for this {what} ({status})"
                hint = f"materialize {view!r}, or send the prediction_id of a prediction that scored it"
                bad.setdefault(need[k], (what, reason, hint))
        for k in np.flatnonzero(np.isnan(Z).any(axis=1)).tolist():
            bad.setdefault(need[k], ("item", "missing features: a feature value of this item or user is null",
                                     "materialize the model's views, or send a prediction_id"))
        X[need] = Z
        return X, bad

    def _stage(self, group: _Group, X: np.ndarray, keep: np.ndarray, rejected: list[Rejection]) -> _Stage | None:
        """Score the kept observations with their users' states; None when none is left.

        An observation whose prediction, loss or update would not be finite (feature values so
        large they overflow) is rejected here, before anything is logged: nothing may fail, or
        poison a state, after the commit."""
        plan = group.plan
        layout = plan.layout
        sel = np.flatnonzero(keep)
        users = [group.users[j] for j in sel.tolist()]
        X_all, X = X, X[sel]
        y = np.asarray([group.labels[j] for j in sel.tolist()], dtype=np.float64)
        keys, rows = _distinct(users)
        states = plan.states  # ModelStateStore: layout and average already loaded by the plan
        blobs = self.context.online_store.get_blobs(states.namespace, keys)
        w_avg = states.average()
        batch, stored = BatchStateCodec.of(layout.d).decode(blobs, w_avg, layout.l2)
        known = stored & (batch.n - batch.version > 0)
        with np.errstate(over="ignore", invalid="ignore"):
            personal = np.einsum("md,md->m", batch.w[rows], X)
            average = X @ w_avg
            spread = np.einsum("md,mde,me->m", X, batch.A_inv[rows], X)  # the update's denominator
            finite = np.isfinite(personal) & np.isfinite(average) & np.isfinite(spread)
            finite &= np.isfinite((y - personal) ** 2) & np.isfinite((y - average) ** 2)
        if not finite.all():
            keep = keep.copy()
            for k in np.flatnonzero(~finite).tolist():
                j = int(sel[k])
                keep[j] = False
                field, what = _blame(layout, X[k])
                rejected.append(Rejection(group.index[j], field, "cannot be learned: with these feature values "
                                          "the prediction or its update is not a finite number",
                                          f"check {what} for huge numbers"))
            return self._stage(group, X_all, keep, rejected) if keep.any() else None
        if layout.objective == "logistic":
            personal, average = sigmoid(personal), sigmoid(average)
        else:  # scored as /predict serves them: clipped to the label range
            personal, average = plan.clipped(personal), plan.clipped(average)
        cohorts = np.where(known[rows], KNOWN, NEW)
        observations = [
            Observation(
                feedback_id=group.ids[j],
                model=plan.model,
                model_version=plan.version,
                user_key=key_text(users[k]),
                item_key=key_text(group.items[j]),
                label=y[k],
                features=X[k],
                event_ts=group.ts[j],
                prediction_id=group.pids[j],
                prediction=float(personal[k]),
                baseline=float(average[k]),
                slice=encode_slice(str(cohorts[k]), group.slices[j]),
            )
            for k, j in enumerate(sel.tolist())
        ]
        indices = [group.index[j] for j in sel.tolist()]
        return _Stage(group, indices, keys, rows, blobs, batch, X, y, personal, average, cohorts, observations)

    def _apply(self, stage: _Stage, fresh: np.ndarray, deadline: float, last_swap: float) -> tuple[np.ndarray, int]:
        """Learn the new observations of a stage after the commit, never raising: which of them
        are in the online state now, and how many retries it took."""
        done = np.zeros(len(fresh), dtype=bool)
        try:
            lost, retries = self._learn(stage, fresh, deadline, last_swap)
        except FeatureStoreError as exc:
            logger.warning(
                "model %r: %d logged observation(s) left to the catch-up: %s",
                stage.group.plan.model, int(fresh.sum()), exc.message,
            )
            return done, 0
        done = fresh.copy()
        if lost:
            done &= ~np.isin(stage.rows, np.fromiter(lost, np.intp, len(lost)))
        return done, retries

    def _learn(
        self, stage: _Stage, fresh: np.ndarray, deadline: float, last_swap: float
    ) -> tuple[set[int], int]:
        """Learn the new observations and swap the states in: the users (stage rows) whose swap
        did not land before ``deadline``, and how many retries it took."""
        sel = np.flatnonzero(fresh)
        if not sel.size:
            return set(), 0
        plan = stage.group.plan
        layout = plan.layout
        namespace = plan.states.namespace
        online = self.context.online_store
        codec = BatchStateCodec.of(layout.d)
        rows, X, y = stage.rows[sel], stage.X[sel], stage.y[sel]
        current = stage.batch
        expected = list(stage.blobs)
        todo = np.unique(rows)
        retries = 0
        while True:
            if time.monotonic() >= last_swap:
                # Even a first swap is not sent this late (a very slow commit): the catch-up,
                # which waits CATCH_UP_AFTER_SECONDS from receipt, may be rebuilding the user.
                return self._give_up(plan.model, todo, retries)
            mask = np.isin(rows, todo) if retries else np.ones(len(rows), bool)
            users, local = local_rows(rows[mask])
            # Usually every user of the request, in order: learn on them without another copy.
            whole = len(users) == len(current) and bool((users == np.arange(len(users))).all())
            sub = current if whole else current.take(users)
            encoded = learn_encode(codec, sub, local, X[mask], y[mask], layout.objective)
            keys = [stage.keys[u] for u in users.tolist()]
            failed = online.compare_and_swap_blobs(
                namespace, {key: (expected[u], blob) for key, u, blob in zip(keys, users.tolist(), encoded)}
            )
            if not failed:
                return set(), retries
            lost = set(failed)
            todo = np.asarray([u for u, key in zip(users.tolist(), keys) if key in lost], dtype=np.intp)
            retries += 1
            if retries >= self.max_attempts or time.monotonic() >= deadline:
                return self._give_up(plan.model, todo, retries)
            fresh_blobs = online.get_blobs(namespace, [stage.keys[u] for u in todo.tolist()])
            if time.monotonic() >= deadline:  # the re-read itself can be slow: never swap late
                return self._give_up(plan.model, todo, retries)
            for u, blob in zip(todo.tolist(), fresh_blobs):
                expected[u] = blob
            reread, _ = codec.decode(fresh_blobs, plan.states.average(), layout.l2)
            current.put(todo, reread)
            if retries > 2:  # two writers racing for one user: let the other finish
                time.sleep(random.random() * min(0.002 * retries, 0.05))

    @staticmethod
    def _give_up(model: str, todo: np.ndarray, retries: int) -> tuple[set[int], int]:
        logger.warning("model %r: the states of %d user(s) kept changing under %d attempts; their "
                       "observations are left to the catch-up", model, len(todo), retries)
        return set(todo.tolist()), retries

    def _monitor(self, stage: _Stage, fresh: np.ndarray) -> None:
        sel = np.flatnonzero(fresh)
        plan = stage.group.plan
        self.counters.observe(
            plan.model, plan.version, plan.layout.objective, plan.spec.slice_column,
            stage.y[sel], stage.personal[sel], stage.average[sel], stage.cohorts[sel],
            [stage.observations[k].slice for k in sel.tolist()],
        )


def learn_encode(
    codec: BatchStateCodec, batch: StateBatch, rows: np.ndarray, X: np.ndarray, y: np.ndarray, objective: Any
) -> list[bytes]:
    """The update itself: learn the observations (in order per user), encode the new states.
    One observation takes ``learn_one``, ten times cheaper than a vectorised round of one."""
    if len(y) != 1:
        return codec.encode(batch.learn(rows, X, y, objective))
    return [codec.encode_one(learn_one(batch.first(), X[0], float(y[0]), objective))]


def _blame(layout: Any, x: np.ndarray) -> tuple[str, str]:
    """The field to name for an observation whose x overflows: its largest coordinate's source
    (a request feature by name, else the item's or the user's features)."""
    with np.errstate(invalid="ignore"):
        i = int(np.nanargmax(np.abs(x))) if np.isfinite(x).any() or np.isinf(x).any() else 0
    item, user = layout.item_width, layout.item_width + layout.user_width
    if user <= i < user + len(layout.request):
        name = layout.request[i - user]
        return f"request_features.{name}", f"request feature {name!r}"
    if item <= i < user:
        return "user", "the user's feature values"
    return "item", "the item's feature values"


def _distinct(keys: list[bytes]) -> tuple[list[bytes], np.ndarray]:
    slot: dict[bytes, int] = {}
    rows = np.fromiter((slot.setdefault(k, len(slot)) for k in keys), np.intp, len(keys))
    return list(slot), rows
