"""Point-in-time correct training datasets from the offline store (docs/point-in-time.md).

entity_input   what the caller passes (pandas, Arrow, Parquet, SQL) as a DuckDB relation
pit            the ASOF-join query: partition pruning, tie-breaks, ttl
dataset        get_training_dataset and the lazy TrainingDataset it returns
"""

from featurestore.export.dataset import ExportSummary, TrainingDataset, get_training_dataset

__all__ = ["ExportSummary", "TrainingDataset", "get_training_dataset"]
