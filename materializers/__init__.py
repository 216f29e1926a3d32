"""Materialization jobs: Beam pipelines that move source data into the offline and online stores.

``materialize`` runs the batch job (one pipeline per feature view); the composite transforms in
``materializers.transforms`` are shared with the streaming job. Importing this package does not
import Beam; running a job does.

>>> from materializers import materialize  # doctest: +SKIP
>>> materialize(FeatureStore("repo"), incremental=True)  # doctest: +SKIP
"""

from materializers.batch import materialize
from materializers.progress import ViewSummary

__all__ = ["ViewSummary", "materialize"]
