"""The offline store: each feature view's full history as date-partitioned Parquet."""
