"""One watcher per process over the registry database: it publishes an immutable snapshot.

Serving code must never parse YAML or run SQL on a request's time. Three things it needs change
rarely and are changed by other processes: the applied definitions (``apply``), the active
version of each model (``models activate``, ``rollback``) and the newest materialization run of
each view (the feature cache drops a view's rows when a newer run is recorded). The watcher
reads all three, at most once per ``interval`` seconds, on a daemon thread of its own, and
swaps in a new ``RegistrySnapshot``; a request reads the ``snapshot`` attribute and nothing
else. Definitions are re-read only when the head version moved.

``interval <= 0`` means "always fresh": every read of ``snapshot`` refreshes in the caller's
thread (tests, and short CLI runs that must see their own writes at once). A write made by this
process (``apply``, ``train``, ``activate``) calls ``refresh()`` so its effect is visible to the
same process at once; other processes see it within ``interval``.

A failed background refresh keeps the last snapshot (serving goes on with what it had; the
server's ``/health`` reports the registry as down) and is retried at the next tick.

Other shared state that serving follows the same way rides on the same thread: ``add_poller``
registers a callable run at every tick after the refresh (the feature cache polls the online
store's newest event time per view with it, so a write by any process drops the cached rows it
made stale). The watcher knows nothing of what a poller reads.

>>> watcher = RegistryWatcher(registry, model_versions, run_log, interval=1.0)  # doctest: +SKIP
>>> watcher.snapshot.definitions.feature_views  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from registry.definitions import Definitions

if TYPE_CHECKING:
    from registry.model_versions import ModelVersions
    from registry.runs import MaterializationLog
    from registry.sql_registry import SqlRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrySnapshot:
    """What the registry said at ``taken_at`` (``time.monotonic()``): never mutated."""

    version: int
    definitions: Definitions
    active_models: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    run_ids: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: float = float("-inf")


EMPTY = RegistrySnapshot(-1, Definitions())
_WATCHERS: weakref.WeakSet[RegistryWatcher] = weakref.WeakSet()


class RegistryWatcher:
    """Keeps ``snapshot`` at most ``interval`` seconds behind the registry database."""

    def __init__(
        self,
        registry: SqlRegistry,
        model_versions: ModelVersions,
        run_log: MaterializationLog,
        interval: float = 1.0,
    ) -> None:
        self._registry = registry
        self._model_versions = model_versions
        self._run_log = run_log
        self.interval = interval
        self._snapshot = EMPTY
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Copied on write, so the thread iterates a list nobody mutates.
        self._pollers: list[Callable[[], Callable[[], object] | None]] = []
        self._failing: set[int] = set()
        _WATCHERS.add(self)

    @property
    def snapshot(self) -> RegistrySnapshot:
        """The newest snapshot; the first read loads it and starts the watching thread."""
        if self.interval <= 0:
            return self.refresh()
        current = self._snapshot
        if current is EMPTY:
            current = self.refresh()
        if self._thread is None and not self._closed:
            self._start()
        return current

    @property
    def version(self) -> int:
        """The registry version of the snapshot (-1 before the first read)."""
        return self._snapshot.version

    def refresh(self, force: bool = False) -> RegistrySnapshot:
        """Read the registry now and publish the result; ``force`` reloads the definitions even
        when the head version did not move."""
        with self._lock:
            old = self._snapshot
            head = self._registry.head_version()
            definitions = old.definitions
            if force or head != old.version:
                definitions = self._registry.definitions(head)
            new = RegistrySnapshot(
                version=head,
                definitions=definitions,
                active_models=MappingProxyType(self._model_versions.active_versions()),
                run_ids=MappingProxyType(self._run_log.latest_run_ids()),
                taken_at=time.monotonic(),
            )
            self._snapshot = new
            return new

    def add_poller(self, poll: Callable[[], object]) -> None:
        """Also call ``poll()`` on the watching thread at every tick, after the registry refresh
        (which may have failed: pollers run regardless). A bound method is held weakly, so an
        object that is dropped stops being polled. A poll that raises is logged (once until it
        succeeds again) and retried at the next tick. With ``interval <= 0`` there is no thread
        and pollers are never called: the caller polls in its own thread.

        >>> watcher.add_poller(cache.poll)  # doctest: +SKIP
        """
        ref: Callable[[], Callable[[], object] | None]
        if inspect.ismethod(poll):
            ref = weakref.WeakMethod(poll)
        else:
            ref = lambda: poll  # noqa: E731 - a strong reference with the weak one's interface
        self._pollers = [*self._pollers, ref]
        if self.interval > 0 and not self._closed:
            self._start()

    def close(self) -> None:
        """Stop the watching thread for good (the last snapshot stays readable)."""
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="registry-watcher", daemon=True)
            self._thread.start()

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here, and its lock may have been held at the fork:
        # start over (the next read starts a thread), on connections of this process's own.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._registry.engine.dispose(close=False)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep the last snapshot; retry next tick
                logger.warning("registry refresh failed (serving the last snapshot): %s", exc)
            if self._pollers:
                self._poll()

    def _poll(self) -> None:
        dead = False
        for ref in self._pollers:
            poll = ref()
            if poll is None:
                dead = True
                continue
            try:
                poll()
            except Exception as exc:  # noqa: BLE001 - a poller's state is its own; retry next tick
                if id(ref) not in self._failing:
                    self._failing.add(id(ref))
                    logger.warning("%s failed (retried every %s s): %s", _name(poll), self.interval, exc)
            else:
                if id(ref) in self._failing:
                    self._failing.discard(id(ref))
                    logger.info("%s works again", _name(poll))
        if dead:
            self._pollers = [ref for ref in self._pollers if ref() is not None]
            self._failing &= {id(ref) for ref in self._pollers}


def _name(poll: Callable[[], object]) -> str:
    return getattr(poll, "__qualname__", repr(poll))


def _after_fork_in_child() -> None:
    for watcher in list(_WATCHERS):
        watcher._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
