"""Choosing a ridge penalty: ``l2: auto`` for the ALS feature job and the per-user models.

Both use the same recipe, so a user tunes nothing by hand:

1. a **per-user chronological validation slice** of the training data (``validation_split``):
   each user's newest ``VALIDATION_SHARE`` of rows (at least one, users with two rows or more),
   the way the model is used: it has seen a user's past and predicts the user's next ratings;
2. fit on the rest for penalties on the grid ``L2_GRID`` (a factor of about 3 apart), walking
   from λ = 1 towards the better neighbour while the validation loss falls (``search_l2``): the
   loss is close to unimodal in log λ, so this needs 3 to 5 fits where the whole grid needs 11;
3. refit on everything with the best λ and record it with its validation loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

#: The penalties ``l2: auto`` may choose, in increasing order.
L2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
#: The share of each user's newest rows held out to choose λ.
VALIDATION_SHARE = 0.1
_START = L2_GRID.index(1.0)


def validation_split(groups: np.ndarray, timestamps: np.ndarray | None = None,
                     share: float = VALIDATION_SHARE) -> np.ndarray:
    """A mask of the validation rows: each group's newest ``share`` of rows (at least one) for
    every group with two rows or more; equal times (and no timestamps) keep the input order.

    >>> validation_split(np.array([0, 0, 0, 1, 2, 2]), np.array([3, 1, 2, 5, 1, 1])).tolist()
    [True, False, False, False, False, True]
    """
    groups = np.asarray(groups)
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=bool)
    ts = np.arange(n) if timestamps is None else np.asarray(timestamps)
    order = np.lexsort((np.arange(n), ts, groups))
    g = groups[order]
    starts = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    sizes = np.diff(np.append(starts, n))
    held = np.where(sizes >= 2, np.maximum(1, np.floor(share * sizes)), 0).astype(np.intp)
    from_end = np.repeat(starts + sizes, sizes) - np.arange(n) - 1
    mask = np.zeros(n, dtype=bool)
    mask[order] = from_end < np.repeat(held, sizes)
    return mask


def search_l2(loss_of: Callable[[float], float]) -> tuple[float, float, dict[str, float]]:
    """(best λ, its loss, every λ tried -> loss): a walk on ``L2_GRID`` from 1.0 towards the
    better neighbour while the loss falls.

    >>> search_l2(lambda lam: (math.log10(lam) - 1.0) ** 2)[:2]
    (10.0, 0.0)
    """
    tried: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in tried:
            loss = float(loss_of(L2_GRID[i]))
            tried[i] = loss if math.isfinite(loss) else math.inf
        return tried[i]

    i = _START
    while True:
        best = min((j for j in (i - 1, i, i + 1) if 0 <= j < len(L2_GRID)), key=lambda j: (at(j), j != i))
        if best == i:
            break
        i = best
    return L2_GRID[i], tried[i], {f"{L2_GRID[j]:g}": tried[j] for j in sorted(tried)}
