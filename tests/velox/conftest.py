"""A small repository for the per-user models: item features in two views (a vector and a
scalar with a ttl), a user feature, three models. The online store is filled directly through
the codecs and training reads features through a stand-in for the point-in-time export, so
these tests need neither the materializer nor the export (test_end_to_end.py uses both)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.online.codec import ValueCodec, encode_entity_key
from featurestore.online.memory import MemoryOnlineStore

DEFS = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
  - name: item
    join_keys: [{name: item_id, dtype: int64}]
sources:
  - {name: src, type: parquet, path: data/x.parquet, timestamp_field: ts}
feature_views:
  - name: item_vec
    entities: [item]
    source: src
    features:
      - {name: vec, dtype: "float32[3]"}
  - name: item_pop
    entities: [item]
    source: src
    ttl: 1h
    features:
      - {name: pop, dtype: float64}
      - {name: label, dtype: string}
  - name: user_stats
    entities: [user]
    source: src
    ttl: 1h
    features:
      - {name: activity, dtype: float64}
models:
  - name: taste
    user_entity: user
    item_entity: item
    features: [item_vec:vec, item_pop:pop]
    label: rating
    l2: 2.0
  - name: explore
    user_entity: user
    item_entity: item
    features: [item_vec:vec]
    label: rating
    exploration: {type: linucb, alpha: 0.5}
  - name: ctx
    user_entity: user
    item_entity: item
    features: [item_vec:vec]
    user_features: [user_stats:activity]
    request_features: [hour]
    label: clicked
    objective: logistic
"""

NOW_US = time.time_ns() // 1000
ITEMS = list(range(1, 21))
USERS = [1, 2, 3]
VEC = ValueCodec(["float32[3]"])
POP = ValueCodec(["float64", "string"])
STATS = ValueCodec(["float64"])


def item_vec(item: int) -> list[float]:
    """Exactly representable in float32, so float32 storage loses nothing."""
    rng = np.random.default_rng(item)
    return (np.round(rng.normal(size=3) * 64) / 64).tolist()


def item_pop(item: int) -> float:
    return item / 8.0


def user_activity(user: int) -> float:
    return user / 4.0


def key(value: int) -> bytes:
    return encode_entity_key(["int64"], [value])


def make_store(
    root: Path, online: dict[str, Any], project: str, defs: str = DEFS, registry: str | None = None
) -> FeatureStore:
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(defs)
    (root / "featurestore.yaml").write_text(f"project: {project}\n")
    overrides: dict[str, Any] = {"online_store": online}
    if registry is not None:
        overrides["registry"] = registry
    store = FeatureStore(root, config_overrides=overrides, registry_refresh_seconds=0)
    store.apply()
    return store


def fill(store: FeatureStore, items: list[int] = ITEMS, *, pop_us: int = NOW_US) -> None:
    """item_vec for ``items``; item_pop for all but the last (-> not_found); user_stats."""
    online = store.online_store
    online.write_latest("item_vec", [(key(i), NOW_US, 0, VEC.encode_row([item_vec(i)])) for i in items])
    online.write_latest(
        "item_pop", [(key(i), pop_us, 0, POP.encode_row([item_pop(i), f"#{i}"])) for i in items[:-1]]
    )
    online.write_latest("user_stats", [(key(u), NOW_US, 0, STATS.encode_row([user_activity(u)])) for u in USERS])


def fake_export(store: FeatureStore, missing_items: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """Replace ``store.get_training_dataset`` with static features (every label sees the same
    values; items in ``missing_items`` have none). Returns the list of calls it received."""
    calls: list[dict[str, Any]] = []

    def export(entity_df: Any, features: list[str], **options: Any) -> pa.Table:
        calls.append({"features": list(features), **options})
        table = entity_df if isinstance(entity_df, pa.Table) else pa.Table.from_pandas(entity_df)
        items = table["item_id"].to_pylist()
        users = table["user_id"].to_pylist()
        columns: dict[str, Any] = {}
        for ref in features:
            view, feature = ref.split(":")
            name = f"{view}__{feature}"
            if ref == "item_vec:vec":
                columns[name] = pa.array(
                    [None if i in missing_items else item_vec(i) for i in items], pa.list_(pa.float32(), 3)
                )
            elif ref == "item_pop:pop":
                columns[name] = pa.array([None if i in missing_items else item_pop(i) for i in items], pa.float64())
            elif ref == "user_stats:activity":
                columns[name] = pa.array([user_activity(u) for u in users], pa.float64())
            else:  # pragma: no cover - the fixture only serves the models above
                raise AssertionError(ref)
        for name, column in columns.items():
            table = table.append_column(name, column)
        return table

    store.get_training_dataset = export  # type: ignore[method-assign]
    return calls


def item_x(item: int, model: str = "taste", user: int | None = None, hour: float | None = None) -> np.ndarray:
    """x of one item as each test model builds it."""
    if model == "taste":
        return np.array([*item_vec(item), item_pop(item), 1.0])
    if model == "explore":
        return np.array([*item_vec(item), 1.0])
    assert user is not None and hour is not None
    return np.array([*item_vec(item), user_activity(user), hour, 1.0])


def labels(seed: int = 0, n: int = 300, users: list[int] = USERS, items: list[int] = ITEMS[:-1]) -> pa.Table:
    """Ratings by users with their own true weights over x (taste's layout), plus ctx's
    columns (a click label and the request feature ``hour``)."""
    rng = np.random.default_rng(seed)
    user = rng.choice(users, n)
    item = rng.choice(items, n)
    true = {u: rng.normal(size=5) for u in users}
    X = np.stack([item_x(int(i)) for i in item])
    rating = np.einsum("nd,nd->n", X, np.stack([true[int(u)] for u in user])) + 0.1 * rng.normal(size=n)
    hour = rng.integers(0, 24, n).astype(np.float64)
    clicked = (rng.random(n) < 0.5).astype(np.int64)
    start = 1_700_000_000_000_000
    return pa.table(
        {
            "user_id": pa.array(user, pa.int64()),
            "item_id": pa.array(item, pa.int64()),
            "rating": pa.array(rating),
            "clicked": pa.array(clicked),
            "hour": pa.array(hour),
            "event_timestamp": pa.array(start + np.arange(n) * 60_000_000, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture(params=["memory", "embedded"])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    fs = make_store(tmp_path / "repo", {"type": request.param}, unique_project)
    fill(fs)
    yield fs
    if "predictor" in fs.__dict__:
        fs.predictor.close()
    fs.close()
    MemoryOnlineStore.drop_project(unique_project)
