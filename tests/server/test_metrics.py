"""``online_server.metrics``: the Prometheus text of families read at scrape time."""

from __future__ import annotations

import pytest

from online_server import metrics as m

FAMILIES = (
    m.Family("jobs_total", "Jobs by queue and result.", "counter", ("queue", "result"), "d"),
    m.Family("retries_total", "Retries.", "counter", (), "d"),
    m.Family("loss", "Mean loss.", "gauge", ("model", "version"), ".10g"),
)


def test_families_render_from_one_snapshot() -> None:
    snapshots = []

    def collect() -> list:
        snapshots.append(1)
        return [
            {("b", "ok"): 12345678, ('a"\\\n', "failed"): 1},
            {(): 7},
            {("m", 10): 0.123456789012, ("m", 2): None},
        ]

    assert m.Collected("jobs", FAMILIES, collect).render() == [
        "# HELP jobs_total Jobs by queue and result.",
        "# TYPE jobs_total counter",
        'jobs_total{queue="a\\"\\\\\\n",result="failed"} 1',
        'jobs_total{queue="b",result="ok"} 12345678',
        "# HELP retries_total Retries.",
        "# TYPE retries_total counter",
        "retries_total 7",
        "# HELP loss Mean loss.",
        "# TYPE loss gauge",
        'loss{model="m",version="10"} 0.123456789',
    ]
    assert len(snapshots) == 1


def test_a_family_without_a_source_is_left_out_entirely() -> None:
    assert m.Collected("jobs", FAMILIES, lambda: [{}, None, None]).render() == [
        "# HELP jobs_total Jobs by queue and result.",
        "# TYPE jobs_total counter",
    ]


def test_a_broken_collector_shows_as_unavailable_and_hides_nothing_else() -> None:
    registry = m.Registry()
    registry.add(m.Collected("jobs", FAMILIES, lambda: [{}]))
    registry.add(m.Counter("other_total", "Other.")).inc()
    assert registry.render().splitlines() == [
        "# jobs unavailable: ValueError",
        "# HELP other_total Other.",
        "# TYPE other_total counter",
        "other_total 1",
    ]


def test_a_family_is_a_counter_or_a_gauge() -> None:
    with pytest.raises(ValueError, match="histogram"):
        m.Family("x", "X.", "histogram")
