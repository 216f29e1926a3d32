"""``FeatureStore``: the SDK entry point. It opens the stores, builds the ``ServiceContext``
once and composes the services (retrieval, predictor, feedback, push, training) from it; each
method is a thin door into the module that owns the concept. No service imports this module.
Heavy libraries load only when the method that needs them is called.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.config import RepoConfig, load_config
from featurestore.context import ServiceContext
from registry.definitions import Definitions
from registry.model_versions import ModelVersions
from registry.plan import Plan
from registry.runs import MaterializationLog
from registry.spec import EntitySpec, FeatureServiceSpec, FeatureViewSpec
from registry.sql_registry import SqlRegistry, VersionInfo
from registry.validate import load_definitions
from registry.watcher import RegistryWatcher

if TYPE_CHECKING:
    from featurestore.feedback.recovery import OnlineStoreGuard
    from featurestore.models.feature_job import FeatureJobResult
    from featurestore.models.serving import Prediction, Predictor
    from featurestore.models.training import TrainResult
    from featurestore.online.base import OnlineStore
    from featurestore.retrieval import OnlineReader, OnlineResponse


class FeatureStore:
    """A feature repository: its configuration, registry and stores.

    >>> store = FeatureStore("my_repo")  # doctest: +SKIP
    >>> store.plan().render()  # doctest: +SKIP
    """

    def __init__(
        self,
        repo_path: str | Path = ".",
        *,
        config_overrides: Mapping[str, Any] | None = None,
        registry_refresh_seconds: float = 5.0,
    ) -> None:
        """``registry_refresh_seconds``: how far behind the registry database this process may
        be (definitions, active model versions, materialization runs; the online server uses 1);
        0 reads the database on every access (see ``registry.watcher``)."""
        self.config: RepoConfig = load_config(repo_path, config_overrides)
        self.repo_path = self.config.root
        self.project = self.config.project
        self._refresh_seconds = registry_refresh_seconds

    # -- registry -----------------------------------------------------------------------------
    @cached_property
    def registry(self) -> SqlRegistry:
        return SqlRegistry(self.config.registry_url, self.project)

    @cached_property
    def materialization_log(self) -> MaterializationLog:
        return MaterializationLog(self.registry.engine, self.project)

    @cached_property
    def model_versions(self) -> ModelVersions:
        return ModelVersions(self.registry.engine, self.project)

    @cached_property
    def watcher(self) -> RegistryWatcher:
        """The process's registry watcher: ``watcher.snapshot`` is what request paths read."""
        return RegistryWatcher(self.registry, self.model_versions, self.materialization_log, self._refresh_seconds)

    @cached_property
    def context(self) -> ServiceContext:
        """The narrow things the services share, built once (opens the online store)."""
        return ServiceContext(
            config=self.config,
            registry=self.registry,
            watcher=self.watcher,
            online_store=self.online_store,
            model_versions=self.model_versions,
            run_log=self.materialization_log,
        )

    def validate(self) -> Definitions:
        """Load and check the repository's YAML; raises DefinitionError listing every problem."""
        return load_definitions(self.repo_path, self.config.definitions)

    def plan(self) -> Plan:
        return self.registry.plan(self.validate())

    def apply(
        self,
        *,
        allow_breaking: bool = False,
        message: str = "",
        expected_version: int | None = None,
    ) -> tuple[Plan, VersionInfo | None]:
        """Validate and apply the repository's definitions as a new registry version."""
        definitions = self.validate()
        result = self.registry.apply(
            definitions,
            allow_breaking=allow_breaking,
            expected_version=expected_version,
            applied_by=_who(),
            git_commit=_git_commit(self.repo_path),
            message=message,
        )
        self.watcher.refresh(force=True)
        return result

    def definitions(self, version: int | None = None) -> Definitions:
        """The applied definitions: cached for the latest version, read from SQL for older ones."""
        if version is None:
            return self.watcher.snapshot.definitions
        return self.registry.definitions(version)

    def list_entities(self, version: int | None = None) -> list[EntitySpec]:
        return list(self.definitions(version).entities.values())

    def list_feature_views(self, version: int | None = None) -> list[FeatureViewSpec]:
        return list(self.definitions(version).feature_views.values())

    def get_feature_view(self, name: str, version: int | None = None) -> FeatureViewSpec:
        return self.definitions(version).get("feature_view", name)  # type: ignore[no-any-return]

    def list_feature_services(self, version: int | None = None) -> list[FeatureServiceSpec]:
        return list(self.definitions(version).feature_services.values())

    def registry_versions(self) -> list[VersionInfo]:
        return self.registry.versions()

    # -- online retrieval ---------------------------------------------------------------------
    @cached_property
    def online_reader(self) -> "OnlineReader":
        from featurestore.retrieval import OnlineReader

        return OnlineReader(self.online_store, self.watcher, registry=self.registry)

    def get_online_features(
        self,
        features: list[str] | str,
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        full_names: bool = False,
        with_timestamps: bool = False,
    ) -> "OnlineResponse":
        """The latest values of ``features`` (references or a feature service name) for each
        entity row, in one round trip to the online store.

        >>> store.get_online_features(["user_activity:ratings_1d"], [{"user_id": 1}]).to_dict()  # doctest: +SKIP
        {'user_id': [1], 'ratings_1d': [3]}
        """
        return self.online_reader.get_online_features(
            features, entity_rows, full_names=full_names, with_timestamps=with_timestamps
        )

    async def get_online_features_async(
        self,
        features: list[str] | str,
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        full_names: bool = False,
        with_timestamps: bool = False,
    ) -> "OnlineResponse":
        """``get_online_features`` for asyncio code. On Redis the read goes out on a pipelined
        asyncio connection, so the event loop serves other requests while it is on its way;
        in-process stores answer directly (faster than a hop to a worker thread)."""
        return await self.online_reader.get_online_features_async(
            features, entity_rows, full_names=full_names, with_timestamps=with_timestamps
        )

    def feature_freshness(self, views: list[str] | None = None) -> dict[str, float | None]:
        """Seconds since the newest materialized event of each online view (None: never written)."""
        return self.online_reader.freshness(views)

    # -- training data ------------------------------------------------------------------------
    def get_training_dataset(self, entity_df: Any, features: list[str] | str, **options: Any) -> Any:
        """Point-in-time correct features for every row of ``entity_df`` (see docs/point-in-time.md).

        >>> ds = store.get_training_dataset(labels_df, "item_ranking")  # doctest: +SKIP
        >>> ds.to_pandas()  # doctest: +SKIP
        """
        from featurestore.export import get_training_dataset

        return get_training_dataset(self.config, self.definitions(), entity_df, features, **options)

    # -- models ---------------------------------------------------------------------------------
    # Per-user linear models (docs/models.md). Everything lives in featurestore.models; these
    # methods only open it. The predictor (feature cache + prediction log) is made on first use.
    @cached_property
    def predictor(self) -> "Predictor":
        from featurestore.models.serving import Predictor

        return Predictor(self.context)

    def predict(
        self,
        model: str,
        user: Mapping[str, Any],
        items: list[Mapping[str, Any]],
        k: int | None = None,
        request_features: Mapping[str, Any] | None = None,
    ) -> "Prediction":
        """Score candidate items for a user with the model's active version.

        >>> store.predict("taste", {"user_id": 7}, [{"item_id": 1}, {"item_id": 2}], k=1).to_dict()  # doctest: +SKIP
        {'prediction_id': '...', 'model': 'taste', 'model_version': 3, 'scores': [...]}
        """
        return self.predictor.predict(model, user, items, k=k, request_features=request_features)

    def train(self, model: str, labels: Any, *, timestamp_column: str = "event_timestamp") -> "TrainResult":
        """Train ``model`` on labels (a Parquet path, Arrow table or DataFrame) as a new, active
        version.

        >>> store.train("taste", "labels.parquet").version  # doctest: +SKIP
        1
        """
        from featurestore.models.training import train_model

        return train_model(
            self.context, model, labels, timestamp_column=timestamp_column, export=self.get_training_dataset
        )

    def run_feature_job(self, name: str) -> "FeatureJobResult":
        """Run a feature job (learned item factors) and write its output; materialize the fed
        views afterwards (``featurestore jobs run`` does both)."""
        from featurestore.models.feature_job import run_feature_job

        return run_feature_job(self.config, self.watcher, name)

    def activate_model(self, model: str, version: int) -> None:
        """Make ``version`` the one served, reloading its state from its artifact if needed."""
        from featurestore.models.artifacts import restore_version

        self.definitions().get("model", model)
        self.model_versions.get(model, version)
        restore_version(self.context, model, version)
        self.model_versions.activate(model, version)
        self.watcher.refresh()  # this process serves it at once; others within a second

    def evaluate(self, models: Any = None, metrics: Any = None, slices: Any = None, window: Any = None,
                 *, every: str | None = None) -> Any:
        """Model quality from the evaluation store (docs/evaluation.md): a pyarrow Table.

        >>> store.evaluate(models=["taste"], slices=["all", "users"], window="7d").to_pandas()  # doctest: +SKIP
        """
        from featurestore.evaluation import evaluate

        return evaluate(self.context, models=models, metrics=metrics, slices=slices, window=window, every=every)

    def rollback_model(self, model: str) -> int:
        """Activate the version before the active one; returns it."""
        from registry.errors import NotFoundError

        active = self.model_versions.active_versions().get(model)
        versions = [v.version for v in self.model_versions.list(model)]
        older = [v for v in versions if active is not None and v < active]
        if not older:
            raise NotFoundError(
                f"model {model!r} has no version before "
                + (f"the active version {active}" if active is not None else "(nothing is active)"),
                hint=f"list versions with `featurestore models list {model}`",
            )
        self.activate_model(model, older[-1])
        return older[-1]

    # -- feedback ---
    # Observations that update the per-user models online (docs/feedback.md). The logic lives in
    # featurestore.feedback and is shared with `POST /feedback`; it shares this store's predictor's
    # planner (feature cache, layouts) and prediction log.
    if TYPE_CHECKING:
        from featurestore.feedback import FeedbackInput, FeedbackResult, FeedbackService

    @cached_property
    def feedback_service(self) -> "FeedbackService":
        from featurestore.feedback import FeedbackService

        return FeedbackService(self.context, self.predictor.planner, self.predictor.log)

    @cached_property
    def online_guard(self) -> "OnlineStoreGuard":
        """Notices that the online store lost its data and rebuilds the model states (servers
        run its ``check`` from /health and their maintenance thread)."""
        from featurestore.feedback.recovery import OnlineStoreGuard

        return OnlineStoreGuard(self.context)

    def feedback(
        self,
        model: str,
        user: Mapping[str, Any],
        item: Mapping[str, Any],
        label: float,
        feedback_id: str,
        *,
        prediction_id: str | None = None,
        ts: Any = None,
        slice: str | None = None,  # noqa: A002 - the name of the field in the HTTP API
        request_features: Mapping[str, Any] | None = None,
    ) -> "FeedbackResult":
        """Record one observation durably, then learn from it (a retry with the same
        ``feedback_id`` changes nothing). A bad observation raises DataError naming the field.

        >>> store.feedback("taste", {"user_id": 7}, {"item_id": 3}, 4.0, "fb-1").new  # doctest: +SKIP
        1
        """
        from featurestore.feedback import FeedbackInput
        from registry.errors import ConflictError, DataError

        result = self.feedback_service.submit(
            [FeedbackInput(model, user, item, label, feedback_id, prediction_id, ts, slice, request_features)]
        )
        if result.rejected:
            bad = result.rejected[0]
            error = ConflictError if bad.status == 409 else DataError
            raise error(f"field `{bad.field}`: {bad.reason}", hint=bad.hint)
        return result

    def feedback_many(self, observations: "list[Mapping[str, Any] | FeedbackInput]") -> "FeedbackResult":
        """Record and learn a batch (mappings with the keys of ``POST /feedback``); the good
        observations are accepted, the result lists the rejected ones with index and reason.
        A batch whose every observation is rejected raises ``AllRejectedError`` (with the
        result): a caller cannot mistake it for success."""
        from featurestore.feedback import FeedbackInput
        from featurestore.feedback.types import AllRejectedError

        result = self.feedback_service.submit(
            [o if isinstance(o, FeedbackInput) else FeedbackInput.from_dict(o) for o in observations]
        )
        if result.rejected and not result.accepted:
            raise AllRejectedError(result)
        return result

    # -- push ---------------------------------------------------------------------------------
    # Events into a view's stream (docs/streaming.md); the logic lives in featurestore.push.
    @cached_property
    def pusher(self) -> "Pusher":
        from featurestore.push import Pusher

        return Pusher(self.config, self.watcher)

    def push(self, view: str, rows: "Sequence[Mapping[str, Any]]", push_id: str | None = None) -> "PushResult":
        """Check events against ``view`` and append them to its stream, all or none; the stream
        job (``featurestore stream``) writes them online and offline. With ``push_id`` a retried
        push appends nothing and returns the first result with ``duplicate=True``.

        >>> store.push("user_clicks", [{"user_id": 7, "ts": "2026-11-22T10:00:00Z", "clicks": 1}]).pushed  # doctest: +SKIP
        1
        """
        return self.pusher.push(view, rows, push_id)

    if TYPE_CHECKING:  # names for the annotations of this section (imported lazily at run time)
        from collections.abc import Sequence

        from featurestore.push import Pusher, PushResult

    # -- stores -------------------------------------------------------------------------------
    @cached_property
    def online_store(self) -> "OnlineStore":
        from featurestore.online.factory import open_online_store

        return open_online_store(self.config.online_store, self.project, self.repo_path)

    def close(self) -> None:
        # The predictor first: its prediction log flushes to the registry database.
        if "predictor" in self.__dict__:
            self.predictor.close()
        if "feedback_service" in self.__dict__:
            self.feedback_service.log.close()  # its queued "applied" marks
        if "pusher" in self.__dict__:
            self.pusher.close()
        if "watcher" in self.__dict__:
            self.watcher.close()
        if "online_store" in self.__dict__:
            self.online_store.close()
        if "registry" in self.__dict__:
            self.registry.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _who() -> str:
    user = os.environ.get("FEATURESTORE_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _git_commit(path: Path) -> str | None:
    """The repository's HEAD commit, suffixed ``+dirty`` when definitions have local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True, timeout=5
        )
        suffix = "+dirty" if dirty.stdout.strip() else ""
        return head.stdout.strip() + suffix
    except (OSError, subprocess.SubprocessError):
        return None
