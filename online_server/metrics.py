"""A minimal Prometheus text-format registry: counters and histograms with labels.

Small on purpose (the project's dependencies are fixed): enough for request counts, latency
histograms, store errors, cache hit rates and freshness gauges. Each server worker process keeps
its own numbers; scrape each worker, or run one worker per container.

Two kinds of metric: those that hold their values (``Counter``, ``Histogram``), and those read
from elsewhere when scraped (``Gauges``: one gauge label; ``Collected``: counter and gauge
families with any labels, e.g. counters kept by a service that SDK calls share).
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Callable, Mapping, Sequence, TypeVar

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(names: tuple[str, ...], values: tuple[Any, ...]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))
    return "{" + inner + "}"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in sorted(self._values.items()):
            out.append(f"{self.name}{_labels(self.label_names, labels)} {value:g}")
        return out


class Histogram:
    def __init__(
        self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [0.0] * (len(self.buckets) + 2)
            series[index] += 1 if index < len(self.buckets) else 0
            series[-2] += value
            series[-1] += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, series in sorted(self._series.items()):
            cumulative = 0.0
            for bound, count in zip(self.buckets, series):
                cumulative += count
                names = self.label_names + ("le",)
                out.append(f"{self.name}_bucket{_labels(names, labels + (f'{bound:g}',))} {cumulative:g}")
            out.append(f"{self.name}_bucket{_labels(self.label_names + ('le',), labels + ('+Inf',))} {series[-1]:g}")
            out.append(f"{self.name}_sum{_labels(self.label_names, labels)} {series[-2]:.6f}")
            out.append(f"{self.name}_count{_labels(self.label_names, labels)} {series[-1]:g}")
        return out


class Gauges:
    """Gauges computed when scraped (e.g. freshness), from a callback returning label -> value."""

    def __init__(self, name: str, help_text: str, label: str, collect: Callable[[], dict[str, float | None]]) -> None:
        self.name, self.help, self.label, self.collect = name, help_text, label, collect

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        for key, value in sorted(self.collect().items()):
            if value is not None:
                out.append(f'{self.name}{{{self.label}="{_escape(key)}"}} {value:g}')
        return out


class Family:
    """A counter or gauge family (name, help, type, label names) whose samples ``Collected``
    reads at scrape time. ``value_format`` is the format spec of the values (``d`` for counts).

    >>> Family("jobs_total", "Jobs by result.", "counter", ("result",), "d").render({("ok",): 3})
    ['# HELP jobs_total Jobs by result.', '# TYPE jobs_total counter', 'jobs_total{result="ok"} 3']
    """

    KINDS = ("counter", "gauge")

    def __init__(
        self, name: str, help_text: str, kind: str, labels: tuple[str, ...] = (), value_format: str = "g"
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"metric {name}: kind {kind!r} is not one of {', '.join(self.KINDS)}")
        self.name, self.help, self.kind, self.label_names = name, help_text, kind, labels
        self.value_format = value_format

    def render(self, samples: Mapping[tuple[Any, ...], float | None]) -> list[str]:
        """HELP, TYPE and one line per sample, sorted by label values; a None value is left out."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels in sorted(samples):
            value = samples[labels]
            if value is not None:
                out.append(f"{self.name}{_labels(self.label_names, labels)} {value:{self.value_format}}")
        return out


class Collected:
    """Families whose values live elsewhere, read by one ``collect`` call per scrape (so the
    families of one scrape show one snapshot).

    ``collect`` returns one mapping per family, in order, from label values (a tuple, one value
    per label name) to the value. A mapping of None leaves its family out, HELP and TYPE
    included: for a source that does not exist yet. ``name`` stands for them all when
    ``collect`` fails.
    """

    def __init__(
        self,
        name: str,
        families: Sequence[Family],
        collect: Callable[[], Sequence[Mapping[tuple[Any, ...], float | None] | None]],
    ) -> None:
        self.name, self.families, self.collect = name, tuple(families), collect

    def render(self) -> list[str]:
        snapshot = self.collect()
        if len(snapshot) != len(self.families):
            raise ValueError(f"{self.name}: {len(snapshot)} sample sets for {len(self.families)} families")
        out: list[str] = []
        for family, samples in zip(self.families, snapshot):
            if samples is not None:
                out += family.render(samples)
        return out


_Metric = TypeVar("_Metric", Counter, Histogram, Gauges, Collected)


class Registry:
    def __init__(self) -> None:
        self._metrics: list[Counter | Histogram | Gauges | Collected] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            try:
                lines += metric.render()
            except Exception as exc:  # noqa: BLE001 - a broken gauge must not hide the others
                lines.append(f"# {metric.name} unavailable: {type(exc).__name__}")
        return "\n".join(lines) + "\n"
