"""Offline fitting of the per-user linear models (``featurestore.models.linear`` has the maths).

* ``fit_average``: the average user, one model over every user's rows pooled, centred on zero,
  the bias not penalised;
* ``fit_users``: every user's model at once, centred on the average user (closed form for
  squared error, batched damped Newton for logistic);
* ``grouped_moments``: per-group Σ s x xᵀ and Σ c x, also what ALS (``models.als``) solves with.

Their output is ``UserState``s that ``learn_one`` and ``StateBatch.learn`` continue online.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from featurestore.models.linear import (
    Objective,
    StateBatch,
    UserState,
    as_labels,
    as_matrix,
    as_vector,
    check_l2,
    check_objective,
    design_matrix,  # noqa: F401 - the doctests build X with it
    sigmoid,
    symmetric,
)
from registry.errors import DataError

# Rows per chunk when summing per-row outer products: bounds the temporary at ~32 MB.
_CHUNK_FLOATS = 1 << 22
_NEWTON_MAX_ITER = 100


def fit_average(
    X: np.ndarray,
    y: np.ndarray,
    l2: float,
    *,
    objective: Objective = "squared_error",
    bias: bool = True,
) -> np.ndarray:
    """The average user: one model over all users' rows pooled, centred on zero.

    With ``bias=True`` the last column must be the constant 1.0 and is not penalised (so the
    average user's bias is the label mean, not shrunk towards 0). Squared error is the closed
    form (XᵀX + λM)⁻¹Xᵀy; logistic is the MAP found by damped Newton.

    >>> X = design_matrix(np.array([[0.0], [1.0], [2.0]]))
    >>> fit_average(X, np.array([1.0, 3.0, 5.0]), l2=1e-9).round(6).tolist()
    [2.0, 1.0]
    """
    check_objective(objective)
    l2 = check_l2(l2)
    X = as_matrix(X, "X")
    y = as_labels(y, X.shape[0], objective)
    if X.shape[0] == 0:
        raise DataError("cannot fit the average user on zero rows", hint="pass training rows")
    mask = np.ones(X.shape[1])
    if bias:
        if not np.all(X[:, -1] == 1.0):
            raise DataError(
                "bias=True but the last column of X is not all 1.0",
                hint="build X with design_matrix(..., bias=True) or pass bias=False",
            )
        mask[-1] = 0.0
        if objective == "logistic" and (y.min() == y.max()):
            raise DataError(
                "every label is the same, so the unpenalised logistic bias has no finite value",
                hint="train on data with both 0 and 1 labels",
            )
    groups = np.zeros(X.shape[0], dtype=np.intp)
    W, _, _ = _fit_groups(groups, 1, X, y, l2 * mask, np.zeros(X.shape[1]), objective)
    return W[0]


def fit_users(
    user_ids: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    l2: float,
    w_avg: np.ndarray,
    *,
    objective: Objective = "squared_error",
) -> dict[Hashable, UserState]:
    """Fit every user's model in one batch, centred on the average user.

    Squared error: w_u = (X_uᵀX_u + λI)⁻¹(X_uᵀy_u + λ w_avg), batched over users. Logistic: the
    MAP with a Gaussian prior at w_avg (batched damped Newton); its statistics are those of the
    final Newton step, so ``exact_solution`` and ``learn_one`` continue from it consistently.

    >>> X = design_matrix(np.array([[1.0], [2.0], [1.0]]))
    >>> states = fit_users(np.array(["a", "a", "b"]), X, np.array([1.0, 2.0, 0.0]), 1.0, np.zeros(2))
    >>> sorted(states), states["a"].n
    (['a', 'b'], 2)
    """
    check_objective(objective)
    l2 = check_l2(l2)
    X = as_matrix(X, "X")
    d = X.shape[1]
    y = as_labels(y, X.shape[0], objective)
    w_avg = as_vector(w_avg, "w_avg", d)
    user_ids = np.asarray(user_ids)
    if user_ids.shape != (X.shape[0],):
        raise DataError(
            f"user_ids has shape {user_ids.shape}, expected ({X.shape[0]},)",
            hint="pass one user id per row of X",
        )
    if X.shape[0] == 0:
        return {}
    uniq, groups = np.unique(user_ids, return_inverse=True)
    k = len(uniq)
    W, G, b = _fit_groups(groups, k, X, y, np.full(d, l2), w_avg, objective)
    A = G.copy()
    A[:, np.arange(d), np.arange(d)] += l2
    A_inv = symmetric(np.linalg.inv(A))
    counts = np.bincount(groups, minlength=k).tolist()
    batch = StateBatch(W, A_inv, G, b, np.asarray(counts, np.int64), np.zeros(k, np.int64))
    return dict(zip(uniq.tolist(), batch.to_states()))


def grouped_moments(
    groups: np.ndarray,
    n_groups: int,
    X: np.ndarray,
    c: np.ndarray,
    s: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group Σ s_i x_i x_iᵀ (n_groups, d, d) and Σ c_i x_i (n_groups, d).

    Rows are sorted by group once and the outer products summed with ``np.add.reduceat`` in
    chunks, so memory stays bounded and the sums are exactly symmetric.
    """
    n, d = X.shape
    G = np.zeros((n_groups, d, d))
    b = np.zeros((n_groups, d))
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    chunk = max(1, _CHUNK_FLOATS // (d * d))
    for lo in range(0, n, chunk):
        idx = order[lo : lo + chunk]
        g = sorted_groups[lo : lo + chunk]
        starts = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
        xc = X[idx]
        outer = xc[:, :, None] * xc[:, None, :]
        if s is not None:
            outer *= s[idx][:, None, None]
        # Each group occurs once per chunk (rows are sorted), so fancy-index += is safe.
        G[g[starts]] += np.add.reduceat(outer, starts, axis=0)
        b[g[starts]] += np.add.reduceat(xc * c[idx][:, None], starts, axis=0)
    return G, b


def _fit_groups(
    groups: np.ndarray,
    k: int,
    X: np.ndarray,
    y: np.ndarray,
    penalty: np.ndarray,
    center: np.ndarray,
    objective: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group MAP with penalty ½Σ_j penalty_j (w_j - center_j)²; returns (W, G, b) such that
    W = (diag(penalty) + G)⁻¹(penalty · center + b) — the statistics a UserState stores."""
    d = X.shape[1]
    diag = np.arange(d)
    if objective == "squared_error":
        G, b = grouped_moments(groups, k, X, y)
        A = G.copy()
        A[:, diag, diag] += penalty
        W = np.linalg.solve(A, (b + penalty * center)[:, :, None])[:, :, 0]
        return W, G, b

    def loss(W: np.ndarray) -> np.ndarray:
        eta = np.einsum("nd,nd->n", X, W[groups])
        data = np.bincount(groups, np.logaddexp(0.0, eta) - y * eta, minlength=k)
        return data + 0.5 * ((W - center) ** 2 * penalty).sum(axis=1)

    W = np.broadcast_to(center, (k, d)).astype(np.float64)
    f = loss(W)
    for _ in range(_NEWTON_MAX_ITER):
        eta = np.einsum("nd,nd->n", X, W[groups])
        p = sigmoid(eta)
        H, grad = grouped_moments(groups, k, X, p - y, p * (1.0 - p))
        H[:, diag, diag] += penalty
        grad += penalty * (W - center)
        step = -np.linalg.solve(H, grad[:, :, None])[:, :, 0]
        if np.max(np.abs(step)) <= 1e-10 * (1.0 + np.max(np.abs(W))):
            W = W + step
            break
        # Backtrack per group until the objective does not rise (Newton can overshoot).
        t = np.ones(k)
        for _ in range(50):
            W_try = W + t[:, None] * step
            f_try = loss(W_try)
            worse = f_try > f + 1e-12 * np.abs(f)
            if not worse.any():
                break
            t[worse] *= 0.5
        W, f = W_try, f_try
    else:
        raise DataError(
            f"logistic fit did not converge in {_NEWTON_MAX_ITER} Newton steps",
            hint="check the features for huge values or raise l2",
        )
    eta = np.einsum("nd,nd->n", X, W[groups])
    p = sigmoid(eta)
    s = p * (1.0 - p)
    G, b = grouped_moments(groups, k, X, s * eta + (y - p), s)
    return W, G, b


class RidgeValidation:
    """The validation loss of the per-user models for any λ, on a fixed split (``l2: auto``).

    Fits the average user and every user on the rows not in ``validation`` and scores the
    validation rows: mean squared error of the predictions clipped to ``clip`` (the label range
    they are served with), or log loss for logistic models. The per-user moments of the
    training rows are computed once, so each λ costs one batched solve (squared error).

    >>> X = design_matrix(np.array([[0.0], [1.0], [2.0], [3.0]]))
    >>> v = RidgeValidation(np.array([0, 0, 0, 0]), X, np.array([0.0, 1.0, 2.0, 3.1]),
    ...                     np.array([False, False, False, True]))
    >>> v.loss(0.01) < v.loss(100.0)
    True
    """

    def __init__(
        self,
        groups: np.ndarray,
        X: np.ndarray,
        y: np.ndarray,
        validation: np.ndarray,
        *,
        objective: Objective = "squared_error",
        bias: bool = True,
        clip: tuple[float, float] | None = None,
    ) -> None:
        check_objective(objective)
        train = ~validation
        self.objective, self.bias, self.clip = objective, bias, clip
        self.X, self.y, self.train = X[train], y[train], train
        uniq, self.groups = np.unique(groups[train], return_inverse=True)
        self.k = len(uniq)
        pos = np.searchsorted(uniq, groups[validation]).clip(0, max(self.k - 1, 0))
        self.seen = (uniq[pos] == groups[validation]) if self.k else np.zeros(int(validation.sum()), bool)
        self.vgroups, self.vX, self.vy = pos, X[validation], y[validation]
        self.rows = int(validation.sum())
        self._moments = (
            grouped_moments(self.groups, self.k, self.X, self.y) if objective == "squared_error" and self.k else None
        )

    def weights(self, l2: float) -> tuple[np.ndarray, np.ndarray]:
        """(w_avg, W per training group) fitted with ``l2`` on the training rows."""
        w_avg = fit_average(self.X, self.y, l2, objective=self.objective, bias=self.bias)
        d = self.X.shape[1]
        if self._moments is not None:
            G, b = self._moments
            A = G.copy()
            A[:, np.arange(d), np.arange(d)] += l2
            W = np.linalg.solve(A, (b + l2 * w_avg)[:, :, None])[:, :, 0]
        else:
            W, _, _ = _fit_groups(self.groups, self.k, self.X, self.y, np.full(d, float(l2)), w_avg, self.objective)
        return w_avg, W

    def loss(self, l2: float) -> float:
        """The personalised validation loss with ``l2`` (NaN without validation rows)."""
        return self.losses(l2)[0]

    def losses(self, l2: float) -> tuple[float, float]:
        """(personalised, average user) validation loss with ``l2``."""
        if self.rows == 0 or self.k == 0:
            return float("nan"), float("nan")
        w_avg, W = self.weights(l2)
        Wv = np.where(self.seen[:, None], W[self.vgroups], w_avg)
        return self._loss(np.einsum("nd,nd->n", self.vX, Wv)), self._loss(self.vX @ w_avg)

    def _loss(self, eta: np.ndarray) -> float:
        if self.objective == "logistic":
            p = np.clip(sigmoid(eta), np.finfo(float).eps, 1 - np.finfo(float).eps)
            return float(-np.mean(self.vy * np.log(p) + (1 - self.vy) * np.log1p(-p)))
        if self.clip is not None:
            eta = np.clip(eta, *self.clip)
        return float(np.mean((eta - self.vy) ** 2))
