"""The reference for the HTTP benchmark: a bare FastAPI endpoint returning a constant.

``BARE_BODY`` (JSON text) sets the constant: ``bench_online.py --issue19`` passes the body our
server answered for one entity, so both send the same bytes and encode them per request."""

import json
import os

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
CONSTANT = json.loads(os.environ.get("BARE_BODY") or '{"features": {"f0": {"values": [0.5], "statuses": ["present"]}}}')


@app.post("/features")
async def features() -> JSONResponse:
    return JSONResponse(CONSTANT)


if __name__ == "__main__":
    # Served exactly as `featurestore serve` serves the real app (same uvicorn settings and
    # TCP_NODELAY), so the two differ only in the endpoint.
    import argparse

    from featurestore.cli.serve_cmd import serve

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    raise SystemExit(serve("bench.bare_app:app", host="127.0.0.1", port=args.port, workers=args.workers,
                           log_level="warning", access_log=False))
