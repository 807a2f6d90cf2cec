"""A bare Starlette + uvicorn peer of the service, for `serve_latency.py --peer`: the same
`Predictor` behind the plainest ASGI stack (no BentoML, no batching, no log, no auth), so the
benchmark can tell what the service's own layers cost.

    PEER_ARTIFACT=<model folder> uvicorn serve_peer:app --app-dir benchmarks --workers 2

POST /predict takes the service's multipart form (image, audio, text) and answers its JSON.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import anyio
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mmfuse.inference.predictor import Predictor, RawSample

torch.set_num_threads(1)
PREDICTOR = Predictor(Path(os.environ["PEER_ARTIFACT"]), "peer")


def _classify(sample: RawSample) -> dict:
    prepared = PREDICTOR.prepare(sample)
    [score] = PREDICTOR.forward([prepared])
    return PREDICTOR.explain(prepared, score, uuid.uuid4().hex).model_dump(mode="json")


async def predict(request: Request) -> Response:
    form = await request.form()
    image, audio = form.get("image"), form.get("audio")
    sample = RawSample(
        image=await image.read() if image is not None else None,
        audio=await audio.read() if audio is not None else None,
        text=form.get("text"),
    )
    return JSONResponse(await anyio.to_thread.run_sync(_classify, sample))


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
