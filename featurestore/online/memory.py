"""The in-memory online store: dicts behind a lock, for unit tests and notebooks.

Stores of the same project opened in one process share one key space, like clients of a server
do, so a materialization and a read that each open their own store see the same data. Nothing
survives the process; ``MemoryOnlineStore.drop_project`` empties a project (e.g. between tests).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from featurestore.online.base import (
    OnlineStore,
    Row,
    ViewVersion,
    check_namespace,
    check_view,
    chunks,
    expiry_cutoff_us,
)


@dataclass
class _KeySpace:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (view, entity_key) -> (event_ts_us, created_ts_us, payload)
    latest: dict[tuple[str, bytes], tuple[int, int, bytes]] = field(default_factory=dict)
    newest: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)  # winning write chunks per view
    blobs: dict[str, dict[bytes, bytes]] = field(default_factory=dict)


_SPACES: dict[str, _KeySpace] = {}
_SPACES_LOCK = threading.Lock()


class MemoryOnlineStore(OnlineStore):
    """Dicts in this process; see the module docstring for sharing between instances.

    >>> store = MemoryOnlineStore("demo")
    >>> store.put_blobs("w", {b"u1": b"\\x01"}); store.get_blobs("w", [b"u1", b"u2"])
    [b'\\x01', None]
    """

    kind: ClassVar[str] = "memory"

    def __init__(self, project: str) -> None:
        super().__init__(project)
        with _SPACES_LOCK:
            self._space = _SPACES.setdefault(project, _KeySpace())

    @staticmethod
    def drop_project(project: str) -> None:
        """Forget everything stored for ``project`` in this process."""
        with _SPACES_LOCK:
            _SPACES.pop(project, None)

    @property
    def address(self) -> str:
        return f"memory://{self.project}"

    def write_latest(self, view: str, rows: Sequence[Row], ttl_seconds: int = 0) -> int:
        self._check_open()
        check_view(view)
        cutoff = expiry_cutoff_us(ttl_seconds)
        space = self._space
        written = 0
        newest: int | None = None
        for chunk in chunks(rows, 10_000):
            with space.lock:
                latest = space.latest
                before = written
                for key, event_ts, created_ts, payload in chunk:
                    if cutoff is not None and event_ts <= cutoff:
                        continue
                    slot = (view, key)
                    current = latest.get(slot)
                    if current is not None and (event_ts, created_ts) < current[:2]:
                        continue
                    latest[slot] = (event_ts, created_ts, payload)
                    written += 1
                    if newest is None or event_ts > newest:
                        newest = event_ts
                if newest is not None and newest > space.newest.get(view, newest - 1):
                    space.newest[view] = newest
                if written > before:
                    space.writes[view] = space.writes.get(view, 0) + 1
        return written

    def read_latest(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        self._check_open()
        get = self._space.latest.get
        out: list[tuple[int, bytes] | None] = []
        for view, key in view_keys:
            found = get((view, key))
            out.append(None if found is None else (found[0], found[2]))
        return out

    def newest_event_ts(self, views: Sequence[str]) -> dict[str, int | None]:
        self._check_open()
        return {view: self._space.newest.get(view) for view in views}

    def view_versions(self, views: Sequence[str]) -> dict[str, ViewVersion]:
        self._check_open()
        space = self._space
        with space.lock:
            return {view: ViewVersion(space.newest.get(view), space.writes.get(view, 0)) for view in views}

    def put_blobs(self, namespace: str, items: Mapping[bytes, bytes]) -> None:
        self._check_open()
        check_namespace(namespace)
        with self._space.lock:
            self._space.blobs.setdefault(namespace, {}).update(
                (bytes(k), bytes(v)) for k, v in items.items()
            )

    def get_blobs(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self._check_open()
        check_namespace(namespace)
        blobs = self._space.blobs.get(namespace, {})
        return [blobs.get(key) for key in keys]

    def delete_namespace(self, namespace: str) -> int:
        self._check_open()
        check_namespace(namespace)
        with self._space.lock:
            return len(self._space.blobs.pop(namespace, {}))

    def compare_and_swap_blobs(
        self, namespace: str, swaps: Mapping[bytes, tuple[bytes | None, bytes]]
    ) -> list[bytes]:
        self._check_open()
        check_namespace(namespace)
        failed = []
        with self._space.lock:
            blobs = self._space.blobs.setdefault(namespace, {})
            for key, (expected, new) in swaps.items():
                if blobs.get(bytes(key)) == expected:
                    blobs[bytes(key)] = bytes(new)
                else:
                    failed.append(bytes(key))
        return failed

    def ping(self) -> None:
        self._check_open()
