"""CLI start-up: CPU and wall time of `featurestore --help` and `featurestore validate` beside the
bare interpreter (`python -c pass`), rounds interleaved, medians, ratios (issue 19: <= 0.3 s CPU).

    python3 bench/bench_cli.py [--rounds 15] [--quick] [--issue19]

Each command runs in its own process; CPU is the child's user + system time (os.wait4), peak
memory its maximum resident set. `validate` runs on the example repository (`featurestore init`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import goal_line  # noqa: E402


def _run(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall s, cpu s, peak MB) of one run."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed: {err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--issue19", action="store_true", help="also print issue 19's goal rows (GOAL|...)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run([sys.executable, "-m", "featurestore.cli.main", "init", str(repo)], check=True,
                       stdout=subprocess.DEVNULL)
        # The console script users type, when installed; else the same module through python.
        script = shutil.which("featurestore")
        cli = [script] if script else [sys.executable, "-m", "featurestore.cli.main"]
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "featurestore --help": [*cli, "--help"],
            "featurestore validate": [*cli, "validate"],
        }
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleaved: a noisy moment hits every case alike
            for name, cmd in cases.items():
                samples[name].append(_run(cmd, repo))
    ref = [statistics.median(x[i] for x in samples["python -c pass"]) for i in range(3)]
    print(f"{'command':24} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}   cpu - bare   cpu / bare   (median of {args.rounds})")
    for name, runs in samples.items():
        wall, cpu, peak = (statistics.median(x[i] for x in runs) for i in range(3))
        print(f"{name:24} {wall:8.3f} {cpu:8.3f} {peak:8.1f}   {cpu - ref[1]:+9.3f}   {cpu / ref[1]:9.2f}x")
        if args.issue19 and name != "python -c pass":
            print(goal_line(f"`{name}` CPU", f"python -c pass {ref[1]:.3f} s CPU", f"{cpu:.3f} s CPU, {peak:.0f} MB",
                            cpu / ref[1], "<= 0.3 s CPU", cpu <= 0.3))


if __name__ == "__main__":
    main()
