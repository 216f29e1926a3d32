"""The production pairing (log in PostgreSQL, states in Redis): the same checks as on the
embedded profile, so the SQL tail, the known-item query and the Parquet view agree on both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore import FeatureStore
from tests.evaluation import test_query
from tests.evaluation.conftest import build_logged

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_logged(tmp_path: Path, unique_project: str, redis_url: str, postgres_url: str) -> Iterator[FeatureStore]:
    from tests.online.conftest import delete_redis_project

    store = build_logged(tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project, registry=postgres_url)
    assert store.registry.engine.dialect.name == "postgresql"
    yield store
    if "predictor" in store.__dict__:
        store.predictor.close()
    store.close()
    delete_redis_project(redis_url, unique_project)


@pytest.mark.parametrize("check", [
    test_query.test_every_slice_of_a_window_matches_the_log,
    test_query.test_parquet_view_plus_the_sql_tail_give_the_same_answer,
    test_query.test_logistic_model_log_loss_and_auc,
    test_query.test_drift_vs_validation,
    test_query.test_compare_versions_on_every_slice,
], ids=lambda f: f.__name__.removeprefix("test_"))
def test_on_postgres_and_redis(pg_logged: FeatureStore, check) -> None:
    check(pg_logged)
