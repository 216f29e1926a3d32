"""Fixtures for the feedback tests: the small models repository of tests/velox (item features
written straight to the online store, training through a stand-in for the point-in-time export),
with ``taste`` declaring a slice column, and helpers to compute expected states independently
of the code under test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.models.linear import UserState, learn_one
from featurestore.models.state_store import ModelStateStore
from featurestore.online.memory import MemoryOnlineStore
from tests.velox.conftest import DEFS as VELOX_DEFS
from tests.velox.conftest import fake_export, fill, labels, make_store

TASTE = "    label: rating\n    l2: 2.0\n"
assert TASTE in VELOX_DEFS
DEFS = VELOX_DEFS.replace(TASTE, TASTE + "    slice_column: device\n    stale_margin: 0.5\n")
AUTO_DEFS = VELOX_DEFS.replace(TASTE, TASTE + "    stale_margin: 0.1\n    auto_retrain: true\n")


def trained_store(
    root: Path, online: dict[str, Any], project: str, defs: str = DEFS, registry: str | None = None
) -> FeatureStore:
    """The repository with taste trained twice (v2 active) and ctx (logistic) once."""
    store = make_store(root, online, project, defs, registry)
    fill(store)
    fake_export(store)
    store.train("taste", labels(seed=0))
    store.train("taste", labels(seed=1))
    store.train("ctx", labels(seed=2))
    return store


@pytest.fixture(params=["memory", "embedded"])
def trained(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    store = trained_store(tmp_path / "repo", {"type": request.param}, unique_project)
    yield store
    store.close()
    MemoryOnlineStore.drop_project(unique_project)


def state(store: FeatureStore, user: bytes, model: str = "taste", version: int = 2) -> UserState:
    return ModelStateStore(store.online_store, model, version).get_state(user)


def apply_sequentially(start: UserState, X: np.ndarray, y: np.ndarray, objective: str = "squared_error") -> UserState:
    """The oracle: learn_one, observation after observation."""
    s = start
    for x, label in zip(X, y):
        s = learn_one(s, x, float(label), objective)  # type: ignore[arg-type]
    return s


def assert_same_state(a: UserState, b: UserState, tol: float = 1e-9) -> None:
    assert (a.n, a.version) == (b.n, b.version)
    for name in ("w", "A_inv", "xtx", "xty"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=tol, atol=tol, err_msg=name)
