"""Rebuilding a model version's online states from its artifact and the feedback log.

The online states are derived data: a version's trained states (its artifact) plus the log's
observations of that version, in log order, give every user's state exactly (up to the rounding
of another update order), so losing Redis loses nothing (docs/feedback.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.feedback.log import FeedbackLog
from featurestore.feedback.monitoring import active_version
from featurestore.models.artifacts import read_artifact, restore_version
from featurestore.models.linear import StateBatch, local_rows
from featurestore.models.state_codec import BatchStateCodec
from featurestore.models.state_store import state_namespace
from registry.errors import ConflictError

if TYPE_CHECKING:
    from featurestore.context import ServiceContext


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
    context: ServiceContext,
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

    >>> replay(store.context, "taste").changed  # doctest: +SKIP
    0
    """
    import sqlalchemy as sa

    from registry import tables as t

    context.definitions().get("model", model)
    if version is None:
        version = active_version(context, model)
    recorded = context.model_versions.get(model, version)
    restored = restore_version(context, model, version) if write else False
    _, layout, w_avg, base = read_artifact(Path(recorded.artifact))
    namespace = state_namespace(model, version)
    online = context.online_store
    codec = BatchStateCodec.of(layout.d)
    f = t.feedback
    with context.engine.connect() as conn:
        logged_users = conn.execute(
            sa.select(f.c.user_key).where(f.c.project == context.project, f.c.model == model,
                                          f.c.model_version == version).distinct()
        ).scalars().all()
    keys = list(dict.fromkeys([*base, *(u.encode("utf-8") for u in logged_users)]))
    slot = {k: i for i, k in enumerate(keys)}
    snapshot = _get_blobs(online, namespace, keys)  # before the log is read: see the docstring
    states, _ = codec.decode([None] * len(keys), w_avg, layout.l2)
    if base:
        states.put(np.fromiter((slot[k] for k in base), np.intp, len(base)), StateBatch.from_states(list(base.values())))
    log = FeedbackLog(context.engine, context.project)
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
                    states = states.concat(extra)
            idx = np.fromiter((slot[u] for u in users), np.intp, len(users))
            X = np.stack([r.features for r in rows])
            y = np.fromiter((r.label for r in rows), np.float64, len(rows))
            distinct, local = local_rows(idx)
            states.put(distinct, states.take(distinct).learn(local, X, y, objective))
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


def _get_blobs(online: Any, namespace: str, keys: list[bytes]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for start in range(0, len(keys), 5_000):
        out += online.get_blobs(namespace, keys[start : start + 5_000])
    return out
