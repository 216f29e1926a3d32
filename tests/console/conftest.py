"""The console in a real browser: Debian's chromium driven by Playwright (from PyPI; never
``playwright install``). A server with the console, ``/eval`` and tokens runs in a thread on a
free loopback port over a repository with two registry versions, a pending YAML change, two
trained versions of ``taste`` with feedback over ten days, and ``ctx`` (logistic).

Without /usr/bin/chromium the tests are skipped locally and FAIL in CI (``CI`` set): .ci/run
installs it."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = os.environ.get("FEATURESTORE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ADMIN, READER = "fs_console_admin", "fs_console_reader"


def _need_chromium() -> None:
    if Path(CHROMIUM).is_file():
        return
    message = f"no chromium at {CHROMIUM}; install it with `apt-get install -y chromium` (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _repository(root: Path) -> Any:
    from featurestore.config import TokenConfig
    from featurestore.feedback.export import save_training_labels
    from featurestore.tokens import hash_token
    from tests.velox.conftest import labels
    from tests.velox_feedback.conftest import DEFS, trained_store

    store = trained_store(root, {"type": "embedded"}, "ui" + uuid.uuid4().hex[:10])
    save_training_labels(store.context, "taste", 2, labels(seed=1, items=list(range(1, 11))), "event_timestamp")
    defs_file = root / "features" / "defs.yaml"
    assert "    ttl: 1h\n    features:\n      - {name: pop" in DEFS
    defs_file.write_text(DEFS.replace("    ttl: 1h\n    features:\n      - {name: pop",
                                      "    ttl: 2h\n    features:\n      - {name: pop"))
    store.apply(message="serve item popularity for two hours")
    # A change written but not applied: the lineage page shows what it would affect.
    defs_file.write_text(defs_file.read_text().replace(
        "      - {name: activity, dtype: float64}", "      - {name: activity, dtype: float64}\n      - {name: visits, dtype: int64}"))
    rng = np.random.default_rng(5)
    now = datetime.now(timezone.utc)

    def send(prefix: str, days: range, users: list[int]) -> None:
        obs = []
        for day in days:
            for k in range(12):
                item = int(rng.integers(1, 20))
                obs.append({"model": "taste", "user": {"user_id": int(rng.choice(users))}, "item": {"item_id": item},
                            "label": float(np.round(rng.normal(2.0, 1.0), 2)), "feedback_id": f"{prefix}{day}-{k}",
                            "ts": (now - timedelta(days=day, hours=k)).isoformat(), "slice": "web" if k % 2 else "mobile"})
        store.feedback_many(obs)

    store.activate_model("taste", 1)
    send("v1-", range(9, 4, -1), [1, 2, 3, 60])
    store.activate_model("taste", 2)
    send("v2-", range(4, -1, -1), [1, 2, 3, 61])
    for user in (1, 2, 3):
        store.predict("taste", {"user_id": user}, [{"item_id": i} for i in range(1, 20)])
    assert store.predictor.log.flush()  # the drift table reads them from fs_predictions
    tokens = [TokenConfig(name="admin", sha256=hash_token(ADMIN), roles=["admin"]),
              TokenConfig(name="reader", sha256=hash_token(READER), roles=["read"])]
    store.config = store.config.model_copy(update={"server": store.config.server.model_copy(update={"tokens": tokens})})
    return store


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """(base URL, store) of a running server with the console mounted at /ui."""
    _need_chromium()
    import uvicorn

    from online_server import create_app

    store = _repository(tmp_path_factory.mktemp("console") / "repo")
    app = create_app(store)  # with /ui and /eval mounted, as every server
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the console server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(10)
    store.close()


@pytest.fixture(scope="module")
def console_url(console_server: tuple[str, Any]) -> str:
    return console_server[0]


@pytest.fixture(scope="module")
def console_store(console_server: tuple[str, Any]) -> Any:
    return console_server[1]


@pytest.fixture(scope="module")
def browser(console_url: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


class Visit:
    """A signed-in page that records every request, console message and page error."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("response", lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

    def sign_in(self, token: str = ADMIN, path: str = "/ui/") -> None:
        self.page.goto(self.base + path)
        self.page.fill("#token", token)
        self.page.click("#login-form button")

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.base) and not u.startswith("data:")]


@pytest.fixture
def visit(browser: Any, console_url: str) -> Iterator[Visit]:
    v = Visit(browser, console_url)
    v.sign_in()
    v.page.wait_for_url(console_url + "/ui/")
    yield v
    v.context.close()
