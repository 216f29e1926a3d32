"""Feature drift weighted by how much the model uses each feature.

For one model version, the x vectors it served (the prediction log keeps every candidate's
exact x) in a window are compared, coordinate by coordinate, with a reference set of x vectors:
the distance is the two-sample Kolmogorov-Smirnov statistic (the largest gap between the two
empirical distribution functions, 0 = same, 1 = disjoint; no binning, bounded, any scale).
Each distance is multiplied by |w_avg[j]|, the average user's weight on that coordinate (from
the version's artifact manifest): drift in a coordinate the model ignores costs nothing.

The reference: the training rows' x are not stored, so by default it is what the same version
served in its first day (from its creation): the closest logged stand-in for the training
distribution, since the features then are the ones it was trained with. ``reference=`` takes
any window instead (``START..END``, or a duration meaning the same length just before
``window``: e.g. ``7d``).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from featurestore.evaluation.query import context_of
from featurestore.evaluation.window import Window
from registry.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from featurestore.context import ServiceContext

MAX_PREDICTIONS = 5_000  # newest predictions read per window (each holds every candidate's x)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic of two 1-D samples (NaN when one is empty).

    >>> ks_distance(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    1.0
    """
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if not len(a) or not len(b):
        return float("nan")
    points = np.concatenate([a, b])
    fa = np.searchsorted(a, points, side="right") / len(a)
    fb = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def served_vectors(context: ServiceContext, model: str, version: int, window: Window,
                   limit: int = MAX_PREDICTIONS) -> np.ndarray:
    """The x of every scored candidate of the newest ``limit`` predictions of a version in a
    window (rows of NaN, unscored items, dropped)."""
    import sqlalchemy as sa

    from registry import tables as t

    p = t.predictions
    query = sa.select(p.c.features, p.c.dimension).where(
        p.c.project == context.project, p.c.model == model, p.c.model_version == version
    )
    if window.start is not None:
        query = query.where(p.c.created_at >= window.start)
    if window.end is not None:
        query = query.where(p.c.created_at < window.end)
    with context.engine.connect() as conn:
        rows = conn.execute(query.order_by(p.c.created_at.desc()).limit(limit)).all()
    blocks = [np.frombuffer(blob, dtype="<f8").reshape(-1, dim) for blob, dim in rows if dim]
    if not blocks:
        return np.zeros((0, 0))
    x = np.concatenate(blocks)
    return x[~np.isnan(x).any(axis=1)]


def feature_drift(
    store_or_context: Any,
    model: str,
    *,
    window: str | Window = "1h",
    reference: str | Window | None = None,
    version: int | None = None,
) -> pa.Table:
    """Per coordinate of x: the KS distance between the vectors served in ``window`` and the
    reference, |w_avg| and their product, most drifted (by weighted distance) first. The
    table's metadata holds ``weighted_drift``: sum(distance x |w|) / sum(|w|) over the
    coordinates with both samples.

    >>> feature_drift(store, "taste", window="1h").to_pylist()[0]  # doctest: +SKIP
    {'feature': 'item_embedding:factors[3]', 'distance': 0.41, 'weight': 0.9, 'weighted': 0.37, ...}
    """
    context = context_of(store_or_context)
    context.definitions().get("model", model)
    if version is None:
        version = context.model_versions.active_versions().get(model)
        if version is None:
            raise NotFoundError(f"model {model!r} has no active version",
                                hint=f"train it with `featurestore train {model} --labels FILE`")
    recorded = context.model_versions.get(model, version)
    manifest_path = Path(recorded.artifact) / "manifest.json"
    if not manifest_path.is_file():
        raise NotFoundError(f"no artifact manifest for model {model!r} version {version} at {manifest_path}",
                            hint="train the model again to recreate it")
    manifest = json.loads(manifest_path.read_text())
    from featurestore.models.state_store import ModelLayout

    columns = ModelLayout.from_dict(manifest["layout"]).columns()
    w_avg = np.asarray(manifest["average"], dtype=np.float64)
    current_window = Window.parse(window)
    if reference is None:
        ref_window = Window(recorded.created_at, recorded.created_at + timedelta(days=1))
        ref_label = "first day served"
    elif isinstance(reference, str) and ".." not in reference and reference not in ("", "all"):
        length = Window.parse(reference)
        assert length.start is not None and length.end is not None
        if current_window.start is None:
            raise ConfigError("a reference duration needs a window with a start", hint="pass window=1h or START..END")
        try:
            ref_window = Window(current_window.start - (length.end - length.start), current_window.start)
        except OverflowError:
            raise ConfigError(f"bad reference {reference!r}: it starts before year 1",
                              hint="pass a shorter duration or START..END") from None
        ref_label = f"{reference} before the window"
    else:
        ref_window = Window.parse(reference)
        ref_label = ref_window.label
    current = served_vectors(context, model, version, current_window)
    ref = served_vectors(context, model, version, ref_window)
    rows = []
    for j, name in enumerate(columns):
        cur_j = current[:, j] if current.shape[0] and current.shape[1] == len(columns) else np.zeros(0)
        ref_j = ref[:, j] if ref.shape[0] and ref.shape[1] == len(columns) else np.zeros(0)
        d = ks_distance(ref_j, cur_j)
        weight = abs(float(w_avg[j])) if j < len(w_avg) else 0.0
        rows.append({
            "feature": name, "distance": None if np.isnan(d) else d, "weight": weight,
            "weighted": None if np.isnan(d) else d * weight,
            "mean_reference": float(ref_j.mean()) if len(ref_j) else None,
            "mean_window": float(cur_j.mean()) if len(cur_j) else None,
        })
    rows.sort(key=lambda r: (r["weighted"] is None, -(r["weighted"] or 0.0)))
    known = [r for r in rows if r["weighted"] is not None]
    total_w = sum(r["weight"] for r in known)
    score = sum(r["weighted"] for r in known) / total_w if total_w else None
    schema = pa.schema([
        ("feature", pa.string()), ("distance", pa.float64()), ("weight", pa.float64()), ("weighted", pa.float64()),
        ("mean_reference", pa.float64()), ("mean_window", pa.float64()),
    ])
    meta = {
        "model": model, "version": str(version), "window": current_window.label, "reference": ref_label,
        "reference_window": ref_window.label, "window_vectors": str(current.shape[0]),
        "reference_vectors": str(ref.shape[0]), "weighted_drift": "" if score is None else repr(score),
    }
    return pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(
        {k.encode(): v.encode() for k, v in meta.items()}
    )
