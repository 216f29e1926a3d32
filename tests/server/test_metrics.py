"""``online_server.metrics``: the exposition ``prometheus_client`` renders for the routers'
metrics, one worker (the files of several workers: tests/server/test_serve.py)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from online_server import metrics as m

FAMILIES = (
    m.Family("jobs_total", "Jobs by queue and result.", "counter", ("queue", "result"), "d"),
    m.Family("retries_total", "Retries.", "counter", (), "d"),
    m.Family("loss", "Mean loss.", "gauge", ("model", "version"), ".10g"),
    m.Family("loss_sum", "Sum of losses.", "counter", ("model",)),
)


def _families(text: str) -> dict[str, tuple[str, dict[tuple, float]]]:
    return {
        f.name: (f.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
        for f in text_string_to_metric_families(text)
    }


def test_families_render_from_one_snapshot() -> None:
    snapshots = []

    def collect() -> list:
        snapshots.append(1)
        return [
            {("b", "ok"): 12345678, ('a"\\\n', "failed"): 1},
            {(): 7},
            {("m", 10): 0.123456789012, ("m", 2): None},
            {("m",): 3.5},
        ]

    registry = m.Registry()
    registry.add(m.Collected("jobs", FAMILIES, collect))
    text = registry.render()
    assert len(snapshots) == 1
    assert 'jobs_total{queue="a\\"\\\\\\n",result="failed"} 1.0' in text.splitlines()  # escaped
    assert _families(text) == {
        "jobs": ("counter", {
            ("jobs_total", (("queue", 'a"\\\n'), ("result", "failed"))): 1.0,
            ("jobs_total", (("queue", "b"), ("result", "ok"))): 12345678.0,
        }),
        "retries": ("counter", {("retries_total", ()): 7.0}),
        # A None value is left out.
        "loss": ("gauge", {("loss", (("model", "m"), ("version", "10"))): 0.123456789012}),
        # A running sum not named _total keeps its name, as a gauge.
        "loss_sum": ("gauge", {("loss_sum", (("model", "m"),)): 3.5}),
    }


def test_a_family_without_a_source_is_left_out_entirely() -> None:
    registry = m.Registry()
    registry.add(m.Collected("jobs", FAMILIES, lambda: [{}, None, None, None]))
    assert _families(registry.render()) == {"jobs": ("counter", {})}


def test_a_broken_collector_shows_as_unavailable_and_hides_nothing_else() -> None:
    registry = m.Registry()
    registry.add(m.Collected("jobs", FAMILIES, lambda: [{}]))
    registry.add(m.Counter("other_total", "Other.")).inc()
    registry.add(m.Gauges("fresh_seconds", "Freshness.", "view", lambda: {"v": 1.5, "w": None}))
    text = registry.render()
    assert text.splitlines()[0] == "# jobs unavailable: ValueError"
    assert _families(text) == {
        "other": ("counter", {("other_total", ()): 1.0}),
        "fresh_seconds": ("gauge", {("fresh_seconds", (("view", "v"),)): 1.5}),
    }


def test_counters_and_histograms_add_up() -> None:
    registry = m.Registry()
    requests = registry.add(m.Counter("requests_total", "Requests.", ("endpoint", "status")))
    latency = registry.add(m.Histogram("request_seconds", "Latency.", ("endpoint",)))
    for _ in range(3):
        requests.inc("/f", "200")
        latency.observe(0.003, "/f")
    requests.inc("/f", "500", amount=2)
    assert requests.value("/f", "200") == 3 and requests.value("/f", "500") == 2
    samples = _families(registry.render())
    assert samples["requests"][1][("requests_total", (("endpoint", "/f"), ("status", "200")))] == 3
    histogram = samples["request_seconds"][1]
    assert histogram[("request_seconds_bucket", (("endpoint", "/f"), ("le", "0.0025")))] == 0
    assert histogram[("request_seconds_bucket", (("endpoint", "/f"), ("le", "0.005")))] == 3
    assert histogram[("request_seconds_count", (("endpoint", "/f"),))] == 3


def test_a_family_is_a_counter_or_a_gauge() -> None:
    with pytest.raises(ValueError, match="histogram"):
        m.Family("x", "X.", "histogram")


_WORKER = """
import sys
from online_server import metrics as m
registry = m.Registry()
count, size = float(sys.argv[1]), float(sys.argv[2])
registry.add(m.Collected("svc", (
    m.Family("jobs_total", "Jobs.", "counter", ("queue",)),
    m.Family("cache", "Entries held by this process.", "gauge", (), per_process=True),
    m.Family("fresh_seconds", "The same in every worker.", "gauge", ()),
), lambda: [{("q",): count}, {(): size}, {(): 9.0}]))
registry._mirror.sync()
if sys.argv[3] == "render":
    registry._mirror._reap()
    print(registry.render())
"""


def test_several_workers_report_every_workers_numbers(tmp_path, monkeypatch) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (``serve --workers N``): a counter family a service keeps
    is summed over the workers, an exited one included (a counter never goes back); a
    per-process gauge shows each running worker (label pid), not an exited one; a gauge that
    is the same everywhere is computed by the worker that answers."""
    import subprocess
    import sys

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    subprocess.run([sys.executable, "-c", _WORKER, "5", "100", "exit"], check=True)
    out = subprocess.run([sys.executable, "-c", _WORKER, "7", "40", "render"], check=True,
                         capture_output=True, text=True).stdout
    samples = _families(out)
    assert samples["jobs"] == ("counter", {("jobs_total", (("queue", "q"),)): 12.0})
    cache = samples["cache"][1]
    assert list(cache.values()) == [40.0] and all(dict(k[1]).get("pid") for k in cache)
    assert samples["fresh_seconds"] == ("gauge", {("fresh_seconds", ()): 9.0})


_ONE_PROCESS = """
import time
from online_server import metrics as m
calls = []
def fresh():
    calls.append(1)
    raise ConnectionError("the store is down")
first, second = m.Registry(), m.Registry()  # two apps in one process share the metric objects
for registry in (first, second):
    registry.add(m.Counter("requests_total", "Requests.", ("endpoint",))).inc("/f", amount=3)
    registry.add(m.Gauges("fresh_seconds", "Freshness.", "view", fresh))
first.add(m.Collected("guard", (
    m.Family("losses_total", "Losses every process sees.", "counter", (), per_process=False),
), lambda: [{(): 1.0}]))
time.sleep(1.5)  # the mirror threads run: they must not read the store-backed gauge
idle_calls = len(calls)
print(idle_calls)
print(first.render())
"""


def test_several_workers_a_failing_source_and_shared_counts(tmp_path, monkeypatch) -> None:
    """With PROMETHEUS_MULTIPROC_DIR: the mirror never reads a gauge that may ask a store (only
    a scrape does); a scrape whose store-backed gauge fails still answers everything else; two
    apps in one process add up; a counter every process sees alike is not multiplied."""
    import subprocess
    import sys

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _ONE_PROCESS], check=True, capture_output=True, text=True).stdout
    idle_calls, text = out.split("\n", 1)
    assert idle_calls == "0"
    assert "# fresh_seconds unavailable: ConnectionError" in text.splitlines()
    samples = _families(text)
    assert samples["requests"] == ("counter", {("requests_total", (("endpoint", "/f"),)): 6.0})
    assert samples["losses"] == ("counter", {("losses_total", ()): 1.0})
