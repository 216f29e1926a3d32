"""The batched update gives the same bytes however the observations are split into calls: the
live path learns per request and ``models replay`` per chunk of the log, and the replay reports
any byte that differs. (``learn_one``, which the service takes for a single observation, agrees
with it to rounding only: ``np.allclose`` in test_linear.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.models.linear import StateBatch, learn_one, new_user_state
from featurestore.models.state_codec import BatchStateCodec


@pytest.mark.parametrize("objective", ["squared_error", "logistic"])
@pytest.mark.parametrize("d", [3, 16])
def test_any_split_into_calls_gives_the_same_bytes(objective: str, d: int) -> None:
    rng = np.random.default_rng(d)
    users, n = 7, 60
    rows = rng.integers(0, users, n)
    X = rng.normal(size=(n, d))
    y = (rng.random(n) < 0.5).astype(float) if objective == "logistic" else rng.normal(size=n)
    start = StateBatch.from_states([new_user_state(rng.normal(size=d), 2.0) for _ in range(users)])

    one = start.to_states()
    for u, x, label in zip(rows.tolist(), X, y):
        one[u] = learn_one(one[u], x, float(label), objective)  # type: ignore[arg-type]
    whole = start.learn(rows, X, y, objective)  # type: ignore[arg-type]
    np.testing.assert_allclose(whole.w, np.array([s.w for s in one]), rtol=1e-9, atol=1e-12)
    expected = BatchStateCodec.of(d).encode(whole)

    for cuts in ([1, 10, 49], [13, 47], [30]):
        batch = StateBatch(start.w.copy(), start.A_inv.copy(), start.xtx.copy(), start.xty.copy(),
                           start.n.copy(), start.version.copy())
        for lo, hi in zip([0, *cuts], [*cuts, n]):
            if hi > lo:
                batch = batch.learn(rows[lo:hi], X[lo:hi], y[lo:hi], objective)  # type: ignore[arg-type]
        assert BatchStateCodec.of(d).encode(batch) == expected, cuts
