"""ALS item features: recovers synthetic low-rank ratings and fits only observed entries."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from featurestore.models.als import als_factorize
from registry.errors import ConfigError, DataError, NotFoundError

NOISE = 0.1


def _low_rank(seed: int = 0, n_users: int = 300, n_items: int = 200, rank: int = 4):
    """~25% of a rank-4 matrix around a mean of 3.5, with Gaussian noise; a held-out split."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n_users, rank)) / np.sqrt(rank)
    V = rng.normal(size=(n_items, rank))
    users, items = np.nonzero(rng.random((n_users, n_items)) < 0.25)
    truth = 3.5 + np.einsum("nd,nd->n", U[users], V[items])
    ratings = truth + NOISE * rng.normal(size=len(truth))
    held_out = rng.random(len(truth)) < 0.1
    return users, items, ratings, truth, held_out


@pytest.fixture(scope="module")
def fitted():
    users, items, ratings, truth, held_out = _low_rank()
    train = ~held_out
    result = als_factorize(
        users[train], items[train], ratings[train], factors=4, l2=0.1, iterations=15, seed=0
    )
    return result, users, items, truth, held_out


def test_train_rmse_falls_to_the_noise_level(fitted) -> None:
    result = fitted[0]
    rmse = result.train_rmse
    assert len(rmse) == 15
    assert rmse[-1] < rmse[0]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(rmse))
    assert rmse[-1] < 1.5 * NOISE


def test_held_out_ratings_are_recovered(fitted) -> None:
    result, users, items, truth, held_out = fitted
    predicted = result.predict(users[held_out], items[held_out])
    assert np.sqrt(np.mean((predicted - truth[held_out]) ** 2)) < 2 * NOISE
    # Baseline for scale: predicting the mean is ~10x worse.
    assert np.sqrt(np.mean((result.mean - truth[held_out]) ** 2)) > 0.8


def test_shapes_dtypes_and_sorted_ids(fitted) -> None:
    result = fitted[0]
    assert result.item_factors.shape == (len(result.item_ids), 4)
    assert result.user_factors.shape == (len(result.user_ids), 4)
    assert result.item_factors.dtype == np.float32 == result.user_factors.dtype
    assert np.all(np.diff(result.item_ids) > 0)
    assert 3.3 < result.mean < 3.7


def test_missing_entries_are_not_treated_as_zero() -> None:
    # Two users love item "a"; nobody rated "b" with user 1. A zero-filling factorisation would
    # predict ~0 for the unrated pair; ALS predicts from the observed pattern.
    users = np.array(["u0", "u0", "u1", "u2", "u2"])
    items = np.array(["a", "b", "a", "a", "b"])
    ratings = np.array([5.0, 5.0, 5.0, 4.0, 4.0])
    result = als_factorize(users, items, ratings, factors=2, l2=0.1, iterations=20)
    assert result.predict(np.array(["u1"]), np.array(["b"]))[0] > 4.0


def test_the_seed_makes_runs_repeatable() -> None:
    users, items, ratings, *_ = _low_rank(n_users=40, n_items=30)
    a = als_factorize(users, items, ratings, factors=3, l2=0.1, iterations=3, seed=7)
    b = als_factorize(users, items, ratings, factors=3, l2=0.1, iterations=3, seed=7)
    assert np.array_equal(a.item_factors, b.item_factors)
    assert a.train_rmse == b.train_rmse


def test_bad_inputs() -> None:
    one = np.array([0])
    with pytest.raises(ConfigError, match="factors"):
        als_factorize(one, one, np.ones(1), factors=0, l2=0.1, iterations=1)
    with pytest.raises(ConfigError, match="l2"):
        als_factorize(one, one, np.ones(1), factors=1, l2=0.0, iterations=1)
    with pytest.raises(DataError, match="shapes"):
        als_factorize(one, np.array([0, 1]), np.ones(1), factors=1, l2=0.1, iterations=1)
    with pytest.raises(DataError, match="NaN"):
        als_factorize(one, one, np.array([np.nan]), factors=1, l2=0.1, iterations=1)
    result = als_factorize(one, one, np.ones(1), factors=1, l2=0.1, iterations=1)
    with pytest.raises(NotFoundError, match="unknown item id 5"):
        result.predict(one, np.array([5]))
