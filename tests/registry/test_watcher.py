"""The registry watcher: one immutable snapshot per process, refreshed off the request path, on
SQLite and PostgreSQL; a fork, a close and a failed refresh leave it usable."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.model_versions import ModelVersions
from registry.runs import MaterializationLog
from registry.sql_registry import SqlRegistry
from registry.watcher import RegistryWatcher
from tests.registry.helpers import BASE, definitions


@pytest.fixture
def registry(registry_url: str, tmp_path: Path) -> Iterator[SqlRegistry]:
    reg = SqlRegistry(registry_url, "demo")
    reg.apply(definitions(tmp_path / "v1"))
    yield reg
    reg.close()


def apply_v2(registry: SqlRegistry, tmp_path: Path) -> None:
    registry.apply(definitions(tmp_path / "v2", BASE.replace("ttl: 1d", "ttl: 2d")))


def _watcher(registry: SqlRegistry, interval: float) -> RegistryWatcher:
    return RegistryWatcher(registry, ModelVersions(registry.engine, "demo"), MaterializationLog(registry.engine, "demo"), interval)


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "registry-watcher"]


def test_a_request_reads_an_attribute_and_the_thread_follows_the_registry(registry: SqlRegistry, tmp_path: Path) -> None:
    watcher = _watcher(registry, 0.05)
    try:
        first = watcher.snapshot
        assert first.version == 1 and watcher.snapshot is first  # no read of the database
        assert len(_threads()) >= 1
        apply_v2(registry, tmp_path)
        deadline = time.monotonic() + 10
        while watcher.snapshot.version != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watcher.snapshot.version == 2
        assert first.version == 1  # snapshots are never mutated
    finally:
        watcher.close()


def test_interval_zero_reads_the_database_on_every_access(registry: SqlRegistry, tmp_path: Path) -> None:
    watcher = _watcher(registry, 0)
    assert watcher.snapshot.version == 1
    apply_v2(registry, tmp_path)
    assert watcher.snapshot.version == 2
    assert not watcher._thread  # nothing runs in the background


def test_close_stops_the_thread_for_good(registry: SqlRegistry) -> None:
    before = len(_threads())
    watcher = _watcher(registry, 0.05)
    watcher.snapshot
    watcher.close()
    watcher.snapshot  # a read after close starts nothing
    time.sleep(0.1)
    assert len(_threads()) == before and watcher.snapshot.version == 1


def test_a_failed_refresh_keeps_the_last_snapshot(registry: SqlRegistry, caplog: pytest.LogCaptureFixture) -> None:
    watcher = _watcher(registry, 0.02)
    try:
        good = watcher.snapshot

        def down() -> int:
            raise OSError("registry unreachable")

        registry.head_version = down  # type: ignore[method-assign]
        time.sleep(0.2)
        assert watcher.snapshot is good
        assert "registry refresh failed" in caplog.text
    finally:
        watcher.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_fork_while_the_thread_holds_its_lock_leaves_the_child_working(registry: SqlRegistry) -> None:
    watcher = _watcher(registry, 0.05)
    try:
        watcher.snapshot
        real = registry.head_version

        def slow() -> int:  # a slow query: the thread is inside refresh(), holding the lock
            time.sleep(0.5)
            return real()

        registry.head_version = slow  # type: ignore[method-assign]
        deadline = time.monotonic() + 5
        while not watcher._lock.locked() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert watcher._lock.locked()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            signal.alarm(10)
            registry.head_version = real  # type: ignore[method-assign]
            ok = watcher.refresh().version == 1 and watcher.snapshot.version == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
    finally:
        registry.head_version = real  # type: ignore[method-assign]
        watcher.close()
