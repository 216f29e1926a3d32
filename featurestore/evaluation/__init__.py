"""The evaluation store: model quality you can query, indexed by model (the feature store is
indexed by feature), built from what serving already logs.

    window   Window: the last N (7d), a START..END range, or everything
    source   where rows come from: the feedback log's Parquet view (DuckDB) + its SQL tail
    query    evaluate (models x metrics x slices x window), drift_vs_validation, compare_versions
    drift    feature_drift: per-feature KS distance of served x vs a reference, times |w_avg|

docs/evaluation.md has the design and the definitions of every metric and slice.
"""

from featurestore.evaluation.drift import feature_drift, ks_distance
from featurestore.evaluation.query import (
    METRICS,
    SLICES,
    compare_versions,
    drift_vs_validation,
    evaluate,
    notes_of,
)
from featurestore.evaluation.window import WINDOW_HELP, Window

__all__ = [
    "METRICS",
    "SLICES",
    "WINDOW_HELP",
    "Window",
    "compare_versions",
    "drift_vs_validation",
    "evaluate",
    "feature_drift",
    "ks_distance",
    "notes_of",
]
