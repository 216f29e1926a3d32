"""Beam's portable job service and an SDK worker pool on loopback: the portable runner on one
machine, for CI, tests and trying a remote-runner setup without a cluster.

    python -m materializers.portable_services job-server --port 0 --port-file js.port --workers 2
    python -m materializers.portable_services worker-pool --port 0 --port-file wp.port
    python -m materializers.portable_services check --job-endpoint localhost:N --worker-pool 127.0.0.1:M
    featurestore materialize -- --runner PortableRunner --job_endpoint localhost:N \\
        --environment_type EXTERNAL --environment_config 127.0.0.1:M

Both services are the apache-beam wheel's own servicers (``local_job_service`` and
``worker_pool_main``), speaking the Fn API that Flink, Spark and Dataflow use for Python
workers, started with three differences that matter on a shared machine:

* the worker pool listens on 127.0.0.1 only: Beam's ``worker_pool_main`` binds every interface,
  and the pool starts processes that run whatever a caller sends;
* the job server asks the pool for ``--workers`` SDK worker processes per job: Beam's Python
  job server always asks for one (``FnApiRunner.run_via_runner_api`` ignores
  ``--direct_num_workers``), so no two workers ever shared a job's stores. A job with an
  unbounded PCollection (the stream job) gets one worker all the same: with several, Beam's
  ``ParallelBundleManager`` drops the residual a splittable DoFn leaves with
  ``defer_remainder()``, so an unbounded read ends after its first bundle and the job reports
  DONE (``unbounded`` has the reproduction); and it would send a restriction's successive
  bundles to either worker, while the stream job keeps its offline windows in the DoFn;
* the pool starts SDK workers with this interpreter and this checkout first on ``PYTHONPATH``:
  Beam's pool runs whatever ``python`` comes first on ``PATH``, so workers could run other code
  than the submitter. ``check`` proves they do not.

The FnApiRunner inside the job server still opens its per-job control, data, state and logging
ports on every interface (Beam's choice, not configurable).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["CODE_ROOT", "check", "code_root", "main", "unbounded"]

_LOG = logging.getLogger(__name__)
#: The directory holding this checkout's packages (featurestore, materializers, registry...).
CODE_ROOT = Path(__file__).resolve().parents[1]


def _write_port(port: int, port_file: str | None) -> None:
    print(f"listening on port {port}", flush=True)
    if port_file:
        tmp = f"{port_file}.tmp"
        Path(tmp).write_text(str(port))
        os.replace(tmp, port_file)  # readers see no port or the whole port


def _serve_forever() -> None:
    # SIGTERM exits through atexit, so the pool's SDK worker processes are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


def job_server(port: int, port_file: str | None, workers: int) -> None:
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability import local_job_service
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    class Job(local_job_service.BeamJob):
        def _invoke_runner(self):  # type: ignore[no-untyped-def]
            self.set_state(beam_job_api_pb2.JobState.RUNNING)
            runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
            if not hasattr(runner, "_num_workers"):
                raise RuntimeError(
                    "this Beam's FnApiRunner has no _num_workers; update "
                    "materializers/portable_services.py"
                )
            # What FnApiRunner.run_pipeline sets for direct runs.
            runner._num_workers = 1 if unbounded(self._pipeline_proto) else workers
            return runner.run_via_runner_api(self._pipeline_proto, self.pipeline_options())

    servicer = local_job_service.LocalJobServicer(beam_job_type=Job)
    bound = servicer.start_grpc_server(port)  # binds localhost
    atexit.register(servicer.stop)
    _write_port(bound, port_file)
    _serve_forever()


def unbounded(pipeline_proto: object) -> bool:
    """Whether a pipeline has an unbounded PCollection (a streaming read).

    Such a job runs on one SDK worker: Beam 2.77's ``ParallelBundleManager`` (the FnApiRunner
    with more than one worker) merges the workers' bundle responses keeping only their metrics
    and errors, so the ``residual_roots`` of a DoFn's ``defer_remainder()`` are lost and the
    unbounded read is never called again. Reproduction, no services needed::

        runner = FnApiRunner(); options = ["--direct_num_workers=2",
                                           "--direct_running_mode=multi_threading"]
        Impulse() | ParDo(an unbounded DoFn that yields its position, then defer_remainder())
        # 1 worker: positions 0, 1, 2, 3, 4; 2 workers: position 0 only, state DONE
    """
    from apache_beam.portability.api import beam_runner_api_pb2

    unbounded_ = beam_runner_api_pb2.IsBounded.UNBOUNDED
    pcollections = pipeline_proto.components.pcollections  # type: ignore[attr-defined]
    return any(p.is_bounded == unbounded_ for p in pcollections.values())


def worker_pool(port: int, port_file: str | None) -> None:
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.worker_pool_main import (
        BeamFnExternalWorkerPoolServicer,
        kill_process_gracefully,
    )
    from apache_beam.utils import thread_pool_executor

    _same_code_for_workers()
    pool = BeamFnExternalWorkerPoolServicer(use_process=True)
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()

    def stop() -> None:
        for process in list(pool._worker_processes.values()):
            kill_process_gracefully(process)
        server.stop(0)

    atexit.register(stop)
    _reap_exited_workers()
    _write_port(bound, port_file)
    _serve_forever()


def _reap_exited_workers(every: float = 5.0) -> None:
    """Wait for SDK workers that exited: Beam's pool waits for a worker only on a StopWorker
    request, which the job server's FnApiRunner does not send (seen: 22 workers started, none
    stopped, 16 left as zombies), so each job would leave its workers as zombies, and the
    stream job submits a job per generation. A worker Beam still waits for is safe: Popen.wait
    then finds it gone and takes it as exited."""
    import threading

    def loop() -> None:
        while True:
            time.sleep(every)
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:  # no children left
                pass

    threading.Thread(target=loop, name="reap-sdk-workers", daemon=True).start()


def _same_code_for_workers() -> None:
    """Beam's pool starts workers as ``python -c ...``: make that this interpreter, with this
    checkout first on the path (a script, not a symlink, so a virtualenv stays one)."""
    shim = Path(tempfile.mkdtemp(prefix="featurestore-python-"))
    atexit.register(shutil.rmtree, shim, True)
    script = shim / "python"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.environ["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    paths = [str(CODE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def code_root(_: object = None) -> str:
    """Where this process imports the project from, and with which interpreter."""
    import materializers

    return f"{Path(materializers.__file__).resolve().parents[1]} {sys.version.split()[0]}"


def _write_code_root(_: object, target: str) -> None:
    Path(target).write_text(code_root())


def check(job_endpoint: str, worker_pool_address: str, timeout: float = 120.0) -> str:
    """Run a one-element job on the services; raise unless its worker imports this checkout
    with this Python version. Returns what the worker reported."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    with tempfile.TemporaryDirectory(prefix="featurestore-check-") as tmp:
        target = str(Path(tmp) / "code_root")
        options = PipelineOptions(
            [
                "--runner=PortableRunner",
                f"--job_endpoint={job_endpoint}",
                "--environment_type=EXTERNAL",
                f"--environment_config={worker_pool_address}",
                f"--job_server_timeout={int(timeout)}",
            ]
        )
        pipeline = beam.Pipeline(options=options)
        _ = pipeline | beam.Create([0]) | beam.Map(_write_code_root, target)
        pipeline.run().wait_until_finish()
        seen = Path(target).read_text() if Path(target).exists() else "nothing"
    if seen != code_root():
        raise RuntimeError(
            f"the SDK workers at {worker_pool_address} run {seen}, this process {code_root()}: "
            "start the worker pool from this checkout (python -m materializers.portable_services "
            "worker-pool) so both run the same code"
        )
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m materializers.portable_services")
    sub = parser.add_subparsers(dest="command", required=True)
    js = sub.add_parser("job-server", help="Beam's Python job service, on localhost")
    js.add_argument("--port", type=int, default=0, help="0: a free port")
    js.add_argument("--port-file", help="write the bound port here once listening")
    js.add_argument("--workers", type=int, default=2, help="SDK worker processes per job")
    wp = sub.add_parser("worker-pool", help="Beam's SDK worker pool, on 127.0.0.1")
    wp.add_argument("--port", type=int, default=0, help="0: a free port")
    wp.add_argument("--port-file", help="write the bound port here once listening")
    ck = sub.add_parser("check", help="run a job; fail unless the workers run this checkout")
    ck.add_argument("--job-endpoint", required=True)
    ck.add_argument("--worker-pool", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.command == "job-server":
        job_server(args.port, args.port_file, args.workers)
    elif args.command == "worker-pool":
        worker_pool(args.port, args.port_file)
    else:
        try:
            print(f"SDK workers run {check(args.job_endpoint, args.worker_pool)}")
        except RuntimeError as exc:
            print(f"FATAL: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
