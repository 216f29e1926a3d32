"""Per-user linear models over materialized item features, their binary state, the ALS job
that learns item features, and running losses. Pure numpy.

>>> import numpy as np
>>> from featurestore.models import learn_one, new_user_state
>>> learn_one(new_user_state(np.zeros(2), l2=1.0), np.array([1.0, 1.0]), 3.0).w.tolist()
[1.0, 1.0]
"""

from featurestore.models.als import AlsResult, als_factorize
from featurestore.models.fitting import fit_average, fit_users
from featurestore.models.linear import (
    OBJECTIVES,
    Objective,
    StateBatch,
    UserState,
    design_matrix,
    exact_solution,
    learn_many,
    learn_one,
    new_user_state,
    predict_many,
    sigmoid,
    ucb_bonus,
)
from featurestore.models.metrics import RunningLoss
from featurestore.models.state_codec import (
    decode_state,
    decode_weights,
    encode_state,
    encode_weights,
)

__all__ = [
    "OBJECTIVES",
    "AlsResult",
    "Objective",
    "RunningLoss",
    "StateBatch",
    "UserState",
    "als_factorize",
    "decode_state",
    "decode_weights",
    "design_matrix",
    "encode_state",
    "encode_weights",
    "exact_solution",
    "fit_average",
    "fit_users",
    "learn_many",
    "learn_one",
    "new_user_state",
    "predict_many",
    "sigmoid",
    "ucb_bonus",
]
