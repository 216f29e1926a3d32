"""The server's Prometheus metrics, on ``prometheus_client``, right with several workers.

Four kinds, one small API for the routers:

- ``Counter``, ``Histogram``: values this process adds to (``inc``, ``observe``);
- ``Gauges``: one labelled gauge computed when scraped (freshness, stream stats);
- ``Collected``: counter and gauge families read from elsewhere by one ``collect`` call per
  scrape (counters a service keeps, shared with SDK calls).

**One worker** (``serve`` without ``--workers``, tests): each ``Registry`` is its own
``prometheus_client.CollectorRegistry``; a scrape renders it with ``generate_latest``.

**Several workers** (``serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
directory before the workers start): the worker that answers a scrape must report every
worker's numbers, so every number must reach the shared directory:

- ``Counter``/``Histogram``: ``prometheus_client`` writes them there itself; the scrape sums
  every worker's files (``MultiProcessCollector``), those of workers that have exited included,
  so a counter never goes back;
- counter families of ``Collected`` (each process counts its own events): mirrored into
  multiprocess counters by their increase since the last mirror, by each worker about once a
  second and by the scraping worker before it answers (the other workers' last second may be
  missing from one scrape, never lost);
- a gauge with ``per_process=True`` (this process's cache size, its pending log records):
  mirrored the same way into a ``liveall`` gauge, one sample per running worker (label ``pid``);
- any other gauge (freshness, stream lag: the same whichever worker computes it), and a counter
  with ``per_process=False`` (every process counts the same events, e.g. losses of the shared
  online store), is computed by the scraping worker, as with one worker. The mirror never
  reads those: they may ask a store, which only a scrape should do.

Counter families follow Prometheus' naming: ``..._total``. A running sum whose name does not end
so (``..._sum``, ``..._count`` beside a gauge) is shown as a gauge, keeping its name.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client import Counter as _PCounter
from prometheus_client import Gauge as _PGauge
from prometheus_client import Histogram as _PHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: How often each worker mirrors its ``Collected`` counters and per-process gauges.
SYNC_SECONDS = 1.0

disable_created_metrics()  # no *_created samples: not in the multiprocess files either


def multiprocess_dir() -> str | None:
    """The shared directory of ``serve --workers N``, or None with one process."""
    return os.environ.get(MULTIPROC_ENV) or None


# With several workers, one prometheus_client metric per name and process: its values live in
# this process's file under (name, labels), so two objects of one name (two apps in a process)
# would overwrite each other's counts.
_PROCESS_METRICS: dict[str, Any] = {}
_PROCESS_LOCK = threading.Lock()


def _process_metric(kind: Any, name: str, help_text: str, labels: Sequence[str], **options: Any) -> Any:
    if multiprocess_dir() is None:
        return kind(name, help_text, labels, registry=None, **options)
    with _PROCESS_LOCK:
        metric = _PROCESS_METRICS.get(name)
        if metric is None:
            metric = _PROCESS_METRICS[name] = kind(name, help_text, labels, registry=None, **options)
        return metric


def _str(values: Sequence[Any]) -> list[str]:
    return [str(v) for v in values]


def _child(metric: Any, children: dict[tuple[Any, ...], Any], label_names: tuple[str, ...], labels: tuple[Any, ...]) -> Any:
    """The labelled child of ``metric``, kept per label tuple: prometheus_client's ``labels()``
    validates and locks on every call, ~3 µs, four times per ``/predict``. (prometheus_client
    keeps every child too, so this holds no more than it does.)"""
    child = children.get(labels)
    if child is None:
        child = children[labels] = metric.labels(*_str(labels)) if label_names else metric
    return child


class Counter:
    """A counter this process adds to; ``value`` is this process's own count."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self._metric = _process_metric(_PCounter, name, help_text, labels)
        self._own: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        self._children: dict[tuple[Any, ...], Any] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        _child(self._metric, self._children, self.label_names, labels).inc(amount)
        with self._lock:
            self._own[labels] = self._own.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._own.get(labels, 0.0)

    def collector(self) -> Any:
        return self._metric


class Histogram:
    def __init__(
        self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        self._metric = _process_metric(_PHistogram, name, help_text, labels, buckets=buckets)
        self._children: dict[tuple[Any, ...], Any] = {}

    def observe(self, value: float, *labels: str) -> None:
        _child(self._metric, self._children, self.label_names, labels).observe(value)

    def collector(self) -> Any:
        return self._metric


class Family:
    """A counter or gauge family (name, help, type, label names) whose samples ``Collected``
    reads at scrape time. ``per_process``: a gauge whose value is this process's own (shown per
    worker with several). ``value_format`` is kept for callers; ``prometheus_client`` formats.

    >>> Family("jobs_total", "Jobs by result.", "counter", ("result",)).kind
    'counter'
    """

    KINDS = ("counter", "gauge")

    def __init__(
        self, name: str, help_text: str, kind: str, labels: tuple[str, ...] = (), value_format: str = "g",
        *, per_process: bool | None = None,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"metric {name}: kind {kind!r} is not one of {', '.join(self.KINDS)}")
        self.name, self.help, self.kind, self.label_names = name, help_text, kind, labels
        self.value_format = value_format
        # Whose value it is. A counter counts this process's own events (summed over workers)
        # unless every process counts the same events (per_process=False: the answering
        # worker's own count). A gauge is the same everywhere unless per_process=True.
        self.per_process = (kind == "counter") if per_process is None else per_process

    @property
    def counter(self) -> bool:
        """Shown as a Prometheus counter (a running sum not named ``_total`` shows as a gauge)."""
        return self.kind == "counter" and self.name.endswith("_total")

    def metric(self, samples: Mapping[tuple[Any, ...], float | None]) -> Metric:
        """The family with one sample per label tuple, sorted; a None value is left out."""
        if self.counter:
            family: Metric = CounterMetricFamily(self.name, self.help, labels=self.label_names)
        else:
            family = GaugeMetricFamily(self.name, self.help, labels=self.label_names)
        for labels in sorted(samples, key=lambda t: tuple(str(v) for v in t)):
            value = samples[labels]
            if value is not None:
                family.add_metric(_str(labels), float(value))
        return family


class Gauges:
    """A gauge computed when scraped, from a callback returning label -> value."""

    def __init__(
        self, name: str, help_text: str, label: str, collect: Callable[[], dict[str, float | None]],
        *, per_process: bool | None = None,
    ) -> None:
        self.name = name
        self.family = Family(name, help_text, "gauge", (label,), per_process=per_process)
        self.collect_values = collect

    @property
    def families(self) -> tuple[Family, ...]:
        return (self.family,)

    def collect(self) -> list[Mapping[tuple[Any, ...], float | None] | None]:
        return [{(key,): value for key, value in self.collect_values().items()}]


class Collected:
    """Families whose values live elsewhere, read by one ``collect`` call per scrape (so the
    families of one scrape show one snapshot).

    ``collect`` returns one mapping per family, in order, from label values (a tuple, one value
    per label name) to the value. A mapping of None leaves its family out: for a source that does
    not exist yet. ``name`` stands for them all when ``collect`` fails.
    """

    def __init__(
        self,
        name: str,
        families: Sequence[Family],
        collect: Callable[[], Sequence[Mapping[tuple[Any, ...], float | None] | None]],
    ) -> None:
        self.name, self.families, self._collect = name, tuple(families), collect

    def collect(self) -> Sequence[Mapping[tuple[Any, ...], float | None] | None]:
        snapshot = self._collect()
        if len(snapshot) != len(self.families):
            raise ValueError(f"{self.name}: {len(snapshot)} sample sets for {len(self.families)} families")
        return snapshot


_Metric = TypeVar("_Metric", Counter, Histogram, Gauges, Collected)
_Read = Gauges | Collected


class _ScrapeTime(Collector):
    """The read-at-scrape metrics of a registry as one ``prometheus_client`` collector. A source
    that fails shows as a comment line and hides nothing else (``Registry.render``)."""

    def __init__(self, sources: list[_Read], include: Callable[[Family], bool]) -> None:
        self.sources, self.include = sources, include
        self.failed: list[str] = []

    def collect(self) -> Iterator[Metric]:
        self.failed = []
        for source in list(self.sources):
            try:
                snapshot = source.collect()
            except Exception as exc:  # noqa: BLE001 - a broken gauge must not hide the others
                self.failed.append(f"# {source.name} unavailable: {type(exc).__name__}")
                continue
            for family, samples in zip(source.families, snapshot):
                if samples is not None and self.include(family):
                    yield family.metric(samples)


class Registry:
    """The metrics of one app; ``render`` is the body of ``GET /metrics``."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._read: list[_Read] = []
        self._mirror: _Mirror | None = None
        if multiprocess_dir() is not None:
            self._mirror = _Mirror(self._read)

    def add(self, metric: _Metric) -> _Metric:
        if isinstance(metric, (Gauges, Collected)):
            self._read.append(metric)
        else:
            self._registry.register(metric.collector())
        return metric

    def render(self) -> str:
        if self._mirror is None:
            scrape = _ScrapeTime(self._read, lambda family: True)
            body = generate_latest(_Joined(self._registry, scrape)).decode()
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            failed = self._mirror.sync()  # this worker's latest, before the files are read
            shared = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(shared, multiprocess_dir())
            # Mirrored families come from the files; only the rest is computed here.
            scrape = _ScrapeTime(self._read, lambda family: not _mirrored(family))
            body = generate_latest(_Joined(shared, scrape)).decode()
            scrape.failed = sorted(set(failed + scrape.failed))
        return "".join(line + "\n" for line in scrape.failed) + body


class _Joined(Collector):
    """A registry's collectors, then the scrape-time ones (so routers' counters come first)."""

    def __init__(self, registry: CollectorRegistry, scrape: _ScrapeTime) -> None:
        self.registry, self.scrape = registry, scrape

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.scrape.collect()


def _mirrored(family: Family) -> bool:
    return bool(family.per_process)


class _Mirror:
    """With several workers: copies this process's ``Collected`` counters (by their increase)
    and per-process gauges into ``prometheus_client``'s multiprocess files, once a second and
    before a scrape this worker answers."""

    def __init__(self, sources: list[_Read]) -> None:
        self.sources = sources
        self._counters: dict[str, Any] = {}
        self._gauges: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        owner = weakref.ref(self)

        def loop() -> None:
            while (mirror := owner()) is not None:
                mirror.sync()
                try:
                    mirror._reap()
                except OSError:
                    logger.debug("reaping the metrics of exited workers failed", exc_info=True)
                del mirror
                time.sleep(SYNC_SECONDS)

        threading.Thread(target=loop, name="metrics-mirror", daemon=True).start()

    def sync(self) -> list[str]:
        """Mirror every source with a per-process family (only those: the others may read a
        store, which the answering worker does at scrape time); returns the failures as
        exposition comments, one per failing source, which hides nothing else."""
        failed = []
        with self._lock:
            for source in list(self.sources):
                if not any(_mirrored(f) for f in source.families):
                    continue
                try:
                    self._sync(source)
                except Exception as exc:  # noqa: BLE001 - a broken source must not hide the others
                    failed.append(f"# {source.name} unavailable: {type(exc).__name__}")
                    if source.name not in self._warned:
                        self._warned.add(source.name)
                        logger.warning("metrics of %s not mirrored: %s", source.name, exc)
        return failed

    def _sync(self, source: _Read) -> None:
        snapshot = source.collect()
        for family, samples in zip(source.families, snapshot):
            if samples is None or not _mirrored(family):
                continue
            if family.kind == "counter":
                self._add(family, samples)
            else:
                self._set(family, samples)

    def _add(self, family: Family, samples: Mapping[tuple[Any, ...], float | None]) -> None:
        counter = self._counters.get(family.name)
        if counter is None:
            if family.counter:
                counter = _process_metric(_PCounter, family.name, family.help, family.label_names)
            else:  # a running sum not named _total: a gauge that sums every worker's value
                counter = _process_metric(_PGauge, family.name, family.help, family.label_names,
                                          multiprocess_mode="sum")
            self._counters[family.name] = counter
        for labels, value in samples.items():
            if value is None:
                continue
            key = (family.name, tuple(_str(labels)))
            child = counter.labels(*key[1]) if family.label_names else counter
            if isinstance(counter, _PGauge):
                child.set(float(value))  # each worker's own running sum; the scrape adds them
                continue
            last = self._last.get(key, 0.0)
            # A smaller value: the source started again (a new service); count it from zero.
            increase = float(value) - last if value >= last else float(value)
            if increase > 0:
                child.inc(increase)
            self._last[key] = float(value)

    def _set(self, family: Family, samples: Mapping[tuple[Any, ...], float | None]) -> None:
        gauge = self._gauges.get(family.name)
        if gauge is None:
            gauge = _process_metric(_PGauge, family.name, family.help, family.label_names,
                                    multiprocess_mode="liveall")
            self._gauges[family.name] = gauge
        for labels, value in samples.items():
            if value is not None:
                (gauge.labels(*_str(labels)) if family.label_names else gauge).set(float(value))

    def _reap(self) -> None:
        """Forget the live gauges of workers that have exited (a restarted worker's old pid)."""
        from prometheus_client.multiprocess import mark_process_dead

        path = multiprocess_dir()
        if path is None:
            return
        for name in os.listdir(path):
            if not name.startswith("gauge_live"):
                continue
            try:
                pid = int(name.rsplit("_", 1)[1].split(".")[0])
                os.kill(pid, 0)
            except ProcessLookupError:
                mark_process_dead(pid, path)
            except (ValueError, IndexError, PermissionError):
                continue

