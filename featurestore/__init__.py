"""A Velox-style feature store: declarative YAML definitions, a versioned SQL registry, Beam
materialization to Parquet and an online store, point-in-time training export with DuckDB, and
per-user linear models served over cached features.

>>> from featurestore import FeatureStore  # doctest: +SKIP
>>> FeatureStore("my_repo").list_feature_views()  # doctest: +SKIP
"""

from featurestore.store import FeatureStore
from registry.errors import (
    ConfigError,
    ConflictError,
    DefinitionError,
    FeatureStoreError,
    NotFoundError,
    StoreUnavailableError,
    UserError,
)

__all__ = [
    "ConfigError",
    "ConflictError",
    "DefinitionError",
    "FeatureStore",
    "FeatureStoreError",
    "NotFoundError",
    "StoreUnavailableError",
    "UserError",
]
__version__ = "0.1.0"
