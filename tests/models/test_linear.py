"""The per-user linear models, checked against scikit-learn's closed forms and against
themselves (online == exact, batch == sequential)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression, Ridge

from featurestore.models import linear
from featurestore.models.fitting import fit_average, fit_users
from featurestore.models.linear import (
    StateBatch,
    design_matrix,
    exact_solution,
    learn_many,
    learn_one,
    new_user_state,
    predict_many,
    sigmoid,
    ucb_bonus,
)
from registry.errors import ConfigError, DataError

L2 = 2.0


def _data(seed: int = 0, n_users: int = 6, n: int = 300, k: int = 3, logistic: bool = False):
    """Rows of k item features + bias, users with their own true weights around a shared one."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    F = rng.normal(size=(n, k))
    shared = rng.normal(size=k + 1)
    per_user = shared + 0.5 * rng.normal(size=(n_users, k + 1))
    X = design_matrix(F)
    margin = np.einsum("nd,nd->n", X, per_user[users])
    if logistic:
        y = (rng.random(n) < sigmoid(margin)).astype(float)
    else:
        y = margin + 0.1 * rng.normal(size=n)
    return users, F, X, y


# --- closed forms against scikit-learn -----------------------------------------------------------


def test_average_user_equals_sklearn_ridge_with_unpenalised_intercept() -> None:
    _, F, X, y = _data()
    w_avg = fit_average(X, y, L2)
    ref = Ridge(alpha=L2, fit_intercept=True).fit(F, y)
    np.testing.assert_allclose(w_avg[:-1], ref.coef_, atol=1e-10)
    np.testing.assert_allclose(w_avg[-1], ref.intercept_, atol=1e-10)


def test_average_user_equals_normal_equations_with_penalty_mask() -> None:
    _, _, X, y = _data(seed=1)
    mask = np.diag([1.0, 1.0, 1.0, 0.0])  # the bias is the last column and is not penalised
    expected = np.linalg.solve(X.T @ X + L2 * mask, X.T @ y)
    np.testing.assert_allclose(fit_average(X, y, L2), expected, atol=1e-12)


def test_average_user_without_bias_equals_sklearn_ridge() -> None:
    _, F, _, y = _data(seed=2)
    ref = Ridge(alpha=L2, fit_intercept=False).fit(F, y)
    np.testing.assert_allclose(fit_average(F, y, L2, bias=False), ref.coef_, atol=1e-10)


def test_per_user_ridge_equals_sklearn_on_residuals_plus_average() -> None:
    users, _, X, y = _data(seed=3)
    w_avg = fit_average(X, y, L2)
    states = fit_users(users, X, y, L2, w_avg)
    assert sorted(states) == sorted(set(users.tolist()))
    for u, state in states.items():
        Xu, yu = X[users == u], y[users == u]
        ref = Ridge(alpha=L2, fit_intercept=False).fit(Xu, yu - Xu @ w_avg)
        np.testing.assert_allclose(state.w, ref.coef_ + w_avg, atol=1e-10)
        np.testing.assert_allclose(
            state.A_inv, np.linalg.inv(Xu.T @ Xu + L2 * np.eye(4)), atol=1e-12
        )
        assert state.n == len(yu) and state.version == 0


def test_logistic_average_user_equals_sklearn() -> None:
    _, F, X, y = _data(seed=4, logistic=True)
    w_avg = fit_average(X, y, L2, objective="logistic")
    ref = LogisticRegression(C=1 / L2, solver="newton-cholesky", tol=1e-12, max_iter=100).fit(F, y)
    np.testing.assert_allclose(w_avg, np.append(ref.coef_[0], ref.intercept_), atol=1e-7)


def test_logistic_users_equal_sklearn_when_centred_on_zero() -> None:
    users, _, X, y = _data(seed=5, logistic=True, n=400)
    states = fit_users(users, X, y, L2, np.zeros(4), objective="logistic")
    for u, state in states.items():
        Xu, yu = X[users == u], y[users == u]
        ref = LogisticRegression(
            C=1 / L2, fit_intercept=False, solver="newton-cholesky", tol=1e-12, max_iter=100
        ).fit(Xu, yu)
        np.testing.assert_allclose(state.w, ref.coef_[0], atol=1e-7)
        # The stored statistics reproduce the MAP (they are those of the final Newton step).
        np.testing.assert_allclose(exact_solution(state, L2, np.zeros(4)).w, state.w, atol=1e-8)


def test_logistic_users_satisfy_the_map_condition_around_a_nonzero_average() -> None:
    users, _, X, y = _data(seed=6, logistic=True)
    w_avg = fit_average(X, y, L2, objective="logistic")
    for u, state in fit_users(users, X, y, L2, w_avg, objective="logistic").items():
        Xu, yu = X[users == u], y[users == u]
        gradient = Xu.T @ (sigmoid(Xu @ state.w) - yu) + L2 * (state.w - w_avg)
        np.testing.assert_allclose(gradient, 0.0, atol=1e-8)


# --- cold start and online == exact --------------------------------------------------------------


def test_never_seen_user_is_the_average_user_exactly() -> None:
    _, _, X, y = _data()
    w_avg = fit_average(X, y, L2)
    state = new_user_state(w_avg, L2)
    assert np.array_equal(state.w, w_avg)
    assert state.w is not w_avg  # a copy: the average user cannot be changed through a state
    assert np.array_equal(state.A_inv, np.eye(4) / L2)
    np.testing.assert_allclose(exact_solution(state, L2, w_avg).w, w_avg, atol=1e-15)
    assert np.array_equal(predict_many(state.w, X), X @ w_avg)


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 6),
    k=st.integers(0, 25),
    l2=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**32 - 1),
    objective=st.sampled_from(["squared_error", "logistic"]),
)
def test_sherman_morrison_equals_exact_solution(d, k, l2, seed, objective) -> None:
    rng = np.random.default_rng(seed)
    w_avg = rng.normal(size=d)
    X = rng.uniform(-3, 3, size=(k, d))
    y = rng.integers(0, 2, k).astype(float) if objective == "logistic" else rng.normal(0, 5, k)
    state = new_user_state(w_avg, l2)
    for x, label in zip(X, y):
        state = learn_one(state, x, label, objective)
    exact = exact_solution(state, l2, w_avg)
    np.testing.assert_allclose(state.w, exact.w, atol=1e-8)
    np.testing.assert_allclose(state.A_inv, exact.A_inv, atol=1e-8)
    if objective == "squared_error":
        np.testing.assert_allclose(state.xtx, X.T @ X, atol=1e-9)
        np.testing.assert_allclose(state.xty, X.T @ y, atol=1e-9)
    assert state.n == state.version == k
    assert np.array_equal(state.A_inv, state.A_inv.T)  # exactly symmetric: the codec needs it


def test_batch_fit_then_online_equals_batch_fit_of_everything() -> None:
    users, _, X, y = _data(seed=7)
    w_avg = fit_average(X, y, L2)
    half = len(y) // 2
    states = fit_users(users[:half], X[:half], y[:half], L2, w_avg)
    for u, x, label in zip(users[half:], X[half:], y[half:]):
        states[u] = learn_one(states.get(u) or new_user_state(w_avg, L2), x, label)
    everything = fit_users(users, X, y, L2, w_avg)
    for u, state in everything.items():
        np.testing.assert_allclose(states[u].w, state.w, atol=1e-10)
        np.testing.assert_allclose(states[u].A_inv, state.A_inv, atol=1e-12)


def test_learn_one_does_not_modify_its_input() -> None:
    state = new_user_state(np.ones(3), 1.0)
    before = [a.copy() for a in (state.w, state.A_inv, state.xtx, state.xty)]
    learn_one(state, np.array([1.0, 2.0, 3.0]), 4.0)
    for old, new in zip(before, (state.w, state.A_inv, state.xtx, state.xty)):
        assert np.array_equal(old, new)
    assert state.n == state.version == 0


# --- batch == sequential -------------------------------------------------------------------------


@pytest.mark.parametrize("block_floats", [None, 3 * 16])  # default, and blocks of 3 users
@pytest.mark.parametrize("objective", ["squared_error", "logistic"])
def test_learn_many_equals_sequential_learn_one_with_repeated_users(
    objective, block_floats, monkeypatch
) -> None:
    if block_floats is not None:
        monkeypatch.setattr(linear, "_ROUND_BLOCK_FLOATS", block_floats)
    users, _, X, y = _data(seed=8, n=200, logistic=objective == "logistic")
    w_avg = fit_average(X, y, L2, objective=objective)
    initial = {u: new_user_state(w_avg, L2) for u in set(users.tolist())}
    initial[0] = learn_one(initial[0], X[0], y[0], objective)  # one user starts from a warm state
    batch = learn_many([initial[u] for u in users], X, y, objective)
    sequential = dict(initial)
    for u, x, label in zip(users, X, y):
        sequential[u] = learn_one(sequential[u], x, label, objective)
    for i, u in enumerate(users):
        assert batch[i] is batch[int(np.flatnonzero(users == u)[0])]
        for field in ("w", "A_inv", "xtx", "xty"):
            np.testing.assert_allclose(
                getattr(batch[i], field), getattr(sequential[u], field), rtol=0, atol=1e-12
            )
        assert (batch[i].n, batch[i].version) == (sequential[u].n, sequential[u].version)


def test_state_batch_learn_by_row_index_leaves_the_input_batch_alone() -> None:
    states = [new_user_state(np.zeros(2), 1.0), new_user_state(np.ones(2), 1.0)]
    batch = StateBatch.from_states(states)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = batch.learn(np.array([1, 0, 1]), X, np.array([1.0, 2.0, 3.0]))
    assert out.n.tolist() == [1, 2] and batch.n.tolist() == [0, 0]
    expected = learn_one(learn_one(states[1], X[0], 1.0), X[2], 3.0)
    np.testing.assert_allclose(out.to_states()[1].w, expected.w, atol=1e-14)
    assert np.array_equal(batch.w, np.array([[0.0, 0.0], [1.0, 1.0]]))


def test_learn_many_of_nothing_is_nothing() -> None:
    assert learn_many([], np.empty((0, 3)), np.empty(0)) == []


# --- logistic rule, prediction, exploration ------------------------------------------------------


def test_online_logistic_rule_reduces_log_loss_on_separable_data() -> None:
    rng = np.random.default_rng(9)
    F = rng.normal(size=(400, 2))
    y = (F @ np.array([2.0, -1.0]) + 0.5 > 0).astype(float)  # linearly separable
    X = design_matrix(F)

    def log_loss(w: np.ndarray) -> float:
        p = np.clip(sigmoid(predict_many(w, X)), 1e-15, 1 - 1e-15)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    state = new_user_state(np.zeros(3), 1.0)
    start = log_loss(state.w)
    for x, label in zip(X, y):
        state = learn_one(state, x, label, "logistic")
    assert start == pytest.approx(np.log(2))
    assert log_loss(state.w) < 0.25 * start
    assert np.mean((predict_many(state.w, X) > 0) == (y == 1)) > 0.95


def test_ucb_bonus_is_alpha_sqrt_of_the_quadratic_form() -> None:
    rng = np.random.default_rng(10)
    B = rng.normal(size=(4, 4))
    A_inv = np.linalg.inv(B @ B.T + np.eye(4))
    X = rng.normal(size=(50, 4))
    bonus = ucb_bonus(A_inv, X, alpha=0.7)
    assert bonus.shape == (50,)
    np.testing.assert_allclose(bonus, [0.7 * np.sqrt(x @ A_inv @ x) for x in X], rtol=1e-12)
    assert np.array_equal(ucb_bonus(A_inv, X, alpha=0.0), np.zeros(50))


def test_ucb_bonus_shrinks_where_the_user_has_evidence() -> None:
    state = new_user_state(np.zeros(2), 1.0)
    seen, unseen = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    for _ in range(10):
        state = learn_one(state, seen, 1.0)
    before, after = ucb_bonus(state.A_inv, np.stack([seen, unseen]), 1.0)
    assert before == pytest.approx(np.sqrt(1 / 11)) and after == pytest.approx(1.0)


def test_design_matrix_puts_the_bias_last_for_rows_and_single_vectors() -> None:
    assert design_matrix(np.array([2.0]), np.array([3.0, 4.0])).tolist() == [2.0, 3.0, 4.0, 1.0]
    assert design_matrix(np.ones((2, 1)), bias=False).shape == (2, 1)


# --- bad input -----------------------------------------------------------------------------------


def test_bad_inputs_name_the_problem() -> None:
    state = new_user_state(np.zeros(3), 1.0)
    with pytest.raises(ConfigError, match="unknown objective 'hinge'"):
        learn_one(state, np.ones(3), 1.0, "hinge")  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"shape \(2,\)"):
        learn_one(state, np.ones(2), 1.0)
    with pytest.raises(DataError, match="0 or 1"):
        learn_one(state, np.ones(3), 0.5, "logistic")
    with pytest.raises(DataError, match="not finite"):
        learn_one(state, np.array([1.0, np.nan, 0.0]), 1.0)
    with pytest.raises(DataError, match="NaN or inf"):
        learn_many([state], np.array([[np.inf, 0.0, 0.0]]), np.ones(1))
    with pytest.raises(ConfigError, match="l2 must be"):
        new_user_state(np.zeros(3), 0.0)
    with pytest.raises(DataError, match="last column"):
        fit_average(np.ones((3, 2)) * 2.0, np.ones(3), 1.0)
    with pytest.raises(DataError, match="every label is the same"):
        fit_average(design_matrix(np.ones((3, 1))), np.ones(3), 1.0, objective="logistic")
    with pytest.raises(ConfigError, match="alpha"):
        ucb_bonus(np.eye(3), np.ones((1, 3)), alpha=-1.0)
    with pytest.raises(DataError, match="different dimensions"):
        StateBatch.from_states([state, new_user_state(np.zeros(2), 1.0)])
