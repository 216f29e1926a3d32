"""Materialization jobs: Beam pipelines that move data into the offline and online stores.

``materialize`` runs the batch job (one pipeline per feature view, sources -> stores);
``run_stream`` the stream job (events from each view's stream -> stores, until stopped). Both
use the same row-level functions (``materializers.validate``, ``materializers.dedup``,
``materializers.online_write``, ``materializers.aggregates``). Importing this package does not
import Beam; running a job does.

>>> from materializers import materialize, run_stream  # doctest: +SKIP
>>> materialize(FeatureStore("repo"), incremental=True)  # doctest: +SKIP
>>> run_stream(FeatureStore("repo"), ["user_clicks"], StreamOptions(consumer="job-1"))  # doctest: +SKIP
"""

from materializers.batch import materialize
from materializers.progress import ViewSummary
from materializers.stream import run_stream
from materializers.stream_plan import StreamOptions

__all__ = ["StreamOptions", "ViewSummary", "materialize", "run_stream"]
