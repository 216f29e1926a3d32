"""l2: auto (issue 17): the per-user chronological validation slice, the walk on the grid, the
validation loss of the per-user models, and ALS with item biases, an automatic λ and a seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featurestore.models.als import als_factorize
from featurestore.models.fitting import RidgeValidation, fit_average, fit_users
from featurestore.models.linear import design_matrix
from featurestore.models.tuning import L2_GRID, search_l2, validation_split


def test_validation_split_holds_out_each_users_newest_rows() -> None:
    users = np.array([1] * 20 + [2] * 3 + [3])
    ts = np.concatenate([np.arange(20)[::-1], [5, 9, 7], [0]])
    mask = validation_split(users, ts)
    # 10% of 20 = 2 newest (ts 19 and 18 are the first two rows); at least one of 3; none of 1.
    assert np.flatnonzero(mask[:20]).tolist() == [0, 1]
    assert mask[20:23].tolist() == [False, True, False]
    assert not mask[23]


def test_validation_split_without_timestamps_uses_the_input_order() -> None:
    mask = validation_split(np.array([4, 4, 4, 4]))
    assert mask.tolist() == [False, False, False, True]


@pytest.mark.parametrize("best", [0.003, 0.3, 10.0, 300.0])
def test_search_walks_to_the_minimum_and_to_the_edges(best: float) -> None:
    calls: list[float] = []

    def loss(lam: float) -> float:
        calls.append(lam)
        return (math.log10(lam) - math.log10(best)) ** 2

    chosen, value, tried = search_l2(loss)
    assert chosen == best and value == pytest.approx(0.0)
    assert len(calls) == len(set(calls)) < len(L2_GRID) + 1  # never twice the same λ
    assert set(tried) == {f"{lam:g}" for lam in calls}


def _users_data(seed: int = 0, users: int = 60, per_user: int = 12, d: int = 3):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(users, d + 1))
    ids = np.repeat(np.arange(users), per_user)
    X = design_matrix(rng.normal(size=(users * per_user, d)))
    y = np.einsum("nd,nd->n", X, w_true[ids]) + 0.5 * rng.normal(size=len(ids))
    return ids, X, y


def test_ridge_validation_equals_fitting_on_the_training_rows() -> None:
    ids, X, y = _users_data()
    val = validation_split(ids)
    lam = 2.0
    validation = RidgeValidation(ids, X, y, val, clip=(-1.0, 1.0))
    w_avg = fit_average(X[~val], y[~val], lam)
    states = fit_users(ids[~val], X[~val], y[~val], lam, w_avg)
    pred = np.array([X[i] @ states[ids[i]].w for i in np.flatnonzero(val)])
    expected = np.mean((np.clip(pred, -1.0, 1.0) - y[val]) ** 2)
    base = np.mean((np.clip(X[val] @ w_avg, -1.0, 1.0) - y[val]) ** 2)
    personal, average = validation.losses(lam)
    assert personal == pytest.approx(expected, rel=1e-10)
    assert average == pytest.approx(base, rel=1e-10)
    assert validation.rows == int(val.sum()) == 60


def test_ridge_validation_prefers_a_moderate_l2_on_noisy_users() -> None:
    ids, X, y = _users_data(per_user=6)
    validation = RidgeValidation(ids, X, y, validation_split(ids))
    best, loss, _ = search_l2(validation.loss)
    assert 0.003 < best < 300.0
    assert loss <= min(validation.loss(0.003), validation.loss(300.0))


def _biased_ratings(seed: int = 1, n_users: int = 300, n_items: int = 100):
    rng = np.random.default_rng(seed)
    U, V = rng.normal(size=(n_users, 3)) * 0.5, rng.normal(size=(n_items, 3)) * 0.5
    bi, bu = rng.normal(0, 0.8, n_items), rng.normal(0, 0.3, n_users)
    users, items = np.nonzero(rng.random((n_users, n_items)) < 0.3)
    r = 3.5 + bu[users] + bi[items] + np.einsum("nd,nd->n", U[users], V[items]) + 0.3 * rng.normal(size=len(users))
    return users, items, r, bi, rng.permutation(len(users))


def test_als_with_biases_recovers_the_item_biases() -> None:
    users, items, r, bi, _ = _biased_ratings()
    result = als_factorize(users, items, r, factors=3, l2=1.0, iterations=10, biases=True)
    assert result.item_bias is not None and result.item_bias.dtype == np.float32
    assert np.corrcoef(result.item_bias, bi)[0, 1] > 0.95
    plain = als_factorize(users, items, r, factors=3, l2=1.0, iterations=10)
    assert plain.item_bias is None
    assert result.train_rmse[-1] < plain.train_rmse[-1]


def test_als_auto_chooses_l2_on_the_newest_ratings_and_records_it() -> None:
    users, items, r, _, order = _biased_ratings()
    ts = order  # a random time per rating
    result = als_factorize(users, items, r, factors=3, l2="auto", iterations=6, biases=True, timestamps=ts)
    v = result.validation
    assert v is not None and result.l2 == v["l2"] in L2_GRID
    assert v["validation_rows"] > 0
    assert v["validation_rmse"] == min(v["candidates"].values())
    assert f"{result.l2:g}" in v["candidates"]
    with pytest.raises(Exception, match="'auto'"):
        als_factorize(users, items, r, factors=3, l2="automatic", iterations=2)


def test_als_seed_changes_the_start_and_is_reproducible() -> None:
    users, items, r, _, _ = _biased_ratings(n_users=50, n_items=30)
    a = als_factorize(users, items, r, factors=3, l2=1.0, iterations=2, seed=1)
    b = als_factorize(users, items, r, factors=3, l2=1.0, iterations=2, seed=1)
    c = als_factorize(users, items, r, factors=3, l2=1.0, iterations=2, seed=2)
    assert np.array_equal(a.item_factors, b.item_factors)
    assert not np.array_equal(a.item_factors, c.item_factors)


def _training_set(l2: float = 1.0):
    from featurestore.models.state_store import FeatureBlock, ModelLayout
    from featurestore.models.training import TrainingSet

    layout = ModelLayout("m", "user", "item", (FeatureBlock("v", "f", "float32[3]", 3),), (), (),
                         True, "squared_error", l2)
    ids, X, y = _users_data(per_user=8)
    return TrainingSet(layout, X, y, [str(i).encode() for i in range(60)], ids, 10, len(y), 0, 0, None, None,
                       ts=np.arange(len(y))[::-1].copy())


def test_fit_with_l2_auto_records_the_choice_and_its_validation_loss() -> None:
    from dataclasses import replace

    from featurestore.models.training import fit

    training = _training_set()
    w_auto, states_auto, m = fit(training, l2_auto=True)
    assert m["l2_auto"] is True and m["l2"] in L2_GRID
    assert m["validation_loss"] == min(m["l2_candidates"].values())
    assert m["validation_rows"] == 60 and m["validation_loss"] < m["validation_loss_average_user"]
    assert (m["clip_min"], m["clip_max"]) == (training.y.min(), training.y.max())
    # The same as training with that λ given: the choice is the only difference.
    fixed = replace(training, layout=replace(training.layout, l2=m["l2"]))
    w_fixed, states_fixed, m_fixed = fit(fixed)
    assert m_fixed["l2_auto"] is False and m_fixed["validation_loss"] == m["validation_loss"]
    np.testing.assert_array_equal(w_auto, w_fixed)
    np.testing.assert_array_equal(states_auto[b"0"].w, states_fixed[b"0"].w)


def test_the_example_writes_l2_auto_and_a_seed() -> None:
    from featurestore.example.repo import MODELS_YAML
    from registry.spec import FeatureJobSpec, ModelSpec

    text = MODELS_YAML.format(factors=8)
    assert text.count("l2: auto") == 2 and "seed: 0" in text
    model = ModelSpec(name="m", user_entity="u", item_entity="i", features=["v:f"], label="y", l2="auto")
    assert model.l2 == "auto"
    assert "seed" in FeatureJobSpec.model_fields