"""The reference for the ``POST /predict`` benchmark: a hand-written FastAPI + ``redis.asyncio``
+ numpy server doing the same scoring on the same Redis data, and nothing else.

Per request: ``json.loads`` of the body, one awaited ``GET`` of the user's state blob (the
weights w after its 22-byte header; a user never seen is the average user), the items' feature
vectors from a per-process dict (misses read with one awaited ``MGET`` of the row keys and
decoded with ``np.frombuffer``), x = [item vector, 1.0], scores ``X @ w``, and a JSON body of
the same shape as ours (``prediction_id``, ``model``, ``model_version``, ``scores``). What ours
does beyond it: input checks with field-named errors, TTL and null statuses, the prediction log,
metrics, auth and body guard middleware, cache invalidation.

Configured by the environment (set by ``bench/bench_predict.py``): ``REF_REDIS_URL``,
``REF_PROJECT``, ``REF_MODEL``, ``REF_VERSION``, ``REF_D``. Served with ``featurestore serve``'s
own uvicorn setup (``serve_cmd.serve``: same settings, TCP_NODELAY), so the two differ only in
the application.

    REF_PROJECT=bench_predict_d16 REF_MODEL=taste REF_VERSION=1 REF_D=16 \\
        python3 -m bench.predict_reference_app --port 8090 --workers 2
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

STATE_HEADER = 22  # before a state's d float64 weights

PROJECT = os.environ.get("REF_PROJECT", "bench_predict_d16")
MODEL = os.environ.get("REF_MODEL", "taste")
VERSION = int(os.environ.get("REF_VERSION", "1"))
D = int(os.environ.get("REF_D", "16"))
ROW_PREFIX = f"{PROJECT}:item_emb:".encode()
STATE_PREFIX = f"{PROJECT}:__blob__:model.{MODEL}.v{VERSION}:".encode()

app = FastAPI()
_redis = aioredis.Redis.from_url(os.environ.get("REF_REDIS_URL", "redis://127.0.0.1:6379/0"))
_items: dict[bytes, np.ndarray] = {}  # item key -> x (features, then the bias 1.0)
_w_avg: list[np.ndarray] = []


def _weights(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8", count=D, offset=STATE_HEADER)


async def _item_rows(keys: list[bytes]) -> np.ndarray:
    missing = [k for k in dict.fromkeys(keys) if k not in _items]
    if missing:
        values = await _redis.mget([ROW_PREFIX + k for k in missing])
        for key, value in zip(missing, values):
            if value is not None:
                x = np.empty(D)
                # The float32s end the value, after the payload's header (2 bytes in format 1,
                # format byte + layout id + null bitmap in format 2).
                x[:-1] = np.frombuffer(value, dtype="<f4", count=D - 1, offset=len(value) - 4 * (D - 1))
                x[-1] = 1.0
                _items[key] = x
    return np.stack([_items[k] for k in keys])


@app.post("/predict")
async def predict(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    items = body["items"]
    keys = [str(item["item_id"]).encode() for item in items]
    user = str(body["user"]["user_id"]).encode()
    blob = await _redis.get(STATE_PREFIX + user)
    if blob is None:
        if not _w_avg:
            average = await _redis.get(STATE_PREFIX + b"\\average")  # 6-byte header, then d float64
            _w_avg.append(np.frombuffer(average, dtype="<f8", count=D, offset=6))
        w = _w_avg[0]
    else:
        w = _weights(blob)
    scores = (await _item_rows(keys)) @ w
    return JSONResponse(
        {
            "prediction_id": uuid.uuid4().hex,
            "model": body["model"],
            "model_version": VERSION,
            "scores": [
                {"item": item, "score": score, "status": "present"} for item, score in zip(items, scores.tolist())
            ],
        }
    )


if __name__ == "__main__":
    import argparse

    from featurestore.cli.serve_cmd import serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    raise SystemExit(serve("bench.predict_reference_app:app", host="127.0.0.1", port=args.port,
                           workers=args.workers, log_level="warning", access_log=False))
