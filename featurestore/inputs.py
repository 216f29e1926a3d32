"""One rule set per request input: a user, an item, request features, a label.

``/predict`` and ``/feedback`` (and their SDK twins) check the same input with the same function,
so the two paths can never disagree on what they accept. Every rule raises ``InputError`` naming
the field (``user``, ``items.3``, ``user.region``, ``request_features.hour``, ``label``); the
feedback service turns it into a per-observation rejection, predict lets it propagate.

Keys are built by the online codec (``encode_entity_key``, and ``encode_int_keys`` for many rows
of one integer key), so the golden key-layout tests cover every caller.

>>> entity_key(("user_id",), ("int64",), {"user_id": 7}, "user", "user")
b'7'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from featurestore.online.codec import encode_entity_key, encode_int_keys
from registry.errors import DataError, InputError


_DATETIME = TypeAdapter(datetime)


def entity_key(names: tuple[str, ...], dtypes: tuple[str, ...], row: Any, field: str, entity: str) -> bytes:
    """The online key of one entity given as a mapping with exactly its join keys."""
    if type(row) is dict and len(row) == len(names) == 1:
        value = row.get(names[0])
        if value is not None:
            try:
                return encode_entity_key(dtypes, (value,))
            except DataError:
                raise bad_key_value(field, names, dtypes, row) from None
    if not isinstance(row, Mapping):
        raise InputError(field, f"must be a mapping of join keys to values, got {row!r:.80}",
                         hint=f"give {_describe(names, dtypes)}")
    missing = [name for name in names if name not in row]
    if missing:
        raise InputError(field, f"has no join key {missing[0]!r}", hint=f"give {_describe(names, dtypes)}")
    extra = [k for k in row if k not in names]
    if extra:
        raise InputError(f"{field}.{extra[0]}", f"is not a join key of the {entity} entity",
                         hint=f"give exactly {_describe(names, dtypes)}")
    try:
        return encode_entity_key(dtypes, [row[name] for name in names])
    except DataError:
        raise bad_key_value(field, names, dtypes, row) from None


def entity_keys(
    names: tuple[str, ...], dtypes: tuple[str, ...], rows: Sequence[Any], field: str, entity: str
) -> tuple[list[bytes], list[str]]:
    """(keys, the keys as text) of many entities; row i is checked as ``{field}.{i}``.

    One integer join key, the common case, takes the codec's vectorised path.
    """
    if len(names) == 1 and rows:
        try:
            if set(map(len, rows)) == {1}:
                fast = encode_int_keys(dtypes[0], list(map(itemgetter(names[0]), rows)))
                if fast is not None:
                    return fast
        except (KeyError, TypeError):
            pass  # the general path names the bad row
    keys = [entity_key(names, dtypes, row, f"{field}.{i}", entity) for i, row in enumerate(rows)]
    return keys, [key_text(k) for k in keys]


def request_vector(names: Sequence[str], given: Any, model: str) -> np.ndarray:
    """The model's request features as a vector, in the layout's order: every one of them a
    finite number, and no name the model does not have (a typo would otherwise go unnoticed)."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise InputError("request_features", "must be a mapping of request feature names to numbers")
    if not names and not given:
        return np.empty(0)
    unknown = [name for name in given if name not in names]
    if unknown:
        raise InputError(f"request_features.{unknown[0]}", f"is not a request feature of model {model!r}",
                         hint="its request features: " + ", ".join(names))
    missing = [name for name in names if given.get(name) is None]
    if missing:
        raise InputError(
            "request_features", f"lacks {', '.join(missing)}, needed by model {model!r}",
            hint="pass them in `request_features`, e.g. {" + ", ".join(f'"{m}": 1.0' for m in missing) + "}"
            ", or (feedback) the prediction_id of the prediction that used them",
        )
    out = np.empty(len(names))
    for i, name in enumerate(names):
        value = given[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"request_features.{name}", f"must be a finite number, got {value!r:.50}")
        out[i] = float(value)
    return out


def label_value(value: Any, objective: str, model: str, bounds: LabelBounds | None = None) -> float:
    """A label as a float: finite, 0 or 1 for a logistic model, and within the model's bounds
    (one huge but finite label would otherwise poison a user's model for good)."""
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError("label", f"must be a finite number, got {value!r:.50}")
    label = float(value)
    if objective == "logistic" and label not in (0.0, 1.0):
        raise InputError("label", f"model {model!r} is logistic: the label must be 0 or 1, got {label:g}",
                         hint="send 1 for a positive outcome (a click), 0 otherwise")
    if bounds is not None and not bounds.low <= label <= bounds.high:
        raise InputError("label", f"must lie in [{bounds.low:g}, {bounds.high:g}] for model {model!r} "
                         f"({bounds.source}), got {label:g}",
                         hint="send a label on the model's scale, or declare its `label_range`")
    return label


@dataclass(frozen=True)
class LabelBounds:
    """The labels a model accepts: declared (``label_range``) or learned from its training."""

    low: float
    high: float
    source: str

    @classmethod
    def of(cls, declared: tuple[float, float] | None, metrics: Mapping[str, Any]) -> LabelBounds | None:
        """The declared range; else the training labels' range widened by its width (at least 1)
        on each side; None for a version trained before the range was recorded.

        >>> LabelBounds.of(None, {"label_min": 1.0, "label_max": 5.0})
        LabelBounds(low=-3.0, high=9.0, source='the training labels 1..5, widened by 4 each side')
        """
        if declared is not None:
            return cls(float(declared[0]), float(declared[1]), "its label_range")
        low, high = metrics.get("label_min"), metrics.get("label_max")
        if low is None or high is None:
            return None
        width = max(float(high) - float(low), 1.0)
        return cls(float(low) - width, float(high) + width,
                   f"the training labels {low:g}..{high:g}, widened by {width:g} each side")


def text_value(value: Any, field: str, max_length: int, hint: str | None = None) -> str:
    """A short text (an id, a slice value): a string of 1 to ``max_length`` characters without
    NUL, which PostgreSQL cannot store in text (the embedded profile could; both refuse it)."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InputError(field, f"must be a string of 1 to {max_length} characters, got {value!r:.80}", hint=hint)
    if "\x00" in value:
        raise InputError(field, "must not contain a NUL character (\\u0000)", hint=hint)
    return value


def timestamp_value(value: Any, field: str, default: datetime) -> datetime:
    """An aware UTC timestamp from what the HTTP API accepts for it, parsed by the same pydantic
    rules: a datetime, an ISO 8601 string or Unix seconds; naive values are taken as UTC."""
    if value is None:
        return default
    if not isinstance(value, datetime):
        try:
            value = _DATETIME.validate_python(value)
        except ValueError:
            raise InputError(field, f"must be a timestamp, got {value!r:.50}",
                             hint="ISO 8601, e.g. 2026-01-01T12:00:00Z, or Unix seconds") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def key_text(key: bytes) -> str:
    """An entity key as the prediction and feedback logs store it.

    >>> key_text(b"42|a")
    '42|a'
    """
    return key.decode("utf-8", "backslashreplace")


def _describe(names: tuple[str, ...], dtypes: tuple[str, ...]) -> str:
    return ", ".join(f"{n} ({d})" for n, d in zip(names, dtypes))


def bad_key_value(field: str, names: Sequence[str], dtypes: Sequence[str], row: Mapping[str, Any]) -> InputError:
    """The error naming the join key of ``row`` the codec refuses: ``{field}.{key}``."""
    for name, dtype in zip(names, dtypes):
        try:
            encode_entity_key((dtype,), (row[name],))
        except DataError as exc:
            reason = _CODEC_PREFIX.sub("", exc.message)
            return InputError(f"{field}.{name}", f"({dtype}) {reason}", hint=exc.hint or f"join keys: {_describe(names, dtypes)}")
    return InputError(field, "is not a valid key", hint=f"join keys: {_describe(names, dtypes)}")


# The codec says "join key #0 (int64) is out of range: ..."; the field path says which key it is.
_CODEC_PREFIX = re.compile(r"^join key #\d+ (\([^)]*\) )?")
