"""The reference for the HTTP benchmark: a bare FastAPI endpoint returning a constant."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
CONSTANT = {"features": {"f0": {"values": [0.5], "statuses": ["present"]}}}


@app.post("/features")
async def features() -> JSONResponse:
    return JSONResponse(CONSTANT)
