"""An in-process cache of the applied definitions for hot paths.

Serving code must never parse YAML or query the registry per request. The cache answers from
memory and checks the registry's head version at most once per ``refresh_seconds``; only when the
version moved does it reload the definitions.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from registry.definitions import Definitions


class RegistryCache:
    def __init__(
        self,
        head_version: Callable[[], int],
        load: Callable[[int], Definitions],
        refresh_seconds: float = 5.0,
    ) -> None:
        self._head_version = head_version
        self._load = load
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._version = -1
        self._definitions = Definitions()
        self._checked_at = float("-inf")

    @property
    def version(self) -> int:
        return self._version

    def get(self) -> Definitions:
        """The cached definitions; at most one cheap version check per refresh interval."""
        if time.monotonic() - self._checked_at >= self.refresh_seconds:
            self.refresh()
        return self._definitions

    def refresh(self, force: bool = False) -> bool:
        """Reload if the head version moved (or ``force``); True when something was reloaded."""
        with self._lock:
            self._checked_at = time.monotonic()
            head = self._head_version()
            if head == self._version and not force:
                return False
            self._definitions = self._load(head)
            self._version = head
            return True
