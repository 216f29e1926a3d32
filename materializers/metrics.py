"""Beam metrics of the batch job: one namespace, counters by name (read in ``batch._counters``)."""

from __future__ import annotations

from typing import Any

METRICS_NAMESPACE = "featurestore.materialize"


def counter(name: str) -> Any:
    """A Beam counter of the batch job; Beam is imported here, when a transform is built."""
    from apache_beam.metrics import Metrics

    return Metrics.counter(METRICS_NAMESPACE, name)
