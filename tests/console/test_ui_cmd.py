"""`featurestore ui`: the console alone, on loopback, in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.velox.conftest import make_store

# main.py registers the verb (see the report's diff); until then the test registers it itself.
LAUNCH = (
    "import sys; from featurestore.cli import main as m; "
    "m.VERBS.setdefault('ui', ('featurestore.cli.ui_cmd', 'serve the web console')); sys.exit(m.main(sys.argv[1:]))"
)


def _repo(tmp_path: Path) -> Path:
    store = make_store(tmp_path / "repo", {"type": "embedded"}, "ui" + uuid.uuid4().hex[:8])
    store.close()
    return tmp_path / "repo"


def test_ui_serves_the_console_on_loopback(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "-r", str(repo), "ui", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("Console of project ui"), (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/ui/")
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "Project ui" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        home = httpx.get(url.removesuffix("ui/"), timeout=10)
        assert home.status_code == 307 and home.headers["location"] == "/ui/"
        assert httpx.get(url + "static/uplot-1.6.32.iife.min.js", timeout=10).text.startswith("/*! https://github.com/leeoniya/uPlot")
        assert httpx.get(url + "static/..%2Froutes.py", timeout=10).status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)


def test_ui_refuses_an_open_address_without_tokens(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    done = subprocess.run([sys.executable, "-c", LAUNCH, "-r", str(repo), "ui", "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=Path(__file__).parents[2])
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0].startswith("error: refusing to serve on 0.0.0.0 without tokens") and lines[1].startswith("hint: ")
