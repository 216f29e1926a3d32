"""One conformance suite for the SQL registry, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from registry.errors import BreakingChangeError, ConflictError, NotFoundError
from registry.sql_registry import SqlRegistry
from tests.registry.helpers import BASE, definitions


@pytest.fixture
def registry(registry_url: str) -> SqlRegistry:
    reg = SqlRegistry(registry_url, "proj")
    yield reg
    reg.close()


def test_empty_registry_is_version_zero(registry: SqlRegistry) -> None:
    assert registry.head_version() == 0
    assert registry.versions() == []
    assert list(registry.definitions().objects()) == []


def test_apply_records_a_version_with_metadata(registry: SqlRegistry, tmp_path: Path) -> None:
    defs = definitions(tmp_path)
    plan, info = registry.apply(defs, applied_by="alice", git_commit="abc123", message="first")
    assert info is not None and info.version == 1
    assert [c.action for c in plan.changes] == ["added"] * 4
    (stored,) = registry.versions()
    assert (stored.version, stored.applied_by, stored.git_commit, stored.message) == (
        1, "alice", "abc123", "first",
    )
    assert stored.content_hash == defs.content_hash()
    assert stored.applied_at.tzinfo is not None
    assert registry.definitions().canonical() == defs.canonical()


def test_reapplying_the_same_definitions_changes_nothing(registry: SqlRegistry, tmp_path: Path) -> None:
    defs = definitions(tmp_path)
    registry.apply(defs)
    plan, info = registry.apply(defs)
    assert plan.empty and info is None
    assert registry.head_version() == 1


def test_every_earlier_version_stays_readable(registry: SqlRegistry, tmp_path: Path) -> None:
    v1 = definitions(tmp_path)
    registry.apply(v1)
    v2 = definitions(tmp_path, BASE.replace("ttl: 1d", "ttl: 2d") + """\
  - name: svc2
    features: [user_stats:clicks]
""")
    registry.apply(v2)
    v3 = definitions(tmp_path, BASE.replace("ttl: 1d", "ttl: 3d"))
    registry.apply(v3, allow_breaking=True)  # removing svc2 is breaking
    assert registry.head_version() == 3
    assert registry.definitions(1).canonical() == v1.canonical()
    assert registry.definitions(2).canonical() == v2.canonical()
    assert registry.definitions(3).canonical() == v3.canonical()
    assert registry.definitions(2).feature_views["user_stats"].ttl == "2d"
    assert "svc2" not in registry.definitions(3).feature_services
    with pytest.raises(NotFoundError):
        registry.definitions(4)


def test_breaking_change_is_refused_unless_allowed(registry: SqlRegistry, tmp_path: Path) -> None:
    registry.apply(definitions(tmp_path))
    changed = definitions(tmp_path, BASE.replace("{name: score, dtype: float32}", "{name: score, dtype: string}"))
    plan = registry.plan(changed)
    assert [c.name for c in plan.breaking] == ["user_stats"]
    assert any("dtype float32 -> string" in d for d in plan.breaking[0].details)
    with pytest.raises(BreakingChangeError):
        registry.apply(changed)
    assert registry.head_version() == 1
    _, info = registry.apply(changed, allow_breaking=True)
    assert info is not None and info.version == 2


def test_adding_a_feature_is_not_breaking(registry: SqlRegistry, tmp_path: Path) -> None:
    registry.apply(definitions(tmp_path))
    added = definitions(tmp_path, BASE.replace(
        "      - {name: score, dtype: float32}",
        "      - {name: score, dtype: float32}\n      - {name: extra, dtype: float64}",
    ))
    plan, info = registry.apply(added)
    assert not plan.breaking and info is not None
    assert plan.changes[0].details == ("feature extra added (float64)",)


def test_expected_version_guards_a_stale_plan(registry: SqlRegistry, tmp_path: Path) -> None:
    registry.apply(definitions(tmp_path))
    with pytest.raises(ConflictError):
        registry.apply(definitions(tmp_path, BASE.replace("1d", "5d")), expected_version=0)
    assert registry.head_version() == 1


def test_concurrent_applies_never_lose_an_update(registry_url: str, tmp_path: Path) -> None:
    """Many writers race from the same version: exactly one wins each round, the losers get
    ConflictError, and after retrying every writer's change is recorded in its own version."""
    SqlRegistry(registry_url, "race").close()  # create the schema once, before the race
    writers = 4
    variants = [definitions(tmp_path / str(i), BASE.replace("ttl: 1d", f"ttl: {i + 1}h")) for i in range(writers)]
    barrier = threading.Barrier(writers)
    conflicts: list[int] = []
    applied: list[int] = []

    def writer(i: int) -> None:
        reg = SqlRegistry(registry_url, "race")
        barrier.wait()
        while True:
            try:
                _, info = reg.apply(variants[i])
                applied.append(info.version if info else -1)
                break
            except ConflictError:
                conflicts.append(i)
        reg.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reg = SqlRegistry(registry_url, "race")
    versions = reg.versions()
    assert sorted(applied) == list(range(1, writers + 1))
    assert [v.version for v in versions] == list(range(1, writers + 1))
    # Each version holds exactly one writer's ttl: nothing was overwritten by a lost update.
    ttls = {reg.definitions(v.version).feature_views["user_stats"].ttl for v in versions}
    assert ttls == {f"{i + 1}h" for i in range(writers)}
    reg.close()


def test_projects_are_isolated(registry_url: str, tmp_path: Path) -> None:
    a, b = SqlRegistry(registry_url, "a"), SqlRegistry(registry_url, "b")
    a.apply(definitions(tmp_path))
    assert b.head_version() == 0
    assert list(b.definitions().objects()) == []
    a.close()
    b.close()
