"""Benchmark (issue 16): `materialize` on Beam's portable runner with 2 SDK workers, beside the
reference, the default in-process runner, in the same run.

    python3 bench/bench_runners.py                     # 200,000 rows, 3 rounds (a few minutes)
    python3 bench/bench_runners.py --rows 1000000      # the issue's size
    python3 bench/bench_runners.py --quick             # 50,000 rows, 1 round
    python3 bench/bench_runners.py --job-endpoint localhost:N --worker-pool 127.0.0.1:M

Data: bench_materialize.py's (cached under bench/out/): N rows of 10 float64 features, N/10
entities, over 30 days, materialized into Redis ($BENCH_REDIS_URL) and the offline store.
Without endpoints the script starts Beam's job server (2 SDK workers per job) and an SDK worker
pool on loopback from this checkout (materializers/portable_services.py), outside the timings,
and stops them at the end.

Each case runs in its own subprocess; the two alternate round by round (default, portable,
default, ...) and the ratios are taken per round (portable / default), then their median, so
drift of the shared machine's speed cancels out. Per case:

* wall: the `materialize` call (submit, run, verify the stores, record), imports excluded;
* cpu: user + system seconds of every process working for the job during it: the case process
  and, on the portable runner, the job server and the worker pool with its SDK workers (which
  exit with the job: their CPU is read from the pool's reaped-children counters);
* peak: the largest sum of resident memory over those processes, sampled every 50 ms (the
  services' idle memory included: it is what the portable runner costs to keep).

Both cases must write the same numbers of offline and online rows (the script checks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (
    OUT,
    RssSampler,
    delete_redis_project,
    median_ratio,
    round_ratios,
    tree_cpu_seconds_reaped,
    tree_rss_mb,
)

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
DAYS = 30
CASES = ("default", "portable")
LABELS = {
    "default": "reference: default in-process runner",
    "portable": "portable runner, 2 SDK workers",
}


# -- one case, in its own process --------------------------------------------------------------


def case(which: str, rows: int, entities: int, beam_args: list[str]) -> dict[str, object]:
    from bench.bench_materialize import make_repo, source_dir
    from featurestore.store import FeatureStore
    from materializers.batch import materialize

    source_dir(rows, entities, DAYS)
    project = "benchrun" + uuid.uuid4().hex[:8]
    repo = make_repo("redis", rows, entities, DAYS, project)
    moved = repo.with_name(f"{repo.name}-{which}-{project}")  # never shared by two cases
    repo.rename(moved)
    try:
        store = FeatureStore(moved)
        store.apply()
        cpu0, started = time.process_time(), time.perf_counter()
        [summary] = materialize(store, pipeline_args=beam_args, progress=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu0
        store.close()
    finally:
        delete_redis_project(REDIS_URL, project)
        shutil.rmtree(moved, ignore_errors=True)
    return {
        "seconds": seconds,
        "cpu_self": cpu,
        "rows_read": summary.rows_read,
        "rows_offline": summary.rows_offline,
        "rows_online": summary.rows_online,
    }


# -- the portable runner's services ------------------------------------------------------------


def start_service(sub: str, logs: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    port_file = logs / f"{sub}.port"
    with open(logs / f"{sub}.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "materializers.portable_services",
                sub,
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *extra,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{sub} did not start:\n{(logs / f'{sub}.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def live_children(pids: list[int]) -> int:
    """Descendants of ``pids`` that still run (an exited SDK worker stays a zombie until the
    pool reaps it)."""
    from bench._common import process_tree

    live = 0
    for p in {q for pid in pids for q in process_tree(pid)} - set(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                live += f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            continue
    return live


def wait_idle(pids: list[int], timeout: float = 30.0) -> None:
    """Until the services' SDK workers of the last job have exited."""
    deadline = time.monotonic() + timeout
    while live_children(pids) and time.monotonic() < deadline:
        time.sleep(0.2)


def run_case(
    which: str, args: argparse.Namespace, services: list[int], beam_args: list[str]
) -> dict:
    """One case in a fresh interpreter, measured from here: CPU of the services during it,
    peak memory of all the processes involved."""
    wait_idle(services)
    cpu0 = sum(tree_cpu_seconds_reaped(p) for p in services)
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--case",
            which,
            "--rows",
            str(args.rows),
            "--entities",
            str(args.entities),
            "--beam-args",
            json.dumps(beam_args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    sampler = RssSampler([proc.pid, *services])
    out, err = proc.communicate()
    peak = sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"case {which} failed:\n{err[-3000:]}")
    wait_idle(services)  # the SDK workers' CPU is counted once they have exited
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu"] = result["cpu_self"] + sum(tree_cpu_seconds_reaped(p) for p in services) - cpu0
    result["peak_mb"] = peak
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--entities", type=int, help="default: rows / 10")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="50,000 rows, 1 round")
    parser.add_argument("--job-endpoint", help="a running job server (else one is started)")
    parser.add_argument("--worker-pool", help="a running SDK worker pool (else one is started)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--beam-args", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds = 50_000, 1
    args.entities = args.entities or max(args.rows // 10, 1)
    if args.case:
        print(json.dumps(case(args.case, args.rows, args.entities, json.loads(args.beam_args))))
        return

    from bench.bench_materialize import source_dir

    OUT.mkdir(parents=True, exist_ok=True)
    source_dir(args.rows, args.entities, DAYS)  # generated once, outside the timings
    started: list[subprocess.Popen] = []
    logs = Path(tempfile.mkdtemp(prefix="bench-runners-"))
    try:
        if args.job_endpoint and args.worker_pool:
            job, pool, where = args.job_endpoint, args.worker_pool, "given"
            services: list[int] = []  # not ours to measure
        else:
            server, job_port = start_service("job-server", logs, "--workers", "2")
            workers, pool_port = start_service("worker-pool", logs)
            started += [server, workers]
            job, pool, where = f"localhost:{job_port}", f"127.0.0.1:{pool_port}", "started here"
            services = [server.pid, workers.pid]
        from materializers.portable_services import check

        check(job, pool)  # the workers run this checkout; also warms the pool
        wait_idle(services)
        portable_args = [
            "--runner",
            "PortableRunner",
            "--job_endpoint",
            job,
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            pool,
        ]
        print(
            f"materialize {args.rows:,} rows ({args.entities:,} entities, {DAYS} days, 10 float64 "
            f"features) -> offline + Redis; {args.rounds} round(s), cases interleaved; "
            f"{os.cpu_count()} CPUs"
        )
        idle = f", idle {tree_rss_mb(services):.0f} MB" if services else ""
        print(
            f"portable runner: job server {job} (2 SDK workers per job), worker pool {pool} "
            f"({where}{idle})"
        )
        print(
            f"{'round':5} {'case':38} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'rows/s':>9} "
            f"{'offline rows':>12} {'online rows':>11}"
        )
        results: dict[str, list[dict]] = {c: [] for c in CASES}
        for r in range(1, args.rounds + 1):
            for which in CASES:
                res = run_case(
                    which,
                    args,
                    services if which == "portable" else [],
                    portable_args if which == "portable" else [],
                )
                results[which].append(res)
                print(
                    f"{r:<5} {LABELS[which]:38} {res['seconds']:7.1f} {res['cpu']:7.1f} "
                    f"{res['peak_mb']:8.0f} {res['rows_read'] / res['seconds']:9,.0f} "
                    f"{res['rows_offline']:12,} {res['rows_online']:11,}",
                    flush=True,
                )
        counts = {(x["rows_offline"], x["rows_online"]) for c in CASES for x in results[c]}
        if len(counts) != 1:
            raise SystemExit(f"the runners wrote different numbers of rows: {sorted(counts)}")
        print(f"median of {args.rounds} round(s); ratio = median over rounds of portable / default")
        for key, label in (
            ("seconds", "wall seconds"),
            ("cpu", "cpu seconds"),
            ("peak_mb", "peak memory MB"),
        ):
            ours = [x[key] for x in results["portable"]]
            ref = [x[key] for x in results["default"]]
            print(
                f"  {label:16} portable {statistics.median(ours):9.1f}   default "
                f"{statistics.median(ref):9.1f}   ratio {median_ratio(ours, ref):5.2f} "
                f"{round_ratios(ours, ref)}"
            )
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
