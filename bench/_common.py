"""Helpers shared by the benchmark scripts: percentiles, peak memory, printing ratios."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples_ns: list[int]) -> dict[str, float]:
    ms = [s / 1e6 for s in samples_ns]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "mean": statistics.fmean(ms)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(module_args: list[str]) -> dict:
    """Run a case in its own process (so peak memory is its own) and read its JSON result."""
    proc = subprocess.run([sys.executable, *module_args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case failed: {' '.join(module_args)}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_wrk(port: int, script: Path, seconds: int, connections: int, threads: int = 1) -> dict[str, float]:
    """Run wrk against a local server; requests/s and p50/p99 in ms. Any error response fails."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout
    result: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            value = parts[1]
            scale = 1e-3 if value.endswith("us") else (1.0 if value.endswith("ms") else 1e3)
            result["p" + parts[0][:-1]] = float(value.rstrip("usm")) * scale
        elif "Non-2xx" in line or "Socket errors" in line:
            raise SystemExit(f"errors during the HTTP benchmark: {line}\n{out}")
    return result


def delete_redis_project(redis_url: str, project: str) -> int:
    """Delete every key of ``project`` (``{project}:*``), in batches; returns how many."""
    import redis

    client = redis.Redis.from_url(redis_url)
    deleted, batch = 0, []
    try:
        for key in client.scan_iter(match=f"{project}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted


def row(label: str, ours: float, ref: float, unit: str, higher_is_better: bool = False) -> str:
    ratio = ours / ref if ref else float("nan")
    note = "ours/ref" if not higher_is_better else "ours/ref (higher is better)"
    return f"  {label:38} ours {ours:10.3f} {unit:6} ref {ref:10.3f} {unit:6} ratio {ratio:5.2f}  ({note})"


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant (server workers are children of the launcher)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


def tree_peak_rss_mb(pid: int) -> float:
    """Sum over ``pid`` and its descendants of each process's peak resident memory (VmHWM)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def tree_cpu_seconds_reaped(pid: int) -> float:
    """``tree_cpu_seconds`` plus the CPU of descendants already exited and waited for
    (``cutime``/``cstime``): a worker pool's SDK workers end with their job."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


def tree_rss_mb(pids: list[int]) -> float:
    """Resident memory now, summed over ``pids`` and all their descendants."""
    total = 0
    for p in {q for pid in pids for q in process_tree(pid)}:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class RssSampler:
    """The peak of ``tree_rss_mb(pids)``, sampled every ``every`` seconds on a thread: the
    peak memory of a job whose processes come and go (a job server's SDK workers)."""

    def __init__(self, pids: list[int], every: float = 0.05) -> None:
        import threading

        self.pids = list(pids)
        self.every = every
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def add(self, pid: int) -> None:
        self.pids.append(pid)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pids))
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def median_ratio(ours: list[float], ref: list[float]) -> float:
    """The median of the per-round ratios ours/ref (rounds interleaved, so paired)."""
    return statistics.median(o / r for o, r in zip(ours, ref) if r)


def round_ratios(ours: list[float], ref: list[float]) -> str:
    """The per-round ratios, for printing beside their median: ``(rounds 0.91 1.02 1.10)``."""
    return "(rounds " + " ".join(f"{o / r:.2f}" for o, r in zip(ours, ref) if r) + ")"


def delete_cluster_project(cluster_url: str, project: str) -> int:
    """``delete_redis_project`` on every primary of a Redis Cluster."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(cluster_url)
    deleted = 0
    try:
        for node in client.get_primaries():
            conn = client.get_redis_connection(node)
            keys = list(conn.scan_iter(match=f"{project}:*", count=10_000))
            for start in range(0, len(keys), 10_000):
                pipe = conn.pipeline(transaction=False)  # one key per command: any slot
                for key in keys[start : start + 10_000]:
                    pipe.unlink(key)
                deleted += sum(pipe.execute())
    finally:
        client.close()
    return deleted


def goal_line(
    workload: str,
    reference: str,
    ours: str,
    ratio: float,
    goal: str,
    met: bool,
) -> str:
    """One row of issue 19's table, printed by a script run with ``--issue19`` and collected by
    ``bench/issue19.py``: ``GOAL|workload|reference figure|our figure|ratio|goal|met``.

    ``reference`` and ``ours`` are human text (e.g. ``"6.6 s CPU, 0.41 GB"``); ``ratio`` is
    ours / reference in the direction the goal states (``goal`` names the bound, e.g.
    ``"CPU <= 1.2x"``).

    >>> goal_line("incremental run", "0.9 s", "1.2 s", 1.33, "fixed cost <= 1.5 s", True)
    'GOAL|incremental run|0.9 s|1.2 s|1.33x|fixed cost <= 1.5 s|met'
    """
    cells = [workload, reference, ours, f"{ratio:.2f}x", goal, "met" if met else "not met"]
    return "GOAL|" + "|".join(c.replace("|", "/") for c in cells)


def stop_servers(procs: Iterable[subprocess.Popen]) -> None:
    """Terminate every server process, then wait for each (killed after 15 s)."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rotated_rounds(names: list[str], rounds: int, measure: Callable[[str], dict[str, float]]) -> dict[str, list[dict[str, float]]]:
    """``measure(name)`` for every name, ``rounds`` times, the order rotated each round, so load
    from elsewhere on the machine falls on every case alike: each name's results in order."""
    got: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            got[name].append(measure(name))
    return got
