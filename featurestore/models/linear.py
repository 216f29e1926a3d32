"""Per-user linear models over materialized item features (the Velox model).

    score(user, item) = w_user · x,   x = [f(item), user features, request features, 1.0]

``f(item)`` changes slowly and is materialized; ``w_user`` is small (d numbers) and learns online.
The maths, in one place (docs/model-state.md has the derivations):

Offline fitting (the average user, every user at once) is in ``models.fitting``.

* **Average user** (cold start): ridge over every user's rows pooled, centred on zero, with the
  bias (last column) *not* penalised, so the average user predicts the overall label mean
  instead of one shrunk towards zero: w_avg = (XᵀX + λM)⁻¹ Xᵀy, M = diag(1, ..., 1, 0).
* **Per-user ridge centred on the average user**: minimise ||X_u w - y_u||² + λ||w - w_avg||²,
  so A_u = X_uᵀX_u + λI, b_u = X_uᵀy_u + λ w_avg, w_u = A_u⁻¹ b_u. Here *every* coordinate is
  penalised, the bias included: a user's bias is shrunk towards the average user's bias, and a
  user never seen has A = λI, b = λ w_avg, hence w = w_avg exactly.
* **Online updates**, one rule for both objectives. With η = w·x:
  squared error p = η, s = 1; logistic p = σ(η), s = p(1 - p) (an online Newton / Laplace step).
  Sherman–Morrison on A⁻¹ with √s·x, then w += A⁻¹_new x (y - p). The sufficient statistics
  accumulate xtx += s x xᵀ and xty += x (s η + y - p) (= x y for squared error), which keeps
  w = (λI + xtx)⁻¹(λ w_avg + xty) true after every step, so ``exact_solution`` can recompute
  the state from them (and re-centre every user on a retrained average user without a replay).
* **LinUCB**: bonus = α √(xᵀ A⁻¹ x).

States are never modified in place: every function returns new arrays, so a state read from a
store can be compared-and-swapped on its ``version``. The d×d matrices are kept *exactly*
symmetric (outer products are formed before they are scaled), which lets the codec store one
triangle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from registry.errors import ConfigError, DataError

Objective = Literal["squared_error", "logistic"]
OBJECTIVES: tuple[str, ...] = ("squared_error", "logistic")

# Floats per (users × d × d) temporary in one batched update step: ~2 MB keeps it in cache;
# one big step over all users was 2x slower at d=64, and half of this (two blocks of 512 users
# at d=16) made twice the numpy calls for nothing at d=16 (bench/bench_update.py).
_ROUND_BLOCK_FLOATS = 1 << 18


@dataclass(frozen=True, slots=True, eq=False)
class UserState:
    """One user's model: weights, inverse precision and the sufficient statistics behind them.

    ``xtx``/``xty`` are Σ s x xᵀ and Σ x (s η + y - p) (plain XᵀX and Xᵀy for squared error);
    ``n`` counts observations; ``version`` counts updates (for optimistic concurrency).
    Treat the arrays as read-only; the functions here always return a new state.

    >>> new_user_state(np.zeros(2), l2=1.0).A_inv.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """

    w: np.ndarray
    A_inv: np.ndarray
    xtx: np.ndarray
    xty: np.ndarray
    n: int = 0
    version: int = 0

    @property
    def d(self) -> int:
        return int(self.w.shape[0])


@dataclass(eq=False)
class StateBatch:
    """Many users' states stacked: w (k, d), A_inv/xtx (k, d, d), xty (k, d), n/version (k,).

    >>> batch = StateBatch.from_states([new_user_state(np.zeros(2), 1.0)] * 3)
    >>> batch.A_inv.shape
    (3, 2, 2)
    """

    w: np.ndarray
    A_inv: np.ndarray
    xtx: np.ndarray
    xty: np.ndarray
    n: np.ndarray
    version: np.ndarray

    @classmethod
    def from_states(cls, states: Sequence[UserState]) -> StateBatch:
        if not states:
            raise DataError("cannot stack zero user states", hint="pass at least one state")
        d = states[0].d
        if any(s.d != d for s in states):
            raise DataError(
                "user states of different dimensions cannot be stacked",
                hint=f"every state must have d={d} (the first one's)",
            )
        # np.array over a list of equal-shape arrays copies like np.stack, about twice as fast.
        return cls(
            w=np.array([s.w for s in states], dtype=np.float64),
            A_inv=np.array([s.A_inv for s in states], dtype=np.float64),
            xtx=np.array([s.xtx for s in states], dtype=np.float64),
            xty=np.array([s.xty for s in states], dtype=np.float64),
            n=np.array([s.n for s in states], dtype=np.int64),
            version=np.array([s.version for s in states], dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.w.shape[0])

    def to_states(self) -> list[UserState]:
        """Split into UserStates (views into this batch's arrays, which are then frozen)."""
        for a in (self.w, self.A_inv, self.xtx, self.xty):
            a.flags.writeable = False
        # Iterating an array yields its rows as views at C speed (indexing one by one is ~4x slower).
        return list(map(UserState, self.w, self.A_inv, self.xtx, self.xty, self.n.tolist(), self.version.tolist()))

    def take(self, index: np.ndarray) -> StateBatch:
        """The states at ``index`` as a new batch (copies)."""
        return StateBatch(self.w[index], self.A_inv[index], self.xtx[index], self.xty[index],
                          self.n[index], self.version[index])

    def put(self, index: np.ndarray, values: StateBatch) -> None:
        """Overwrite the states at ``index`` with ``values`` (in place)."""
        self.w[index], self.A_inv[index], self.xtx[index] = values.w, values.A_inv, values.xtx
        self.xty[index], self.n[index], self.version[index] = values.xty, values.n, values.version

    def concat(self, other: StateBatch) -> StateBatch:
        """This batch followed by ``other``, as a new batch."""
        return StateBatch(*(np.concatenate((a, b)) for a, b in zip(
            (self.w, self.A_inv, self.xtx, self.xty, self.n, self.version),
            (other.w, other.A_inv, other.xtx, other.xty, other.n, other.version))))

    def first(self) -> UserState:
        """The first state as views (``to_states`` would freeze the batch, which is written again)."""
        return UserState(self.w[0], self.A_inv[0], self.xtx[0], self.xty[0], int(self.n[0]), int(self.version[0]))

    def learn(
        self, rows: np.ndarray, X: np.ndarray, y: np.ndarray, objective: Objective = "squared_error"
    ) -> StateBatch:
        """Apply observation i to state ``rows[i]``, in order; return a new batch.

        Vectorised across distinct users; a user with several observations is updated once per
        "round", so the result equals applying them one by one with ``learn_one``.
        """
        out = StateBatch(
            self.w.copy(),
            self.A_inv.copy(),
            self.xtx.copy(),
            self.xty.copy(),
            self.n.copy(),
            self.version.copy(),
        )
        _learn_in_place(out, rows, X, y, objective)
        return out


def local_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values in first-appearance order, each row's index into them).

    >>> [a.tolist() for a in local_rows(np.array([5, 3, 5]))]
    [[5, 3], [0, 1, 0]]
    """
    uniq, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inverse]


def design_matrix(*blocks: np.ndarray, bias: bool = True) -> np.ndarray:
    """Concatenate feature blocks (item, user, request) and append the bias column of 1.0.

    Works on one vector (1-D blocks) or many rows (2-D blocks); the bias is always last, which
    is what ``fit_average(bias=True)`` expects.

    >>> design_matrix(np.array([[2.0], [3.0]]), np.array([[5.0], [7.0]])).tolist()
    [[2.0, 5.0, 1.0], [3.0, 7.0, 1.0]]
    """
    parts = [np.asarray(b, dtype=np.float64) for b in blocks]
    if bias:
        lead = parts[0].shape[:-1] if parts else ()
        parts.append(np.ones(lead + (1,)))
    return np.concatenate(parts, axis=-1)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Numerically stable logistic function (no overflow for large |z|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def new_user_state(w_avg: np.ndarray, l2: float) -> UserState:
    """The state of a user never seen: A = λI, b = λ w_avg, so w = w_avg exactly.

    >>> new_user_state(np.array([0.5, -1.0]), l2=2.0).w.tolist()
    [0.5, -1.0]
    """
    l2 = check_l2(l2)
    w = as_vector(w_avg, "w_avg").copy()
    d = w.shape[0]
    return UserState(w=w, A_inv=np.eye(d) / l2, xtx=np.zeros((d, d)), xty=np.zeros(d))


def learn_one(
    state: UserState, x: np.ndarray, y: float, objective: Objective = "squared_error"
) -> UserState:
    """Fold one observation into a user's state in O(d²); return the new state.

    >>> s = learn_one(new_user_state(np.zeros(2), 1.0), np.array([1.0, 1.0]), 3.0)
    >>> s.w.tolist(), s.n, s.version
    ([1.0, 1.0], 1, 1)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape != state.w.shape:
        raise DataError(
            f"feature vector has shape {x.shape}, the model expects ({state.d},)",
            hint="build x with design_matrix() from the model's features",
        )
    y = float(y)
    eta = float(state.w @ x)
    squared = objective == "squared_error"
    if squared:
        p, s, coef = eta, 1.0, y
    elif objective == "logistic":
        if y != 0.0 and y != 1.0:
            raise DataError(f"a logistic label must be 0 or 1, got {y!r}", hint="map labels to 0/1")
        p = float(sigmoid(eta))
        s = p * (1.0 - p)
        coef = s * eta + (y - p)
    else:
        raise bad_objective(objective)
    Ax = state.A_inv @ x
    q = float(x @ Ax)
    # q is finite only if every entry of x is, so this one check guards the stored state.
    if not (math.isfinite(q) and math.isfinite(y)):
        raise DataError("the feature vector or label is not finite", hint="drop NaN/inf inputs")
    denom = 1.0 + s * q
    # New arrays, each written in place once allocated: one temporary per result, no more. The
    # outer products are formed before they are scaled, so both matrices stay exactly symmetric.
    A_inv = Ax[:, None] * Ax
    A_inv *= s / denom
    np.subtract(state.A_inv, A_inv, out=A_inv)
    xtx = x[:, None] * x
    if not squared:
        xtx *= s
    xtx += state.xtx
    w = Ax * ((y - p) / denom)
    w += state.w
    xty = x * coef
    xty += state.xty
    return UserState(w, A_inv, xtx, xty, state.n + 1, state.version + 1)


def learn_many(
    states: Sequence[UserState],
    X: np.ndarray,
    y: np.ndarray,
    objective: Objective = "squared_error",
) -> list[UserState]:
    """Apply observation i to ``states[i]``, in order, vectorised across distinct users.

    A user with several observations appears as the *same* ``UserState`` object several times;
    each entry of the result is that user's state after all of its observations, so the result
    equals calling ``learn_one`` one by one. (For stacked states, use ``StateBatch.learn``.)

    >>> s = new_user_state(np.zeros(2), 1.0)
    >>> out = learn_many([s, s], np.ones((2, 2)), np.array([1.0, 2.0]))
    >>> out[0] is out[1], out[0].n
    (True, 2)
    """
    check_objective(objective)
    if len(states) == 0:
        return []
    # Distinct states in first-appearance order, and each observation's index into them.
    ids = np.fromiter(map(id, states), dtype=np.int64, count=len(states))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rows = rank[inverse]
    distinct = [states[i] for i in first[order].tolist()]
    batch = StateBatch.from_states(distinct)  # from_states copies, so learning in place is safe
    _learn_in_place(batch, rows, X, y, objective)
    new = batch.to_states()
    return [new[j] for j in rows.tolist()]


def predict_many(w: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Scores w·x for many items: one matrix-vector product. For logistic models these are
    margins; ``sigmoid`` turns them into probabilities (the ranking is the same).

    >>> predict_many(np.array([1.0, 2.0]), np.array([[1.0, 1.0], [0.0, 1.0]])).tolist()
    [3.0, 2.0]
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != np.shape(w)[0]:
        raise DataError(
            f"X has shape {X.shape}, expected (n, {np.shape(w)[0]})",
            hint="build item rows with the model's features",
        )
    return X @ w


def ucb_bonus(A_inv: np.ndarray, X: np.ndarray, alpha: float) -> np.ndarray:
    """LinUCB exploration bonus α √(xᵀA⁻¹x) for each row of X, vectorised.

    >>> ucb_bonus(np.eye(2) / 4.0, np.array([[2.0, 0.0], [0.0, 0.0]]), alpha=2.0).tolist()
    [2.0, 0.0]
    """
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ConfigError(
            f"alpha must be a finite number >= 0, got {alpha!r}",
            hint="set exploration.alpha, e.g. 1.0",
        )
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != A_inv.shape[0]:
        raise DataError(
            f"X has shape {X.shape}, expected (n, {A_inv.shape[0]})",
            hint="build item rows with the model's features",
        )
    q = np.einsum("ij,ij->i", X @ A_inv, X)
    return alpha * np.sqrt(np.maximum(q, 0.0))  # tiny negatives are rounding, not variance


def exact_solution(state: UserState, l2: float, w_avg: np.ndarray) -> UserState:
    """Recompute w and A⁻¹ from the sufficient statistics (removes Sherman–Morrison drift, or
    re-centres the user on a retrained average user). ``n`` and ``version`` are kept.

    >>> s = learn_one(new_user_state(np.zeros(2), 1.0), np.array([1.0, 1.0]), 3.0)
    >>> exact_solution(s, 1.0, np.zeros(2)).w.round(12).tolist()
    [1.0, 1.0]
    """
    l2 = check_l2(l2)
    w_avg = as_vector(w_avg, "w_avg", state.d)
    A = state.xtx + l2 * np.eye(state.d)
    w = np.linalg.solve(A, l2 * w_avg + state.xty)
    return UserState(w, symmetric(np.linalg.inv(A)), state.xtx, state.xty, state.n, state.version)


# --- internals ---------------------------------------------------------------------------------


def _learn_in_place(
    batch: StateBatch, rows: np.ndarray, X: np.ndarray, y: np.ndarray, objective: str
) -> None:
    check_objective(objective)
    X = as_matrix(X, "X", batch.w.shape[1])
    y = as_labels(y, X.shape[0], objective)
    rows = np.asarray(rows, dtype=np.intp)
    k = len(batch)
    if rows.shape != (X.shape[0],) or (rows.size and (rows.min() < 0 or rows.max() >= k)):
        raise DataError(
            f"expected one state index in [0, {k}) per row of X ({X.shape[0]} rows), "
            f"got an array of shape {rows.shape}",
            hint="pass one state per observation",
        )
    if rows.size:
        _learn_rounds(batch, rows, X, y, objective)


def _learn_rounds(
    batch: StateBatch, rows: np.ndarray, X: np.ndarray, y: np.ndarray, objective: str
) -> None:
    """In place: round r applies every user's r-th observation, batched over those users.

    Users are split into blocks (by state index) whose round temporaries stay within the CPU
    cache; each (block, round) is one vectorised step. Blocks are independent, so this keeps
    every user's observations in order.
    """
    m, d = X.shape
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_rows[1:] != sorted_rows[:-1])))
    rank = np.empty(m, dtype=np.intp)
    rank[order] = np.arange(m) - np.repeat(starts, np.diff(np.append(starts, m)))
    block = max(1, _ROUND_BLOCK_FLOATS // (d * d))
    key = (rows // block) * (int(rank.max()) + 1) + rank
    by_key = np.argsort(key, kind="stable")
    cuts = np.flatnonzero(np.diff(key[by_key])) + 1
    bounds = np.concatenate(([0], cuts, [m]))
    logistic = objective == "logistic"
    # Observations in step order once, so each step reads contiguous slices (views).
    rows_k, X_k, y_k = rows[by_key], X[by_key], y[by_key]
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r], bounds[r + 1]
        u, x, yy = rows_k[lo:hi], X_k[lo:hi], y_k[lo:hi]
        W, Ai = batch.w[u], batch.A_inv[u]
        eta = np.einsum("md,md->m", W, x)
        Ax = np.matmul(Ai, x[:, :, None])[:, :, 0]
        q = np.einsum("md,md->m", x, Ax)
        # Ai, W and the gathered statistics are copies (fancy indexing): update them in place,
        # then scatter them back; outer products are formed before they are scaled (symmetry).
        # einsum forms an outer product with one multiplication per cell, bit for bit what
        # broadcasting gives, in ~0.7x its time at d=16 (bench/bench_update.py).
        outer = np.einsum("mi,mj->mij", Ax, Ax)
        xx = np.einsum("mi,mj->mij", x, x)
        if logistic:
            p = sigmoid(eta)
            s = p * (1.0 - p)
            denom = 1.0 + s * q
            outer *= (s / denom)[:, None, None]
            xx *= s[:, None, None]
            c = s * eta + (yy - p)
        else:
            p = eta
            denom = 1.0 + q
            outer *= (1.0 / denom)[:, None, None]
            c = yy
        np.subtract(Ai, outer, out=Ai)
        batch.A_inv[u] = Ai
        xx += batch.xtx[u]
        batch.xtx[u] = xx
        xy = x * c[:, None]
        xy += batch.xty[u]
        batch.xty[u] = xy
        step = Ax * ((yy - p) / denom)[:, None]
        step += W
        batch.w[u] = step
    per_user = np.bincount(rows, minlength=len(batch))
    batch.n += per_user
    batch.version += per_user


def symmetric(M: np.ndarray) -> np.ndarray:
    # (a + b) / 2 == (b + a) / 2 bit for bit, so the result is exactly symmetric.
    return 0.5 * (M + np.swapaxes(M, -1, -2))


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise bad_objective(objective)


def bad_objective(objective: object) -> ConfigError:
    return ConfigError(
        f"unknown objective {objective!r}", hint="use one of " + ", ".join(OBJECTIVES)
    )


def check_l2(l2: float) -> float:
    l2 = float(l2)
    if not (l2 > 0 and math.isfinite(l2)):
        raise ConfigError(f"l2 must be a finite number > 0, got {l2!r}", hint="e.g. l2: 1.0")
    return l2


def as_matrix(X: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or (d is not None and X.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise DataError(
            f"{name} has shape {X.shape}, expected {want}",
            hint="build rows with design_matrix() from the model's features",
        )
    if not np.isfinite(X).all():
        raise DataError(f"{name} holds NaN or inf", hint="drop or impute non-finite features")
    return X


def as_vector(v: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or (d is not None and v.shape[0] != d):
        raise DataError(
            f"{name} has shape {v.shape}, expected ({d if d is not None else 'd'},)",
            hint="use the weights of a model with the same features",
        )
    return v


def as_labels(y: np.ndarray, n: int, objective: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (n,):
        raise DataError(f"y has shape {y.shape}, expected ({n},)", hint="pass one label per row")
    if not np.isfinite(y).all():
        raise DataError("y holds NaN or inf", hint="drop rows without a finite label")
    if objective == "logistic" and not np.isin(y, (0.0, 1.0)).all():
        raise DataError("logistic labels must be 0 or 1", hint="map labels to 0/1")
    return y
