"""A trained model version's artifact in the offline store: what restores its online state.

    {offline_path}/{project}/_models/{model}/v{version}/manifest.json    layout, w_avg, metrics
    {offline_path}/{project}/_models/{model}/v{version}/states.parquet   user_key, state (bytes)

``state`` is ``encode_state`` (docs/model-state.md), so the artifact restores the online state
of a version exactly (``restore_version``, used when activating a version whose state is gone,
and by ``featurestore models replay``). ``ServiceContext.artifact_dir`` says where it lives.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from featurestore.models.linear import UserState
from featurestore.models.state_codec import decode_state, encode_state
from featurestore.models.state_store import ModelLayout, ModelStateStore
from registry import tables as t
from registry.errors import NotFoundError

if TYPE_CHECKING:
    from featurestore.context import ServiceContext

MANIFEST = "manifest.json"
STATES_FILE = "states.parquet"
ARTIFACT_FORMAT = 1


def write_artifact(
    directory: Path,
    *,
    layout: ModelLayout,
    w_avg: np.ndarray,
    states: dict[bytes, UserState],
    manifest: dict[str, Any],
) -> None:
    """states.parquet (user_key, state) then manifest.json, each written atomically."""
    from featurestore.offline.layout import write_atomic

    keys = list(states)
    table = pa.table(
        {
            "user_key": pa.array(keys, pa.binary()),
            "state": pa.array([encode_state(states[k]) for k in keys], pa.binary()),
        }
    )
    write_atomic(table, directory / STATES_FILE)
    body = {
        "format": ARTIFACT_FORMAT,
        **manifest,
        "layout": layout.to_dict(),
        "average": [float(v) for v in w_avg],
        "users": len(keys),
        "files": {"states": STATES_FILE},
        "state_encoding": "featurestore.models.state_codec format 1 (docs/model-state.md)",
    }
    tmp = directory / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)


def read_artifact(directory: Path) -> tuple[dict[str, Any], ModelLayout, np.ndarray, dict[bytes, UserState]]:
    """(manifest, layout, w_avg, states) of an artifact written by ``write_artifact``."""
    import pyarrow.parquet as pq

    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise NotFoundError(
            f"no model artifact at {directory}", hint="train the model again to recreate it"
        )
    manifest = json.loads(path.read_text())
    layout = ModelLayout.from_dict(manifest["layout"])
    table = pq.read_table(Path(directory) / manifest["files"]["states"])
    states = {
        bytes(k): decode_state(v)
        for k, v in zip(table["user_key"].to_pylist(), table["state"].to_pylist())
    }
    return manifest, layout, np.asarray(manifest["average"], dtype=np.float64), states


def restore_version(context: ServiceContext, model: str, version: int, *, lost: bool = False) -> bool:
    """Make sure a version's state is in the online store, reloading it from its artifact when
    it is not (e.g. Redis was flushed). True when it had to be restored. ``lost``: restore
    even though the version's layout key is there (one shard of a cluster lost its data: the
    layout key may have been on another shard than the users that went).

    The trained states alone would drop the feedback learned since training. So the version's
    feedback rows are first flagged pending again (durably: a crash from here on loses
    nothing), and the catch-up (``feedback.catch_up``) rebuilds every such user from the log;
    the trained states are written only where no state is stored, never over a rebuilt one."""
    states = ModelStateStore(context.online_store, model, version)
    if not lost and states.exists():
        return False
    f = t.feedback
    with context.engine.begin() as conn:
        conn.execute(
            sa.update(f)
            .where(f.c.project == context.project, f.c.model == model, f.c.model_version == version)
            .values(pending=True)
        )
    recorded = context.model_versions.get(model, version)
    _, layout, w_avg, user_states = read_artifact(Path(recorded.artifact))
    states.publish(layout, w_avg, user_states, if_absent=True)
    return True
