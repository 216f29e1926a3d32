"""Redis hygiene for the streaming tests: streams and keys they create are deleted afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tidy(redis_url: str) -> Iterator[list[tuple[str, Path]]]:
    """Append ``(project, repo)``; afterwards the project's keys and the repo's streams go."""
    import redis

    from tests.streaming.helpers import streams_of

    made: list[tuple[str, Path]] = []
    yield made
    client = redis.Redis.from_url(redis_url)
    try:
        for project, repo in made:
            keys = list(client.scan_iter(match=f"{project}:*", count=1000))
            keys += streams_of(repo)
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
    finally:
        client.close()
