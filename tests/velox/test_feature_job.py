"""Feature jobs: ALS item factors written as the Parquet source of the views they feed."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.cli.main import main
from featurestore.models.als import als_factorize
from featurestore.models.feature_job import read_interactions, run_feature_job, views_fed_by
from featurestore.sources import libpq_url
from registry.errors import ConfigError, DataError
from registry.spec import ParquetSource
from tests.velox.conftest import make_store

DEFS = """\
entities:
  - {name: user, join_keys: [{name: user_id, dtype: int64}]}
  - {name: item, join_keys: [{name: item_id, dtype: int64}]}
sources:
  - {name: interactions, type: parquet, path: data/interactions/*.parquet, timestamp_field: ts}
  - name: interactions_sql
    type: duckdb
    query: "select uid, iid, stars, ts from read_parquet('data/interactions/*.parquet') where stars > 0"
    timestamp_field: ts
  - {name: interactions_pg, type: postgres, table: interactions, timestamp_field: ts}
  - {name: factors, type: parquet, path: data/factors.parquet, timestamp_field: event_ts, created_timestamp_field: created_ts}
  - {name: other, type: parquet, path: data/other.parquet, timestamp_field: event_ts}
feature_views:
  - name: item_emb
    entities: [item]
    source: factors
    features: [{name: emb, dtype: "float32[4]"}]
  - name: item_emb_other
    entities: [item]
    source: other
    features: [{name: emb, dtype: "float32[3]"}]
feature_jobs:
  - {name: als, source: interactions, user_column: uid, item_column: iid, rating_column: stars, factors: 4, iterations: 5, output: data/factors.parquet}
  - {name: als_sql, source: interactions_sql, user_column: uid, item_column: iid, rating_column: stars, factors: 4, output: ./data/factors.parquet}
  - {name: als_pg, source: interactions_pg, user_column: uid, item_column: iid, rating_column: stars, factors: 4, iterations: 5, output: data/factors.parquet}
  - {name: orphan, source: interactions, user_column: uid, item_column: iid, rating_column: stars, output: data/nowhere.parquet}
  - {name: misfit, source: interactions, user_column: uid, item_column: iid, rating_column: stars, factors: 4, output: data/other.parquet}
  - {name: typo, source: interactions, user_column: user, item_column: iid, rating_column: stars, factors: 4, output: data/factors.parquet}
"""
START = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def repo(tmp_path: Path, unique_project: str) -> FeatureStore:
    store = make_store(tmp_path / "repo", {"type": "memory"}, unique_project, defs=DEFS)
    rng = np.random.default_rng(3)
    n = 400
    table = pa.table(
        {
            "uid": pa.array(rng.integers(1, 30, n), pa.int64()),
            "iid": pa.array(rng.integers(100, 140, n), pa.int64()),
            "stars": pa.array([None if i == 7 else float(v) for i, v in enumerate(rng.integers(1, 6, n))], pa.float64()),
            "ts": pa.array([START + timedelta(hours=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        }
    )
    (store.repo_path / "data" / "interactions").mkdir(parents=True)
    pq.write_table(table.slice(0, 200), store.repo_path / "data" / "interactions" / "a.parquet")
    pq.write_table(table.slice(200), store.repo_path / "data" / "interactions" / "b.parquet")
    yield store
    store.close()


def test_job_writes_item_factors_for_the_view_it_feeds(repo: FeatureStore) -> None:
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    result = run_feature_job(repo.config, repo.watcher, "als", now=now)
    assert result.views == ("item_emb",) and result.dropped == 1 and result.interactions == 399
    out = pq.read_table(repo.repo_path / "data" / "factors.parquet")
    assert out.column_names == ["item_id", "emb", "event_ts", "created_ts"]
    assert out.schema.field("emb").type == pa.list_(pa.float32(), 4)
    assert out.schema.field("item_id").type == pa.int64()
    assert set(out["event_ts"].to_pylist()) == {START + timedelta(hours=399)}  # the newest interaction
    assert set(out["created_ts"].to_pylist()) == {now}
    src = pa.concat_tables([pq.read_table(p) for p in sorted((repo.repo_path / "data" / "interactions").glob("*.parquet"))])
    src = src.filter(src["stars"].is_valid())
    expected = als_factorize(
        src["uid"].to_numpy(), src["iid"].to_numpy(), src["stars"].to_numpy(), factors=4, l2=0.1, iterations=5
    )
    assert out["item_id"].to_pylist() == expected.item_ids.tolist()
    np.testing.assert_array_equal(np.stack(out["emb"].to_numpy(zero_copy_only=False)), expected.item_factors)
    assert "feeds: item_emb" in result.summary()


def test_duckdb_sources_and_equivalent_paths(repo: FeatureStore) -> None:
    defs = repo.definitions()
    assert views_fed_by(repo.config, defs, defs.feature_jobs["als_sql"]) == ["item_emb"]
    result = repo.run_feature_job("als_sql")
    assert result.interactions == 399 and result.factors == 4


def test_a_text_rating_is_cast_and_a_bad_one_is_named(repo: FeatureStore) -> None:
    table = pa.table({"u": [1, 2, 3], "i": [7, 7, 8], "r": ["4.5", None, "2"], "t": [START] * 3})
    pq.write_table(table, repo.repo_path / "data" / "text.parquet")
    source = ParquetSource(name="text", type="parquet", path="data/text.parquet", timestamp_field="t")
    applied = repo.definitions()
    defs = dataclasses.replace(applied, sources={**applied.sources, "text": source})
    job = applied.feature_jobs["als"].model_copy(
        update={"source": "text", "user_column": "u", "item_column": "i", "rating_column": "r"}
    )
    got, dropped = read_interactions(repo.config, defs, job)
    assert got.column_names == ["user", "item", "rating", "ts"] and dropped == 1
    assert got["rating"].type == pa.float64() and got["rating"].to_pylist() == [4.5, 2.0]
    bad = table.set_column(2, "r", pa.array(["4.5", None, "lots"]))
    pq.write_table(bad, repo.repo_path / "data" / "text.parquet")
    with pytest.raises(DataError, match=r"feature job 'als': .*column 'r' \(rating_column\) is not numeric"):
        read_interactions(repo.config, defs, job)


@pytest.mark.integration
def test_postgres_sources_give_the_factors_of_the_same_parquet_data(
    repo: FeatureStore, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    files = sorted((repo.repo_path / "data" / "interactions").glob("*.parquet"))
    src = pa.concat_tables([pq.read_table(p) for p in files])
    with psycopg.connect(libpq_url(postgres_url)) as conn:
        conn.execute("create table interactions (uid bigint, iid bigint, stars float8, ts timestamptz)")
        with conn.cursor().copy("copy interactions (uid, iid, stars, ts) from stdin") as copy:
            for row in src.to_pylist():
                copy.write_row((row["uid"], row["iid"], row["stars"], row["ts"]))
    # No `connection` on the source: the job finds the URL where the batch job does.
    monkeypatch.setenv("FEATURESTORE__POSTGRES_URL", postgres_url)
    defs = repo.definitions()
    from_parquet, dropped_parquet = read_interactions(repo.config, defs, defs.feature_jobs["als"])
    from_pg, dropped_pg = read_interactions(repo.config, defs, defs.feature_jobs["als_pg"])
    assert dropped_pg == dropped_parquet == 1
    assert from_pg.sort_by("ts").equals(from_parquet.sort_by("ts"))

    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    by_parquet = run_feature_job(repo.config, repo.watcher, "als", now=now)
    parquet_out = pq.read_table(repo.repo_path / "data" / "factors.parquet")
    by_pg = run_feature_job(repo.config, repo.watcher, "als_pg", now=now)
    pg_out = pq.read_table(repo.repo_path / "data" / "factors.parquet")
    assert (by_pg.interactions, by_pg.dropped, by_pg.users, by_pg.items, by_pg.event_ts) == (
        by_parquet.interactions,
        by_parquet.dropped,
        by_parquet.users,
        by_parquet.items,
        by_parquet.event_ts,
    )
    assert pg_out.drop(["emb"]).equals(parquet_out.drop(["emb"]))
    np.testing.assert_allclose(
        np.stack(pg_out["emb"].to_numpy(zero_copy_only=False)),
        np.stack(parquet_out["emb"].to_numpy(zero_copy_only=False)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_misconfigured_jobs_say_what_to_fix(repo: FeatureStore) -> None:
    with pytest.raises(ConfigError, match="feeds no feature view"):
        repo.run_feature_job("orphan")
    with pytest.raises(ConfigError, match=r"declares emb: float32\[3\]"):
        repo.run_feature_job("misfit")
    with pytest.raises(
        DataError,
        match=r"feature job 'typo': reading source 'interactions' failed: .*a\.parquet has no "
        r"column 'user' \(user_column\)",
    ):
        repo.run_feature_job("typo")


def test_cli_runs_and_lists_jobs(repo: FeatureStore, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(repo.repo_path)
    overrides = {"FEATURESTORE__ONLINE_STORE__TYPE": "memory"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in overrides.items():
            mp.setenv(k, v)
        assert main(["-r", root, "jobs", "run", "als", "--no-materialize"]) == 0
        out = capsys.readouterr().out
        assert "Feature job 'als'" in out and "Not materialized" in out
        assert main(["-r", root, "jobs", "list"]) == 0
        listing = capsys.readouterr().out
        assert "orphan" in listing and "(no view)" in listing and "feeds item_emb" in listing
        assert main(["-r", root, "jobs", "run", "orphan"]) == 1
        assert "feeds no feature view" in capsys.readouterr().err
