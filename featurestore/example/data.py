"""A MovieLens-like generator: users and items with latent factors, Zipf-distributed item
popularity, user activity that is heavy-tailed, and user tastes that drift over time.

rating(u, i, t) = mu + b_u + b_i + <p_u(t), q_i> + noise, clipped to [1, 5]; p_u(t) moves from
p_u(0) towards a second taste vector as t goes from the first to the last day, so a model trained
on the first half is measurably stale on the second half (what online updates fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np


@dataclass(frozen=True)
class RatingsConfig:
    users: int = 2_000
    items: int = 500
    ratings: int = 100_000
    days: int = 60
    factors: int = 8
    drift: float = 0.6
    noise: float = 0.5
    zipf: float = 1.1
    new_user_share: float = 0.2
    start: datetime = datetime(2026, 1, 1, tzinfo=timezone.utc)
    seed: int = 7


@dataclass(frozen=True)
class Ratings:
    user_id: np.ndarray  # int64
    item_id: np.ndarray  # int64
    rating: np.ndarray  # float64
    event_ts: np.ndarray  # datetime64[us], UTC
    item_factors: np.ndarray  # (items, factors) ground truth, float32
    config: RatingsConfig

    def to_arrow(self):  # type: ignore[no-untyped-def]
        import pyarrow as pa

        return pa.table(
            {
                "user_id": pa.array(self.user_id, pa.int64()),
                "item_id": pa.array(self.item_id, pa.int64()),
                "rating": pa.array(self.rating, pa.float64()),
                "event_ts": pa.array(self.event_ts, pa.timestamp("us", tz="UTC")),
            }
        )


def generate_ratings(config: RatingsConfig = RatingsConfig()) -> Ratings:
    """Ratings sorted by time. Deterministic for a given config.

    >>> r = generate_ratings(RatingsConfig(users=50, items=20, ratings=500, days=10))
    >>> len(r.rating), float(r.rating.min()) >= 1.0
    (500, True)
    """
    rng = np.random.default_rng(config.seed)
    k = config.factors
    scale = 1.0 / np.sqrt(k)
    p0 = rng.normal(0, scale, (config.users, k))
    p1 = rng.normal(0, scale, (config.users, k))
    q = rng.normal(0, 1.0, (config.items, k))
    user_bias = rng.normal(0, 0.3, config.users)
    item_bias = rng.normal(0, 0.3, config.items)

    # Zipf popularity over a random permutation of items; heavy-tailed user activity.
    item_weights = 1.0 / np.arange(1, config.items + 1) ** config.zipf
    item_weights = item_weights[rng.permutation(config.items)]
    item_weights /= item_weights.sum()
    user_weights = rng.lognormal(0, 1.0, config.users)
    # Some users only arrive in the second half: the "new users" most traffic comes from.
    first_day = np.zeros(config.users)
    late = rng.random(config.users) < config.new_user_share
    first_day[late] = rng.uniform(config.days / 2, config.days * 0.9, late.sum())

    t = np.sort(rng.uniform(0, config.days, config.ratings))
    users = np.empty(config.ratings, dtype=np.int64)
    # Sample users among those active at each time, in day-sized chunks for speed.
    for day in range(config.days):
        mask = (t >= day) & (t < day + 1)
        n = int(mask.sum())
        if n == 0:
            continue
        w = np.where(first_day <= day, user_weights, 0.0)
        users[mask] = rng.choice(config.users, n, p=w / w.sum())
    items = rng.choice(config.items, config.ratings, p=item_weights)

    frac = (t / config.days)[:, None]
    taste = (1 - config.drift * frac) * p0[users] + config.drift * frac * p1[users]
    raw = (
        3.5
        + user_bias[users]
        + item_bias[items]
        + np.einsum("ij,ij->i", taste, q[items])
        + rng.normal(0, config.noise, config.ratings)
    )
    rating = np.clip(raw, 1.0, 5.0)
    start_us = int(config.start.timestamp() * 1_000_000)
    ts = (start_us + (t * 86_400 * 1_000_000).astype(np.int64)).astype("datetime64[us]")
    return Ratings(
        user_id=users + 1,
        item_id=items.astype(np.int64) + 1,
        rating=rating,
        event_ts=ts,
        item_factors=q.astype(np.float32),
        config=config,
    )


def day_of(config: RatingsConfig, day: float) -> datetime:
    return config.start + timedelta(days=day)
