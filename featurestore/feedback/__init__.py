"""Feedback: what users did with predictions, made durable first, then learned from online.

    types        FeedbackInput, Rejection, FeedbackResult: what ``submit`` takes and returns
    service      FeedbackService: check, log, learn (``POST /feedback``, ``FeatureStore.feedback``)
    log          FeedbackLog: the durable log in the registry database (the source of truth)
    monitoring   running losses per version and slice, ``model_status`` and the stale flag
    replay       rebuild a version's online states from its artifact and the log
    export       the offline view of the log (Parquet labels for training and retraining)
    maintenance  the background export and staleness check, and the retrain launcher

docs/feedback.md has the whole design.
"""

from featurestore.feedback.monitoring import (
    LossSummary,
    ModelStatus,
    decode_slice,
    encode_slice,
    model_status,
)
from featurestore.feedback.replay import ReplayResult, replay
from featurestore.feedback.service import FeedbackService
from featurestore.feedback.types import MAX_BATCH, FeedbackInput, FeedbackResult, Rejection

__all__ = [
    "MAX_BATCH",
    "FeedbackInput",
    "FeedbackResult",
    "FeedbackService",
    "LossSummary",
    "ModelStatus",
    "Rejection",
    "ReplayResult",
    "decode_slice",
    "encode_slice",
    "model_status",
    "replay",
]
