"""The life of one Beam job, the same on every runner: check, submit, wait once, then read.

    Runner.check_options(pipeline_args)           refuses runners known to lose data
    pipeline = make_pipeline(pipeline_args); ...  (batch.build_view_pipeline)
    result = run_to_end(pipeline, Runner.of(pipeline, pipeline_args), view, watch=...)
    counters = batch._counters(result)            only now, after the end

Beam's ``PipelineResult`` does not behave alike while a job runs. The portable runner (and so
Flink, Spark and Prism, its subclasses) fails a second ``wait_until_finish(duration=...)`` with
gRPC error 8 and keeps the first metrics answer it got, empty if asked early; the DaskRunner
times out and has no metrics at all. So the job is waited for once, without a duration, and its
metrics are read after the end. Progress of a job whose workers are other processes comes from
a side channel, the run's files in the shared offline store (``StagingWatch``), never from the job.
What the job wrote is then checked against the stores (``materializers.verify``) before the run
is recorded.

Errors: a runner known to lose data, an unreachable job service and a failed download (a job
server jar, the Prism binary) are ``UserError`` with a hint; a job that fails on a remote runner
is a ``FeatureStoreError`` naming the view, with the runner's message chained.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.errors import FeatureStoreError, UserError

if TYPE_CHECKING:
    import apache_beam as beam

__all__ = ["LOSES_DATA", "Runner", "StagingWatch", "no_ipython_probe", "run_to_end"]

_LOG = logging.getLogger(__name__)

#: Runners (normalised names, see ``Runner.key``) that finish "DONE" having lost data, and why.
#: Checked against Beam 2.77; look again when Beam is upgraded.
LOSES_DATA = {
    "dask": "Beam's DaskRunner loses data silently (only the graph's last leaf runs, "
    "finish_bundle outputs are dropped, tagged outputs are mixed: 827,680 of 1,000,000 rows "
    "were written in a test)",
}
#: ``--runner`` values that mean Beam's in-process runner (materialize runs ``FnApiRunner``
#: for all of them, see ``materializers.batch.make_pipeline``).
IN_PROCESS_NAMES = frozenset({None, "", "DirectRunner", "direct", "FnApiRunner", "SwitchingDirectRunner"})
#: Seconds to wait for a TCP connection to a job service before submitting.
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Runner:
    """Which runner a pipeline has, as far as the job's lifecycle cares.

    >>> from materializers.batch import make_pipeline
    >>> Runner.of(make_pipeline([])).in_process
    True
    """

    name: str
    #: DoFns run in this process, so the progress board fills (not in multi_processing mode).
    in_process: bool
    job_endpoint: str | None = None

    @staticmethod
    def key(name: str | None) -> str:
        """``DaskRunner``, ``dask`` and ``apache_beam...DaskRunner`` alike: ``dask``.

        >>> Runner.key("apache_beam.runners.dask.dask_runner.DaskRunner")
        'dask'
        """
        return (name or "").rsplit(".", 1)[-1].lower().removesuffix("runner")

    @classmethod
    def check_options(cls, pipeline_args: Sequence[str]) -> None:
        """Before the pipeline is built: a runner (or a mode of one) known to lose data is a
        ``UserError``."""
        from apache_beam.options.pipeline_options import (
            DirectOptions,
            PipelineOptions,
            StandardOptions,
        )

        options = PipelineOptions(list(pipeline_args))
        given = options.view_as(StandardOptions).runner
        refuse_lossy(given if isinstance(given, str) else type(given).__name__)
        direct = options.view_as(DirectOptions)
        in_process = given in IN_PROCESS_NAMES
        threads = direct.direct_running_mode != "multi_processing"  # in_memory, multi_threading
        if in_process and direct.direct_num_workers != 1 and threads:
            import apache_beam

            # Seen on a 1M-row view under load (issue 19): a run that exited DONE with 43 entities
            # missing online and 2,650 holding an older row than the newest, or a crash in a
            # CombineFn handed a None accumulator; several workers' bundles of one stage run on
            # threads sharing one process (ParallelBundleManager), and its merged responses keep
            # only metrics and errors. The verification of every run catches the loss, too late.
            raise UserError(
                f"--direct_num_workers {direct.direct_num_workers} with --direct_running_mode "
                f"{direct.direct_running_mode} is refused: Beam's in-process runner (apache-beam "
                f"{apache_beam.__version__}) then loses or mixes outputs of parallel bundles "
                "(entities missing or older online, seen in tests)",
                hint="leave --direct_num_workers out, or use --direct_running_mode multi_processing "
                "(separate worker processes), or --runner PortableRunner with a job server "
                "(docs/materialization.md, Runners)",
            )

    @classmethod
    def of(cls, pipeline: beam.Pipeline, pipeline_args: Sequence[str] = ()) -> Runner:
        from apache_beam.options.pipeline_options import (
            DirectOptions,
            PipelineOptions,
            PortableOptions,
        )
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        name = type(pipeline.runner).__name__
        refuse_lossy(name)
        options = PipelineOptions(list(pipeline_args))
        if isinstance(pipeline.runner, FnApiRunner):
            mode = options.view_as(DirectOptions).direct_running_mode
            return cls(name, in_process=mode != "multi_processing")
        return cls(
            name, in_process=False, job_endpoint=options.view_as(PortableOptions).job_endpoint
        )

    def check_reachable(self) -> None:
        """An unreachable ``--job_endpoint`` fails now, not after Beam's 300 s timeout."""
        endpoint = self.job_endpoint
        if not endpoint or endpoint == "embed" or ":" not in endpoint:
            return
        host, _, port = endpoint.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT):
                pass
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cannot reach the Beam job service at {endpoint} ({exc})",
                hint="start the job server first (docs/materialization.md, Runners), or fix "
                "--job_endpoint",
            ) from None


def refuse_lossy(name: str | None) -> None:
    why = LOSES_DATA.get(Runner.key(name))
    if why:
        import apache_beam

        raise UserError(
            f"--runner {name} is refused: {why} (apache-beam {apache_beam.__version__})",
            hint="use the default in-process runner, --runner PortableRunner with a job server, "
            "Flink, Spark or Dataflow (docs/materialization.md, Runners)",
        )


@contextmanager
def no_ipython_probe() -> Iterator[None]:
    """Build and run a pipeline without Beam asking whether it runs inside IPython.

    Beam asks on every transform applied and again in ``Pipeline.run`` (to relabel transforms
    for notebooks), and asking imports IPython: 0.7 s of CPU, a tenth of a 1M-row job
    (issue 19). While IPython has not been imported no IPython shell can be running, so the
    answer is known to be no. Beam's two functions are wrapped once per process, never
    restored (so threads building pipelines at once cannot leave them half-patched): the
    wrappers ask Beam's own functions whenever IPython is imported, so inside a notebook
    nothing changes.
    """
    _guard_ipython_probe()
    yield


_PROBE_LOCK = threading.Lock()
_PROBE_GUARDED = False


def _guard_ipython_probe() -> None:
    global _PROBE_GUARDED
    with _PROBE_LOCK:
        if _PROBE_GUARDED:
            return
        import apache_beam.pipeline as beam_pipeline

        is_in, alter = beam_pipeline.is_in_ipython, beam_pipeline.alter_label_if_ipython

        def is_in_ipython() -> bool:
            return "IPython" in sys.modules and is_in()

        def alter_label_if_ipython(transform: Any, pvalueish: Any) -> None:
            if "IPython" in sys.modules:
                alter(transform, pvalueish)

        beam_pipeline.is_in_ipython = is_in_ipython
        beam_pipeline.alter_label_if_ipython = alter_label_if_ipython
        _PROBE_GUARDED = True


def run_to_end(
    pipeline: beam.Pipeline,
    runner: Runner,
    view: str,
    watch: Callable[[], None] | None = None,
    every: float = 2.0,
) -> Any:
    """Submit ``pipeline``, wait for its end once, and return the result in state DONE.

    ``watch`` is called every ``every`` seconds while the job runs (progress from a side
    channel). Ctrl-C cancels a job that runs elsewhere before it is re-raised.
    """
    from apache_beam.runners.runner import PipelineState

    runner.check_reachable()
    try:
        result = pipeline.run()
    except RuntimeError as exc:
        failure = _download_failure(exc)
        if failure is not None:
            raise failure from exc
        raise
    poller = _Poller(watch, every) if watch is not None else None
    try:
        state = result.wait_until_finish()
    except KeyboardInterrupt:
        _cancel(result)
        raise
    except FeatureStoreError:
        raise
    except Exception as exc:
        if runner.in_process:  # the DoFn's own error, as the in-process runner raises it
            raise
        raise FeatureStoreError(
            f"the pipeline of feature view {view!r} failed on {runner.name}: {_last_line(exc)}",
            hint="the runner's full message is chained below; see its logs too. Nothing was "
            "recorded and the watermark did not move, so re-running is safe",
        ) from exc
    finally:
        if poller is not None:
            poller.stop()
    state = state or result.state
    if state != PipelineState.DONE:
        raise FeatureStoreError(
            f"the pipeline of feature view {view!r} ended in state {state}",
            hint="see the runner's logs; the watermark did not move, so re-running is safe",
        )
    return result


def _download_failure(exc: RuntimeError) -> UserError | None:
    """Beam's failed downloads (no network, a proxy) as user errors saying what to stage."""
    text = str(exc)
    if "Unable to fetch remote job server jar" in text:
        return UserError(
            f"Beam could not download its job server jar: {text}",
            hint="put the jar where the message says (Beam's cache, ~/.apache_beam/cache/jars/), "
            "or pass --flink_job_server_jar / --spark_job_server_jar PATH, or start the job "
            "server yourself and use --runner PortableRunner --job_endpoint HOST:PORT",
        )
    if "Unable to fetch remote prism binary" in text:
        return UserError(
            f"Beam could not download the Prism runner: {text}",
            hint="pass --prism_location PATH to a downloaded prism binary, or leave out "
            "--runner to use the in-process runner",
        )
    return None


def _cancel(result: Any) -> None:
    try:
        result.cancel()
    except Exception as exc:  # noqa: BLE001 - Ctrl-C is on its way up; say why cancel failed
        _LOG.warning("could not cancel the Beam job (%s); it may still be running", exc)


def _last_line(exc: BaseException) -> str:
    """A remote runner's message is often a whole traceback; its last line says what failed."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


class _Poller:
    """Calls ``fn`` every ``every`` seconds on a daemon thread until stopped."""

    def __init__(self, fn: Callable[[], None], every: float) -> None:
        self.fn = fn
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="featurestore-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.fn()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class StagingWatch:
    """Progress of a job whose workers are other processes, from the files it leaves: valid
    rows staged so far (shown as rows read) and offline partitions rewritten since ``since``
    (a wall-clock time). The offline store (a shared filesystem or an object store) is shared
    by every worker, so these files are visible here; a view with aggregations stages no rows,
    only partitions show.

    >>> from pathlib import Path
    >>> StagingWatch(Path("/nonexistent/staging"), Path("/nonexistent/view"), 0.0)()
    {'read': 0, 'partitions': 0}
    """

    staging_dir: Any  # a local Path or an object-store ObjectPath (their common methods)
    view_dir: Any
    since: float = field(default_factory=time.time)
    _rows: dict[Any, int] = field(default_factory=dict)

    def __call__(self) -> dict[str, int]:
        import pyarrow as pa

        from featurestore.offline import location

        try:
            for path in self.staging_dir.glob("offline/date=*/*.arrow"):
                if path in self._rows:
                    continue
                try:
                    if location.is_remote(path):  # an object is whole once it is listed
                        self._rows[path] = location.read_ipc(path).num_rows
                        continue
                    with pa.memory_map(str(path)) as source:
                        reader = pa.ipc.open_file(source)
                        self._rows[path] = sum(
                            reader.get_batch(i).num_rows for i in range(reader.num_record_batches)
                        )
                except (OSError, pa.ArrowInvalid):
                    pass  # still being written: counted at the next look
            partitions = sum(
                1
                for p in self.view_dir.glob("date=*/data.parquet")
                if p.stat().st_mtime >= self.since
            )
        except OSError:  # a directory went away (another run cleaned up): keep the last numbers
            partitions = 0
        return {"read": sum(self._rows.values()), "partitions": partitions}
