"""``ServiceContext``: the narrow things a service needs, built once by ``FeatureStore``.

Services (the predictor, feedback, push, training, the feature job) take this small frozen object
instead of the whole ``FeatureStore``, so none of them imports the facade and each one's
dependencies are visible in its constructor (httpx's ``Client(transport=...)`` is the model).
It imports only ``registry/`` and ``featurestore.config``; the online store is typed by its
contract and never imported here.

    config          the repository's settings (paths, URLs, server options)
    registry        the SQL registry (definitions of any version, plan, apply)
    watcher         the process's registry watcher: ``watcher.snapshot`` is what a request reads
    online_store    the opened online store
    model_versions  trained versions of per-user models, and which one is active
    run_log         the materialization runs
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.config import RepoConfig
from registry.definitions import Definitions
from registry.model_versions import ModelVersions
from registry.runs import MaterializationLog
from registry.sql_registry import SqlRegistry
from registry.watcher import RegistrySnapshot, RegistryWatcher

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Engine

    from featurestore.online.base import OnlineStore


@dataclass(frozen=True, eq=False)
class ServiceContext:
    """What the services share; see the module docstring.

    >>> ctx = store.context  # doctest: +SKIP
    >>> ctx.snapshot.active_models  # doctest: +SKIP
    {'taste': 3}
    """

    config: RepoConfig
    registry: SqlRegistry
    watcher: RegistryWatcher
    online_store: OnlineStore
    model_versions: ModelVersions
    run_log: MaterializationLog

    @property
    def project(self) -> str:
        return self.config.project

    @property
    def engine(self) -> Engine:
        """The registry database, which also holds the prediction and feedback logs."""
        return self.registry.engine

    @property
    def snapshot(self) -> RegistrySnapshot:
        return self.watcher.snapshot

    def definitions(self) -> Definitions:
        """The applied definitions of the current snapshot."""
        return self.watcher.snapshot.definitions

    def artifact_dir(self, model: str, version: int) -> Path:
        """Where a trained model version's artifact lives (docs/models.md)."""
        return self.config.artifacts_path / self.project / "_models" / model / f"v{int(version)}"

    def feedback_dir(self, model: str) -> Path:
        """Where the offline view of a model's feedback log lives (docs/feedback.md)."""
        return self.config.artifacts_path / self.project / "_feedback" / model
