"""Pollers on the registry watcher's thread (``add_poller``): run at every tick, even when the
registry refresh fails; a failing poller is logged once per failure streak and never stops the
others; a bound method is held weakly; with ``interval <= 0`` nothing runs in the background."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.sql_registry import SqlRegistry
from tests.registry.test_watcher import _watcher
from tests.registry.helpers import definitions


@pytest.fixture
def registry(registry_url: str, tmp_path: Path) -> Iterator[SqlRegistry]:
    reg = SqlRegistry(registry_url, "demo")
    reg.apply(definitions(tmp_path / "v1"))
    yield reg
    reg.close()


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.ticked = threading.Event()

    def poll(self) -> None:
        self.calls += 1
        self.ticked.set()
        if self.fail:
            raise OSError("store unreachable")


def _ticks(counter: Counter, n: int, timeout: float = 5.0) -> None:
    target = counter.calls + n
    deadline = time.monotonic() + timeout
    while counter.calls < target:
        assert time.monotonic() < deadline, f"{counter.calls} calls, wanted {target}"
        counter.ticked.wait(0.05)
        counter.ticked.clear()


def test_pollers_run_on_the_thread_and_survive_a_failing_registry_and_each_other(
    registry: SqlRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = _watcher(registry, 0.01)
    good, bad = Counter(), Counter()
    bad.fail = True
    try:
        with caplog.at_level(logging.INFO, logger="registry.watcher"):
            watcher.add_poller(bad.poll)
            watcher.add_poller(good.poll)  # starts the thread: no snapshot read needed
            _ticks(good, 3)

            def down() -> int:
                raise OSError("registry unreachable")

            real = registry.head_version
            registry.head_version = down  # type: ignore[method-assign]
            _ticks(good, 3)  # the registry refresh fails, the pollers still run
            registry.head_version = real  # type: ignore[method-assign]
            assert bad.calls >= 6
            bad.fail = False
            _ticks(bad, 2)
        failed = [r for r in caplog.records if "store unreachable" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.WARNING  # once per streak
        assert any("works again" in r.getMessage() for r in caplog.records)
    finally:
        watcher.close()


def test_a_bound_method_is_held_weakly(registry: SqlRegistry) -> None:
    watcher = _watcher(registry, 0.01)
    try:
        counter = Counter()
        watcher.add_poller(counter.poll)
        _ticks(counter, 1)
        del counter
        gc.collect()
        other = Counter()
        watcher.add_poller(other.poll)
        _ticks(other, 2)
        assert len(watcher._pollers) == 1  # the dropped object's entry went at a tick
    finally:
        watcher.close()


def test_interval_zero_never_polls_in_the_background(registry: SqlRegistry) -> None:
    watcher = _watcher(registry, 0)
    counter = Counter()
    watcher.add_poller(counter.poll)
    watcher.snapshot
    assert watcher._thread is None and counter.calls == 0
