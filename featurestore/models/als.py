"""Learned item features, the Velox θ: regularised alternating least squares in numpy.

An interactions table (user, item, rating) is factorised as r ≈ μ + u·v with d factors per user
and per item. The item factors become materialized item features f(item); the per-user linear
models of ``featurestore.models.linear`` then learn w_user over them online.

Why ALS in numpy and not a scikit-learn decomposition: ratings are *explicit feedback with
missing entries*. ``NMF`` and ``TruncatedSVD`` factorise a full (or sparse-as-zero) matrix, so
every unrated (user, item) pair counts as a rating of 0 and drags the factors towards "nobody
likes anything". ALS fits only the observed entries, and each half-step is a batch of small
ridge regressions that reuses the grouped Gram matrices of the linear models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featurestore.models.fitting import grouped_moments
from featurestore.models.tuning import search_l2, validation_split
from registry.errors import ConfigError, DataError, NotFoundError


@dataclass(frozen=True, eq=False)
class AlsResult:
    """Factors of an ALS run. Ids are sorted (``np.unique`` order); factors are float32.

    ``mean`` is the global rating mean the factors were fitted around; ``train_rmse`` has one
    entry per iteration (on the observed ratings, mean included).
    """

    item_ids: np.ndarray
    item_factors: np.ndarray
    user_ids: np.ndarray
    user_factors: np.ndarray
    mean: float
    train_rmse: list[float] = field(default_factory=list)
    item_bias: np.ndarray | None = None  # (items,) float32 with ``biases=True``, else None
    user_bias: np.ndarray | None = None
    l2: float | None = None  # the penalty used (the chosen one with ``l2="auto"``)
    validation: dict[str, Any] | None = None  # with ``l2="auto"``: how it was chosen

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings μ + u·v (+ b_u + b_i with biases) for known (user, item) pairs.

        >>> r = als_factorize(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([5.0, 3.0, 4.0]),
        ...                   factors=2, l2=0.1, iterations=5)
        >>> r.predict(np.array([0]), np.array([0])).shape
        (1,)
        """
        u = _positions(self.user_ids, np.asarray(users), "user")
        i = _positions(self.item_ids, np.asarray(items), "item")
        dots = np.einsum("nd,nd->n", self.user_factors[u], self.item_factors[i], dtype=np.float64)
        if self.item_bias is not None and self.user_bias is not None:
            dots = dots + self.item_bias[i] + self.user_bias[u]
        return self.mean + dots


def als_factorize(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    factors: int,
    l2: float | str,
    iterations: int,
    seed: int = 0,
    *,
    biases: bool = False,
    timestamps: np.ndarray | None = None,
) -> AlsResult:
    """Factorise explicit ratings into user and item factors by regularised ALS.

    Ratings are centred on their global mean μ first, so the factors model deviations from it
    and an item or user with few ratings is pulled towards μ, not towards 0. Each iteration
    solves every user's ridge regression (VᵤᵀVᵤ + λI)u = Vᵤᵀ(r - μ) as one batched solve, then
    every item's the same way; λ is a plain (not rating-count weighted) L2 penalty.

    With ``biases=True`` the model is r ≈ μ + b_u + b_i + u·v: the user step solves for [u, b_u]
    over item rows [v, 1] against r - μ - b_i, the item step for [v, b_i] over [u, 1] against
    r - μ - b_u (λ on every coordinate, the biases included).

    ``l2="auto"`` chooses λ on a per-user chronological validation slice (``models.tuning``:
    each user's newest ratings, by ``timestamps`` when given, else in input order) by the RMSE,
    clipped to the ratings' range, on the validation pairs whose user and item were seen, then
    fits on everything with it; ``l2`` and ``validation`` record the choice.

    >>> r = als_factorize(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]),
    ...                   np.array([5.0, 1.0, 4.0, 2.0]), factors=2, l2=0.01, iterations=10)
    >>> r.item_factors.shape, r.item_factors.dtype.name, r.train_rmse[-1] < 0.1
    ((2, 2), 'float32', True)
    """
    if not (_is_int(factors) and factors >= 1):
        raise ConfigError(f"factors must be an integer >= 1, got {factors!r}", hint="e.g. 16")
    if not (_is_int(iterations) and iterations >= 1):
        raise ConfigError(f"iterations must be an integer >= 1, got {iterations!r}", hint="e.g. 10")
    auto = isinstance(l2, str)
    if auto and l2 != "auto":
        raise ConfigError(f"l2 must be a finite number > 0 or 'auto', got {l2!r}", hint="e.g. 0.1 or auto")
    if not auto and not (float(l2) > 0 and math.isfinite(l2)):  # type: ignore[arg-type]
        raise ConfigError(f"l2 must be a finite number > 0, got {l2!r}", hint="e.g. 0.1")
    users, items = np.asarray(users), np.asarray(items)
    r = np.asarray(ratings, dtype=np.float64)
    if not (users.ndim == 1 and users.shape == items.shape == r.shape):
        raise DataError(
            f"users, items and ratings have shapes {users.shape}, {items.shape}, {r.shape}",
            hint="pass three 1-D columns of the same length",
        )
    if r.size == 0:
        raise DataError("no interactions to factorise", hint="check the interactions source")
    if not np.isfinite(r).all():
        raise DataError("ratings hold NaN or inf", hint="drop interactions without a rating")

    validation = None
    if auto:
        l2, validation = _choose_l2(users, items, r, factors, iterations, seed, biases, timestamps)
    return _als(users, items, r, factors, float(l2), iterations, seed, biases, validation)


def _choose_l2(users, items, r, factors, iterations, seed, biases, timestamps):  # type: ignore[no-untyped-def]
    val = validation_split(np.unique(users, return_inverse=True)[1], timestamps)
    tr = ~val
    known = np.isin(users[val], users[tr]) & np.isin(items[val], items[tr])
    vu, vi, vr = users[val][known], items[val][known], r[val][known]
    if len(vr) == 0:  # nothing to validate on (every user has one rating): the usual default
        return 1.0, {"l2": 1.0, "validation_rmse": None, "validation_rows": 0, "candidates": {}}
    low, high = r.min(), r.max()

    def rmse(lam: float) -> float:
        fitted = _als(users[tr], items[tr], r[tr], factors, lam, iterations, seed, biases, None)
        return float(np.sqrt(np.mean((np.clip(fitted.predict(vu, vi), low, high) - vr) ** 2)))

    best, loss, tried = search_l2(rmse)
    return best, {"l2": best, "validation_rmse": loss, "validation_rows": len(vr), "candidates": tried}


def _als(users, items, r, factors, l2, iterations, seed, biases, validation) -> AlsResult:  # type: ignore[no-untyped-def]
    user_ids, u_idx = np.unique(users, return_inverse=True)
    item_ids, i_idx = np.unique(items, return_inverse=True)
    mean = float(r.mean())
    rc = r - mean
    rng = np.random.default_rng(seed)
    V = rng.normal(scale=1.0 / math.sqrt(factors), size=(len(item_ids), factors))
    U = np.zeros((len(user_ids), factors))
    bu, bi = np.zeros(len(user_ids)), np.zeros(len(item_ids))
    rmse: list[float] = []
    for _ in range(iterations):
        if biases:
            ones = np.ones((len(rc), 1))
            S = _ridge_per_group(u_idx, len(user_ids), np.hstack((V[i_idx], ones)), rc - bi[i_idx], l2)
            U, bu = S[:, :factors], S[:, factors]
            S = _ridge_per_group(i_idx, len(item_ids), np.hstack((U[u_idx], ones)), rc - bu[u_idx], l2)
            V, bi = S[:, :factors], S[:, factors]
        else:
            U = _ridge_per_group(u_idx, len(user_ids), V[i_idx], rc, l2)
            V = _ridge_per_group(i_idx, len(item_ids), U[u_idx], rc, l2)
        residual = rc - np.einsum("nd,nd->n", U[u_idx], V[i_idx]) - bu[u_idx] - bi[i_idx]
        rmse.append(float(np.sqrt(np.mean(residual**2))))
    return AlsResult(
        item_ids=item_ids,
        item_factors=V.astype(np.float32),
        user_ids=user_ids,
        user_factors=U.astype(np.float32),
        mean=mean,
        train_rmse=rmse,
        item_bias=bi.astype(np.float32) if biases else None,
        user_bias=bu.astype(np.float32) if biases else None,
        l2=l2,
        validation=validation,
    )


def _ridge_per_group(
    groups: np.ndarray, k: int, F: np.ndarray, target: np.ndarray, l2: float
) -> np.ndarray:
    """Solve (FᵍᵀFᵍ + λI) x_g = Fᵍᵀ t_g for every group g at once."""
    G, b = grouped_moments(groups, k, F, target)
    diag = np.arange(F.shape[1])
    G[:, diag, diag] += l2
    return np.linalg.solve(G, b[:, :, None])[:, :, 0]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positions(ids: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    pos = np.searchsorted(ids, wanted).clip(0, max(len(ids) - 1, 0))
    missing = ids[pos] != wanted
    if missing.any():
        raise NotFoundError(
            f"unknown {what} id {wanted[missing].tolist()[0]!r} (not in the interactions the factors "
            "were trained on)",
            hint=f"fall back to the average {what} for ids unseen at training time",
        )
    return pos
