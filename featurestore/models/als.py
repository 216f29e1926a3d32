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

import numpy as np

from featurestore.models.fitting import grouped_moments
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

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings μ + u·v for known (user, item) pairs.

        >>> r = als_factorize(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([5.0, 3.0, 4.0]),
        ...                   factors=2, l2=0.1, iterations=5)
        >>> r.predict(np.array([0]), np.array([0])).shape
        (1,)
        """
        u = _positions(self.user_ids, np.asarray(users), "user")
        i = _positions(self.item_ids, np.asarray(items), "item")
        dots = np.einsum("nd,nd->n", self.user_factors[u], self.item_factors[i], dtype=np.float64)
        return self.mean + dots


def als_factorize(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    factors: int,
    l2: float,
    iterations: int,
    seed: int = 0,
) -> AlsResult:
    """Factorise explicit ratings into user and item factors by regularised ALS.

    Ratings are centred on their global mean μ first, so the factors model deviations from it
    and an item or user with few ratings is pulled towards μ, not towards 0. Each iteration
    solves every user's ridge regression (VᵤᵀVᵤ + λI)u = Vᵤᵀ(r - μ) as one batched solve, then
    every item's the same way; λ is a plain (not rating-count weighted) L2 penalty.

    >>> r = als_factorize(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]),
    ...                   np.array([5.0, 1.0, 4.0, 2.0]), factors=2, l2=0.01, iterations=10)
    >>> r.item_factors.shape, r.item_factors.dtype.name, r.train_rmse[-1] < 0.1
    ((2, 2), 'float32', True)
    """
    if not (_is_int(factors) and factors >= 1):
        raise ConfigError(f"factors must be an integer >= 1, got {factors!r}", hint="e.g. 16")
    if not (_is_int(iterations) and iterations >= 1):
        raise ConfigError(f"iterations must be an integer >= 1, got {iterations!r}", hint="e.g. 10")
    if not (float(l2) > 0 and math.isfinite(l2)):
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

    user_ids, u_idx = np.unique(users, return_inverse=True)
    item_ids, i_idx = np.unique(items, return_inverse=True)
    mean = float(r.mean())
    rc = r - mean
    rng = np.random.default_rng(seed)
    V = rng.normal(scale=1.0 / math.sqrt(factors), size=(len(item_ids), factors))
    U = np.zeros((len(user_ids), factors))
    rmse: list[float] = []
    for _ in range(iterations):
        U = _ridge_per_group(u_idx, len(user_ids), V[i_idx], rc, float(l2))
        V = _ridge_per_group(i_idx, len(item_ids), U[u_idx], rc, float(l2))
        residual = rc - np.einsum("nd,nd->n", U[u_idx], V[i_idx])
        rmse.append(float(np.sqrt(np.mean(residual**2))))
    return AlsResult(
        item_ids=item_ids,
        item_factors=V.astype(np.float32),
        user_ids=user_ids,
        user_factors=U.astype(np.float32),
        mean=mean,
        train_rmse=rmse,
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
