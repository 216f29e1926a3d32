"""Feedback work that runs off the request path, in a server process.

``Maintenance`` is a daemon thread of every server that serves models. At start and every
``CATCH_UP_EVERY_SECONDS`` it checks that the online store still holds its data
(``recovery.OnlineStoreGuard``, which rebuilds the states after a loss) and applies the log rows
a crash cut off (``catch_up.catch_up``); it writes
the offline view of the log every ``FLUSH_SECONDS`` (``export.export_feedback``, with a few
seconds' delay so a block is never sealed before every insert into it has committed); and
checks staleness every ``CHECK_SECONDS``, launching a retrain once per stale version when the
model has ``auto_retrain``.

``launch_retrain`` starts ``featurestore models retrain MODEL`` as a detached process: a retrain
re-runs the feature job and the materialization and trains, minutes of CPU that must not run in
a server worker. The web layer only starts and stops ``Maintenance``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from featurestore.feedback.catch_up import catch_up
from featurestore.feedback.export import export_feedback
from featurestore.feedback.monitoring import model_status

if TYPE_CHECKING:
    from featurestore.context import ServiceContext
    from featurestore.feedback.monitoring import FeedbackCounters
    from featurestore.feedback.recovery import OnlineStoreGuard

logger = logging.getLogger(__name__)
FLUSH_SECONDS = float(os.environ.get("FEATURESTORE_FEEDBACK_FLUSH_SECONDS", "10"))
CHECK_SECONDS = float(os.environ.get("FEATURESTORE_FEEDBACK_CHECK_SECONDS", "60"))
CATCH_UP_EVERY_SECONDS = float(os.environ.get("FEATURESTORE_FEEDBACK_CATCH_UP_EVERY_SECONDS", "5"))


class Maintenance:
    """Writes the offline view of the feedback log and checks staleness, off the request path.

    It learns which models to look at from the process's feedback counters (models that
    received new observations here).
    """

    def __init__(
        self,
        context: ServiceContext,
        counters: FeedbackCounters,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        check_seconds: float = CHECK_SECONDS,
        catch_up_seconds: float = CATCH_UP_EVERY_SECONDS,
        guard: OnlineStoreGuard | None = None,
    ) -> None:
        self.context = context
        self.counters = counters
        self.flush_seconds = flush_seconds
        self.check_seconds = check_seconds
        self.catch_up_seconds = catch_up_seconds
        self.guard = guard
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedback-maintenance", daemon=True)
        self.launched: set[tuple[str, int]] = set()

    def start(self) -> None:
        if self.flush_seconds > 0 or self.check_seconds > 0 or self.catch_up_seconds > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        start = time.monotonic()
        due = {"catch_up": start, "flush": start + self.flush_seconds, "check": start + self.check_seconds}
        periods = {"catch_up": self.catch_up_seconds, "flush": self.flush_seconds, "check": self.check_seconds}
        tick = min(p for p in periods.values() if p > 0)
        while True:
            if self.context.online_store.closed:
                return  # the store was closed under us (an app never shut down): nothing to do
            now = time.monotonic()
            models = sorted({m for (m, result) in self.counters.counts() if result == "new"})
            for task, period in periods.items():
                if period <= 0 or now < due[task]:
                    continue
                due[task] = now + period
                try:
                    if task == "catch_up":
                        self._guard_check()  # an emptied online store first: restore the states
                        self.counters.count_caught_up(catch_up(self.context).rows)
                    elif task == "flush":
                        self.flush(models)
                    else:
                        self.check(models)
                except Exception as exc:  # noqa: BLE001 - a failed round is logged; the next one retries
                    logger.warning("feedback maintenance (%s) failed: %s: %s", task, type(exc).__name__, exc)
            if self._stop.wait(tick):
                return

    def _guard_check(self) -> None:
        if self.guard is None:
            return
        try:
            self.guard.check()
        except Exception as exc:  # noqa: BLE001 - never keep the catch-up from running
            logger.warning("online data check failed: %s: %s", type(exc).__name__, exc)

    def flush(self, models: list[str]) -> None:
        for model in models:
            export_feedback(self.context, model, delay_seconds=5.0)

    def check(self, models: list[str]) -> None:
        defs = self.context.definitions()
        for model in models:
            spec = defs.models.get(model)
            if spec is None or not spec.auto_retrain:
                continue
            status = model_status(self.context, model)
            if status.stale and (model, status.version) not in self.launched:
                self.launched.add((model, status.version))
                launch_retrain(self.context, model, status.version)


def launch_retrain(context: ServiceContext, model: str, version: int) -> bool:
    """Start ``featurestore models retrain MODEL`` as a detached subprocess, once per stale
    version across every process (a marker file in the version's artifact directory decides).
    Its output goes to ``retrain.log`` beside it. True when this call launched it."""
    directory = context.artifact_dir(model, version)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / "retrain.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    config = context.config
    env = {
        **os.environ,
        # The subprocess must see the same stores as this one, whatever overrides made them.
        "FEATURESTORE__REGISTRY": config.registry_url,
        "FEATURESTORE__OFFLINE_STORE__PATH": str(config.offline_path),
        "FEATURESTORE__OFFLINE_STORE__ARTIFACTS_PATH": str(config.artifacts_path),
        **{f"FEATURESTORE__OFFLINE_STORE__{name.upper()}": value
           for name in ("endpoint_override", "region")
           if (value := getattr(config.offline_store, name)) is not None},
        "FEATURESTORE__ONLINE_STORE__TYPE": config.online_store.type,
        "FEATURESTORE__ONLINE_STORE__PATH": str(config.resolve(config.online_store.path)),
        "FEATURESTORE__ONLINE_STORE__URL": config.online_store.url,
        "FEATURESTORE__ONLINE_STORE__CLUSTER": "true" if config.online_store.cluster else "false",
    }
    with open(directory / "retrain.log", "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "featurestore.cli.main", "-r", str(config.root), "models", "retrain", model],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    logger.warning("model %r version %d is stale: launched `featurestore models retrain %s`", model, version, model)
    return True
