"""Where a trained model version lives in the online store: its layout, the average user and
every user's state, under one blob namespace per (model, version).

    namespace  model.{model}.v{version}        (':' is not allowed in namespaces)
    key        b"\\meta"                        JSON ModelLayout (what each of the d columns is)
    key        b"\\average"                     encode_weights(w_avg)  (docs/model-state.md)
    key        user entity key                  encode_state(UserState) (docs/model-state.md)

The two reserved keys start with a backslash followed by a letter, which ``encode_entity_key``
never produces (it writes a backslash only before another backslash or a ``|``), so no user can
collide with them. A user with no stored state is *exactly* the average user:
``new_user_state(w_avg, l2)``. Versions never share a namespace, so a rollback only changes which
namespace is read; the state of every version stays in place.

>>> from featurestore.online.memory import MemoryOnlineStore  # doctest: +SKIP
>>> states = ModelStateStore(MemoryOnlineStore("demo"), "taste", 3)  # doctest: +SKIP
>>> states.get_states([b"42"])[0].w  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.models.linear import UserState, new_user_state
from featurestore.models.state_codec import (
    decode_state,
    decode_weights,
    encode_state,
    encode_weights,
    read_weights,
)
from featurestore.online.epoch import ensure_epoch
from registry.errors import ConfigError, DataError, NotFoundError
from registry.types import NUMERIC_DTYPES, parse_dtype

if TYPE_CHECKING:
    from featurestore.online.base import OnlineStore
    from registry.definitions import Definitions
    from registry.spec import ModelSpec

META_KEY = b"\\meta"
AVERAGE_KEY = b"\\average"
RESERVED_KEYS = frozenset({META_KEY, AVERAGE_KEY})
LAYOUT_FORMAT = 1
#: The penalty a layout holds before ``l2: auto`` has chosen one (and when nothing validates it).
DEFAULT_L2 = 1.0
# States per put_blobs call: bounds one Redis MSET at ~25 MB for d = 64.
_PUT_CHUNK = 1_000


def state_namespace(model: str, version: int) -> str:
    """The blob namespace of one model version.

    >>> state_namespace("taste", 3)
    'model.taste.v3'
    """
    return f"model.{model}.v{int(version)}"


# -- the layout of x ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBlock:
    """One feature's columns in x: ``width`` numbers (1 for a scalar, n for ``T[n]``)."""

    view: str
    feature: str
    dtype: str
    width: int

    @property
    def ref(self) -> str:
        return f"{self.view}:{self.feature}"


@dataclass(frozen=True)
class ModelLayout:
    """What the d coordinates of a model version mean, fixed when it is trained.

    x = [item features flattened, user features, request features, 1.0 (bias)]. Stored with
    the version so that serving an older version after the definitions changed still builds
    exactly the x it was trained on (or says clearly that it cannot).
    """

    model: str
    user_entity: str
    item_entity: str
    item: tuple[FeatureBlock, ...]
    user: tuple[FeatureBlock, ...]
    request: tuple[str, ...]
    bias: bool
    objective: str
    l2: float

    @property
    def item_width(self) -> int:
        return sum(b.width for b in self.item)

    @property
    def user_width(self) -> int:
        return sum(b.width for b in self.user)

    @property
    def d(self) -> int:
        return self.item_width + self.user_width + len(self.request) + int(self.bias)

    def columns(self) -> list[str]:
        """A name per coordinate: ``view:feature`` or ``view:feature[i]``, request names, bias.

        >>> ModelLayout("m", "u", "i", (FeatureBlock("v", "f", "float32[2]", 2),), (), ("hour",),
        ...             True, "squared_error", 1.0).columns()
        ['v:f[0]', 'v:f[1]', 'request:hour', 'bias']
        """
        out: list[str] = []
        for block in (*self.item, *self.user):
            if block.width == 1 and not parse_dtype(block.dtype).is_vector:
                out.append(block.ref)
            else:
                out += [f"{block.ref}[{i}]" for i in range(block.width)]
        out += [f"request:{name}" for name in self.request]
        if self.bias:
            out.append("bias")
        return out

    @classmethod
    def from_spec(cls, defs: Definitions, spec: ModelSpec) -> ModelLayout:
        """Resolve a model's feature references against the definitions and check them.

        Item features must belong to views of the item entity alone, user features to views of
        the user entity alone, and every feature must be a number, a bool or a fixed-length
        numeric vector: x has a fixed dimension.
        """
        item_refs = list(spec.features)
        if spec.feature_service is not None:
            service = defs.get("feature_service", spec.feature_service)
            item_refs += [r for r in service.features if r not in item_refs]
        item = cls._blocks(defs, spec, item_refs, spec.item_entity, "features")
        user = cls._blocks(defs, spec, list(spec.user_features), spec.user_entity, "user_features")
        if not item:
            raise ConfigError(
                f"model {spec.name!r} has no item features",
                hint="list item features under `features` or name a `feature_service`",
            )
        return cls(
            model=spec.name,
            user_entity=spec.user_entity,
            item_entity=spec.item_entity,
            item=item,
            user=user,
            request=tuple(spec.request_features),
            bias=spec.bias,
            objective=spec.objective,
            # l2: auto is chosen when training (``training.fit``); the layout stores the choice.
            l2=DEFAULT_L2 if spec.l2 == "auto" else float(spec.l2),
        )

    @staticmethod
    def _blocks(
        defs: Definitions, spec: ModelSpec, refs: list[str], entity: str, attr: str
    ) -> tuple[FeatureBlock, ...]:
        blocks: list[FeatureBlock] = []
        for ref in defs.resolve_features(refs) if refs else []:
            view = defs.feature_views[ref.view]
            if list(view.entities) != [entity]:
                raise ConfigError(
                    f"model {spec.name!r}: `{attr}` names {ref}, but view {ref.view!r} is keyed by "
                    f"{', '.join(view.entities)}, not by the {entity!r} entity alone",
                    hint=f"use features of views whose `entities` is [{entity}]",
                )
            dtype = defs.feature(ref).dtype
            parsed = parse_dtype(dtype)
            numeric = parsed.element in NUMERIC_DTYPES or (
                parsed.element == "bool" and not parsed.is_vector
            )
            if not numeric or parsed.length == 0:
                raise ConfigError(
                    f"model {spec.name!r}: feature {ref} has dtype {dtype}, which a linear model "
                    "cannot use",
                    hint="use numbers, bools or fixed-length numeric vectors such as float32[16]",
                )
            blocks.append(FeatureBlock(ref.view, ref.feature, dtype, parsed.length or 1))
        return tuple(blocks)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LAYOUT_FORMAT,
            "model": self.model,
            "user_entity": self.user_entity,
            "item_entity": self.item_entity,
            "item": [b.__dict__ for b in self.item],
            "user": [b.__dict__ for b in self.user],
            "request": list(self.request),
            "bias": self.bias,
            "objective": self.objective,
            "l2": self.l2,
            "d": self.d,
            "columns": self.columns(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelLayout:
        if data.get("format") != LAYOUT_FORMAT:
            raise DataError(
                f"model layout has format {data.get('format')!r}, this version reads {LAYOUT_FORMAT}",
                hint="upgrade featurestore or retrain the model",
            )
        layout = cls(
            model=data["model"],
            user_entity=data["user_entity"],
            item_entity=data["item_entity"],
            item=tuple(FeatureBlock(**b) for b in data["item"]),
            user=tuple(FeatureBlock(**b) for b in data["user"]),
            request=tuple(data["request"]),
            bias=bool(data["bias"]),
            objective=data["objective"],
            l2=float(data["l2"]),
        )
        if layout.d != data.get("d"):
            raise DataError(f"model layout says d={data.get('d')} but its blocks add up to {layout.d}")
        return layout


# -- the store ----------------------------------------------------------------------------------


class ModelStateStore:
    """The states of one model version in the online store.

    The layout and the average user never change once a version is published, so they are read
    once and kept; user states change with feedback and are read on every call (one round trip
    for any number of users).
    """

    def __init__(self, online_store: OnlineStore, model: str, version: int) -> None:
        self.online_store = online_store
        self.model = model
        self.version = int(version)
        self.namespace = state_namespace(model, version)
        self._layout: ModelLayout | None = None
        self._average: np.ndarray | None = None

    # -- publishing -------------------------------------------------------------------------------
    def publish(
        self, layout: ModelLayout, w_avg: np.ndarray, states: Mapping[bytes, UserState], *, if_absent: bool = False
    ) -> None:
        """Write every user's state, then the average user, then the layout.

        The layout goes last: a reader that finds it finds a complete version. ``if_absent``
        (a restore into a store that lost the version) writes a user's trained state only where
        none is stored, so a state another process already rebuilt is never overwritten.
        """
        w_avg = np.asarray(w_avg, dtype=np.float64)
        if w_avg.shape != (layout.d,):
            raise DataError(f"average weights have shape {w_avg.shape}, the layout has d={layout.d}")
        ensure_epoch(self.online_store)  # lasting content: its loss must be noticed
        self.put_states(states, d=layout.d, if_absent=if_absent)
        self.online_store.put_blobs(
            self.namespace, {AVERAGE_KEY: encode_weights(w_avg)}
        )
        self.online_store.put_blobs(self.namespace, {META_KEY: layout.to_json().encode()})
        self._layout, self._average = layout, w_avg.copy()

    def exists(self) -> bool:
        """Whether this version's layout is in the online store (it is written last)."""
        return self.online_store.get_blobs(self.namespace, [META_KEY])[0] is not None

    # -- reading ------------------------------------------------------------------------------------
    def layout(self) -> ModelLayout:
        if self._layout is None:
            self._load([])
        assert self._layout is not None
        return self._layout

    def average(self) -> np.ndarray:
        """The average user's weights (what a user never seen is served)."""
        if self._average is None:
            self._load([])
        assert self._average is not None
        return self._average

    def get_states(self, users: Sequence[bytes]) -> list[UserState]:
        """Each user's state; a user with none stored gets ``new_user_state(w_avg, l2)``.

        One round trip, including the layout and average on the first call.
        """
        blobs = self._load(users) if self._layout is None else self.online_store.get_blobs(self.namespace, list(users))
        assert self._layout is not None and self._average is not None
        out: list[UserState] = []
        fresh: UserState | None = None
        for blob in blobs:
            if blob is None:
                if fresh is None:
                    fresh = new_user_state(self._average, self._layout.l2)
                out.append(fresh)
            else:
                out.append(decode_state(blob))
        return out

    def get_weights(self, users: Sequence[bytes]) -> np.ndarray:
        """Only the weights of each user, (k, d): what scoring needs without exploration
        (``state_codec.read_weights`` reads w without decoding the matrices)."""
        blobs = self._load(users) if self._layout is None else self.online_store.get_blobs(self.namespace, list(users))
        assert self._layout is not None and self._average is not None
        return read_weights(blobs, self._layout.d, self._average)

    def get_state(self, user: bytes) -> UserState:
        return self.get_states([user])[0]

    def known(self, users: Sequence[bytes]) -> list[bool]:
        """Whether each user has a stored state (False: served as the average user)."""
        return [b is not None for b in self.online_store.get_blobs(self.namespace, list(users))]

    def put_states(self, states: Mapping[bytes, UserState], d: int | None = None, *, if_absent: bool = False) -> None:
        """Store users' states (e.g. after feedback), overwriting (``if_absent``: only where
        the user has none)."""
        want = d if d is not None else self.layout().d
        encoded: dict[bytes, bytes] = {}
        for key, state in states.items():
            if key in RESERVED_KEYS:
                raise DataError(f"{key!r} is a reserved key of the model state namespace")
            if state.d != want:
                raise DataError(
                    f"state of user {key!r} has d={state.d}, model {self.model!r} "
                    f"version {self.version} has d={want}",
                    hint="build states with the version's layout",
                )
            encoded[bytes(key)] = encode_state(state)
            if len(encoded) >= _PUT_CHUNK:
                self._write(encoded, if_absent)
                encoded = {}
        if encoded:
            self._write(encoded, if_absent)

    def _write(self, encoded: dict[bytes, bytes], if_absent: bool) -> None:
        if if_absent:
            self.online_store.compare_and_swap_blobs(self.namespace, {k: (None, v) for k, v in encoded.items()})
        else:
            self.online_store.put_blobs(self.namespace, encoded)

    def _load(self, users: Sequence[bytes]) -> list[bytes | None]:
        blobs = self.online_store.get_blobs(self.namespace, [META_KEY, AVERAGE_KEY, *users])
        meta, average = blobs[0], blobs[1]
        if meta is None or average is None:
            raise NotFoundError(
                f"model {self.model!r} version {self.version} has no state in the "
                f"{self.online_store.kind} online store (namespace {self.namespace})",
                hint=f"run `featurestore models activate {self.model} {self.version}`, which "
                "reloads it from the training artifact, or train the model again",
            )
        layout = ModelLayout.from_dict(json.loads(meta))
        w_avg = decode_weights(average)
        if w_avg.shape != (layout.d,):
            raise DataError(
                f"model {self.model!r} version {self.version}: average weights have d={w_avg.shape[0]}, "
                f"the layout d={layout.d}",
                hint="train the model again",
            )
        self._layout, self._average = layout, w_avg
        return blobs[2:]
