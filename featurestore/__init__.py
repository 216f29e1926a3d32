"""A Velox-style feature store: declarative YAML definitions, a versioned SQL registry, Beam
materialization to Parquet and an online store, point-in-time training export with DuckDB, and
per-user linear models served over cached features.

>>> from featurestore import FeatureStore  # doctest: +SKIP
>>> FeatureStore("my_repo").list_feature_views()  # doctest: +SKIP
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from featurestore.store import FeatureStore


def __getattr__(name: str) -> Any:
    # FeatureStore pulls in SQLAlchemy, pyarrow and the stores (about 0.5 s of imports): loaded
    # on first use, so `featurestore --help`, `validate` and modules that only need a submodule
    # (the CLI, the online stores in a Beam worker) do not pay for it.
    if name == "FeatureStore":
        from featurestore.store import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'featurestore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "FeatureStore"])
