"""Issue 19's table from one run: every benchmark's ``--issue19`` case, one after another.

    python3 bench/issue19.py [--only NAME ...] [--markdown bench/out/issue19.md]

Each script prints its goal rows as ``GOAL|workload|reference|ours|ratio|goal|met``
(``bench._common.goal_line``), its reference measured in the same run as ours. This collects
them into one Markdown table, with the machine's load average before and after each script (2
shared cores: read the ratios, not the times). Every script's whole output is kept under
``bench/out/issue19/`` beside the table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out" / "issue19"

# (name, arguments after the interpreter): the order of issue 19's table.
SCRIPTS: list[tuple[str, list[str]]] = [
    ("materialize", ["bench/bench_materialize.py", "--issue19"]),
    ("embedded write", ["bench/online_store_write.py", "--issue19"]),
    ("export", ["bench/bench_export.py", "--issue19"]),
    ("feedback", ["bench/bench_feedback.py", "--issue19"]),
    ("update kernel", ["bench/bench_update.py", "--issue19"]),
    ("predict", ["bench/bench_predict.py", "--issue19"]),
    ("online", ["bench/bench_online.py", "--issue19"]),
    ("cli", ["bench/bench_cli.py", "--issue19"]),
]


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", metavar="NAME", help=f"some of: {', '.join(n for n, _ in SCRIPTS)}")
    parser.add_argument("--markdown", type=Path, default=OUT / "table.md", help="where the table is written too")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    root = BENCH.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    rows: list[list[str]] = []
    failures: list[str] = []
    notes: list[str] = []
    for name, script in SCRIPTS:
        if args.only and name not in args.only:
            continue
        before = _load()
        start = time.perf_counter()
        print(f"== {name}: {' '.join(script)} (load {before})", flush=True)
        proc = subprocess.run([sys.executable, *script], cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        log = OUT / f"{name.replace(' ', '_')}.txt"
        log.write_text(proc.stdout + ("\n--- stderr ---\n" + proc.stderr if proc.stderr else ""))
        found = [line.split("|")[1:] for line in proc.stdout.splitlines() if line.startswith("GOAL|")]
        for cells in found:
            print("   " + " | ".join(cells), flush=True)
        rows.extend(found)
        after = _load()
        notes.append(f"{name}: {seconds:.0f} s, load {before} -> {after}")
        if proc.returncode != 0 or not found:
            failures.append(f"{name} (exit {proc.returncode}, {len(found)} goal rows; see {log})")
    table = ["| workload | reference, same run | us | ratio | goal | |", "|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(cells) + " |" for cells in rows]
    text = "\n".join(table) + "\n\nScripts (wall time, 1/5/15-min load average before -> after): " + "; ".join(notes) + "\n"
    args.markdown.write_text(text)
    print()
    print(text)
    print(f"{sum(r[-1] == 'met' for r in rows)} of {len(rows)} goals met; table in {args.markdown}")
    if failures:
        raise SystemExit("failed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
