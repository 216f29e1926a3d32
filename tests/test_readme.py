"""The README's front page must not rot: its first command runs the demo (here in its fast mode),
the report is complete, every command it suggests next works as printed, and a second run works."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_starts_with_install_and_demo_then_the_test_command() -> None:
    first, second = readme_commands()
    assert first.startswith("python3 -m pip install -e '.[test]' && featurestore demo")
    assert second == "python3 -m pytest"
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("\npython3 -m pytest")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_demo_report_next_commands_and_second_run(tmp_path: Path) -> None:
    first = run_cli(["demo", "velox-demo", "--fast"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    out = first.stdout
    for line in ("repository", "registry", "offline store", "online store", "model", "materialized",
                 "online read", "predict", "feedback", "held-out RMSE", "total time"):
        assert re.search(rf"^  {line}\s", out, flags=re.M), f"report line {line!r} missing:\n{out}"
    static, online = map(float, re.search(r"static model ([0-9.]+)\s+online-updated ([0-9.]+)", out).groups())
    assert online < static, "online updates from feedback should lower the held-out error"
    seconds = float(re.search(r"total time\s+([0-9.]+) s", out).group(1))
    assert seconds < 120
    suggested = out.split("Next commands to try:")[1].strip().splitlines()
    assert len(suggested) >= 6
    for line in suggested:
        command = line.split("#")[0].strip()
        argv = shlex.split(command)
        assert argv[0] == "featurestore"
        if argv[-1] == "serve":
            continue  # runs until stopped; the demo itself served through the same command
        argv = [a.replace("/tmp/train.parquet", str(tmp_path / "train.parquet")) for a in argv]
        result = run_cli(argv[1:], tmp_path)
        assert result.returncode == 0, f"{command}: {result.stderr[-1000:]}"
    again = run_cli(["demo", "velox-demo", "--fast"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Re-using the repository and data" in again.stdout
    assert "taste v2" in again.stdout
