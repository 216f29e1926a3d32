"""Writes the example feature repository used by `featurestore init` and `featurestore demo`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from featurestore.example.data import RatingsConfig, generate_ratings
from registry.errors import UserError

CONFIG_YAML = """\
# The feature repository's settings. Environment variables override them
# (FEATURESTORE__REGISTRY, FEATURESTORE__ONLINE_STORE__TYPE, ...): see README.md.
project: {project}
registry: sqlite:///data/registry.db
definitions: [features]
offline_store:
  path: data/offline
online_store:
  type: embedded
  path: data/online.db
"""

ENTITIES_YAML = """\
# yaml-language-server: $schema=../schema.json
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
    description: A person who rates items.
  - name: item
    join_keys: [{name: item_id, dtype: int64}]
    description: Something a user can rate (a film).
"""

SOURCES_YAML = """\
# yaml-language-server: $schema=../schema.json
sources:
  - name: ratings
    type: parquet
    path: data/source/ratings/*.parquet
    timestamp_field: event_ts
    description: Every rating (1-5) a user gave an item.

  - name: item_factors
    type: parquet
    path: data/source/item_factors.parquet
    timestamp_field: event_ts
    created_timestamp_field: created_ts
    description: Learned item factors (the Velox theta), written by the feature job below.

  - name: user_daily
    type: duckdb
    # Relative paths resolve against the repository root.
    query: >
      select user_id, date_trunc('day', event_ts) + interval 1 day as event_ts,
             count(*)::bigint as ratings_1d, avg(rating) as mean_rating_1d
      from read_parquet('data/source/ratings/*.parquet') group by all
    timestamp_field: event_ts
    description: Per user and day, known at the end of the day.

  - name: item_daily
    type: duckdb
    query: >
      select item_id, date_trunc('day', event_ts) + interval 1 day as event_ts,
             count(*)::bigint as ratings_1d, avg(rating) as mean_rating_1d
      from read_parquet('data/source/ratings/*.parquet') group by all
    timestamp_field: event_ts
    description: Per item and day, known at the end of the day.
"""

VIEWS_YAML = """\
# yaml-language-server: $schema=../schema.json
feature_views:
  - name: item_embedding
    entities: [item]
    source: item_factors
    ttl: 0
    features:
      - {{name: factors, dtype: "float32[{factors}]", description: Latent item factors.}}
      - {{name: bias, dtype: float32, description: "The item's bias b_i (how much better it is rated than the mean)."}}
    description: f(item) of the per-user models, learned by the feature job item_factors.
    owner: ml-platform
    tags: {{tier: gold}}

  - name: item_popularity
    entities: [item]
    source: item_daily
    ttl: 90d
    features:
      - {{name: ratings_1d, dtype: int64, description: Ratings received that day.}}
      - {{name: mean_rating_1d, dtype: float64, description: Their mean.}}
    owner: ml-platform

  - name: user_activity
    entities: [user]
    source: user_daily
    ttl: 7d
    features:
      - {{name: ratings_1d, dtype: int64, description: Ratings given that day.}}
      - {{name: mean_rating_1d, dtype: float64, description: Their mean.}}
    owner: ml-platform

feature_services:
  - name: item_ranking
    features: [item_embedding:factors, item_popularity:mean_rating_1d]
    description: What the ranking model reads per candidate item.
"""

MODELS_YAML = """\
# yaml-language-server: $schema=../schema.json
feature_jobs:
  - name: item_factors
    type: als
    source: ratings
    user_column: user_id
    item_column: item_id
    rating_column: rating
    factors: {factors}
    l2: auto                 # chosen on each user's newest ratings
    seed: 0
    iterations: 10
    output: data/source/item_factors.parquet
    description: Factorises the ratings into item factors for item_embedding.

models:
  - name: taste
    user_entity: user
    item_entity: item
    features: [item_embedding:factors, item_embedding:bias]
    label: rating
    objective: squared_error
    l2: auto                 # chosen on each user's newest ratings
    description: Each user's taste as weights over the item factors, learned online.
"""

GITIGNORE = "data/\n"


def write_example_repo(
    path: Path,
    *,
    project: str = "demo",
    config: RatingsConfig | None = None,
    force: bool = False,
    holdout_from_day: float | None = None,
) -> dict[str, object]:
    """Create the example repository at ``path`` with generated data; returns a small summary.

    Refuses to write into a non-empty directory that is not already an example repository,
    unless ``force``; an existing example is regenerated in place (its data/ is replaced).
    """
    config = config or RatingsConfig()
    path = path.resolve()
    if path.exists() and any(path.iterdir()) and not (path / "featurestore.yaml").exists() and not force:
        raise UserError(
            f"{path} exists and is not empty",
            hint="choose a new directory, or pass --force to write the example into it",
        )
    (path / "features").mkdir(parents=True, exist_ok=True)
    files = {
        "featurestore.yaml": CONFIG_YAML.format(project=project),
        "features/entities.yaml": ENTITIES_YAML,
        "features/sources.yaml": SOURCES_YAML,
        "features/views.yaml": VIEWS_YAML.format(factors=config.factors),
        "features/models.yaml": MODELS_YAML.format(factors=config.factors),
        ".gitignore": GITIGNORE,
    }
    for name, text in files.items():
        (path / name).write_text(text)
    import json

    from registry.spec import definition_schema

    (path / "schema.json").write_text(json.dumps(definition_schema(), indent=2, sort_keys=True) + "\n")
    return {"path": str(path), **write_example_data(path, config, holdout_from_day)}


def write_example_data(path: Path, config: RatingsConfig, holdout_from_day: float | None = None) -> dict[str, object]:
    """Generate the source data: ratings split in monthly files, and initial item factors.

    With ``holdout_from_day``, ratings from that day on are not written to the source but to
    ``data/holdout/ratings.parquet``: the future that the demo streams through /feedback."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ratings = generate_ratings(config)
    table = ratings.to_arrow()
    held_out = 0
    if holdout_from_day is not None:
        cutoff = pa.scalar(config.start + timedelta(days=holdout_from_day), pa.timestamp("us", tz="UTC"))
        future = table.filter(pc.greater_equal(table["event_ts"], cutoff))
        table = table.filter(pc.less(table["event_ts"], cutoff))
        (path / "data" / "holdout").mkdir(parents=True, exist_ok=True)
        pq.write_table(future, path / "data" / "holdout" / "ratings.parquet")
        held_out = future.num_rows
    out = path / "data" / "source" / "ratings"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    months = pc.strftime(table["event_ts"], format="%Y-%m")
    for month in sorted(set(months.to_pylist())):
        part = table.filter(pc.equal(months, month))
        pq.write_table(part, out / f"ratings-{month}.parquet")
    # Until the feature job runs, the item factors are the generator's ground truth plus noise,
    # so every view can be materialized straight after `init`.
    rng = np.random.default_rng(config.seed + 1)
    factors = ratings.item_factors + rng.normal(0, 0.1, ratings.item_factors.shape).astype(np.float32)
    now = datetime.now(timezone.utc)
    item_table = pa.table(
        {
            "item_id": pa.array(np.arange(1, config.items + 1), pa.int64()),
            "factors": pa.FixedSizeListArray.from_arrays(
                pa.array(factors.reshape(-1), pa.float32()), config.factors
            ),
            "bias": pa.array(np.zeros(config.items), pa.float32()),  # the feature job learns them
            "event_ts": pa.array([config.start] * config.items, pa.timestamp("us", tz="UTC")),
            "created_ts": pa.array([now] * config.items, pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(item_table, path / "data" / "source" / "item_factors.parquet")
    return {
        "ratings": table.num_rows, "held_out": held_out, "users": config.users,
        "items": config.items, "days": config.days,
    }


def recent_start(days: int) -> datetime:
    """Midnight UTC ``days`` ago: generated data ends today, so ttl-bound views are fresh."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days)


def small_config() -> RatingsConfig:
    """The size `featurestore init` uses: enough to be realistic, quick to materialize."""
    return replace(RatingsConfig(), users=500, items=200, ratings=20_000, days=30, start=recent_start(30))
