"""The BentoML service: serves the champion from the model store.

Endpoints (request and response models below; OpenAPI at /docs.json, Swagger UI at /):
- POST /predict        multipart/form-data `image` (file), `audio` (file), `text`; any non-empty subset
- POST /predict_batch  JSON {"samples": [{"image": base64, "audio": base64, "text": str}, ...]}
- POST /feedback       JSON {"request_id": ..., "label": ...}: the true label of an earlier prediction
- GET  /demo/          a page to try the model in a browser
- BentoML's /livez, /readyz, /metrics

Run it with `mmfuse serve` (or `bentoml serve mmfuse.serving.service:MMFuse`) from the
project root: params.yaml's `serve:` section configures it, the inference log goes to
$MMFUSE_INFERENCE_LOG (default data/inference/log.sqlite), and setting $MMFUSE_API_TOKEN
turns on bearer-token auth for the three POST endpoints.

The champion is `mmfuse:latest` at start-up; a newly promoted champion is served after
a restart (or a rebuilt bento), so one server process never mixes two models.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar

import bentoml
import torch
from _bentoml_sdk.io_models import IODescriptor
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from mmfuse.inference.registry import MODEL_NAME
from mmfuse.serving.auth import BearerAuth
from mmfuse.serving.batching import AdaptiveBatcher
from mmfuse.serving.http import (
    BodySizeLimit,
    Problem,
    RequestRejected,
    error_response,
    form_text,
    parse_multipart,
    parse_urlencoded,
    read_body,
    reject,
    rejection,
    require_media_type,
    validation_problems,
)
from mmfuse.inference.log import InferenceLog, LogRecord, log_path
from mmfuse.params import load_serve_params
from mmfuse.inference.predictor import InputProblem, Prediction, Predictor, PreparedSample, RawSample

SERVE = load_serve_params()
PROTECTED = frozenset({"/predict", "/predict_batch", "/feedback"})
DEMO_PAGE = Path(__file__).parent / "static" / "demo.html"
FILE_KINDS = {"image": "image/", "audio": "audio/"}  # a declared part type must match (or be generic)
GENERIC_TYPES = frozenset({"", "application/octet-stream"})
# InputProblem kinds -> status: nothing usable given / bad media content / a modality this model lacks.
STATUS = {"missing": 400, "media": 422, "unsupported": 422}


def _empty(cls: type[IODescriptor]) -> Any:
    """An input with every field None: what a refused request hands BentoML (see http.reject)."""
    return cls.model_construct(**dict.fromkeys(cls.model_fields))


class PredictForm(IODescriptor):
    """multipart/form-data (or URL-encoded, for text only): any non-empty subset of the three fields."""

    # Media fields are raw bytes, declared by hand as binary form parts: BentoML 1.4's own
    # file type breaks on optional fields (`Path | None` is left unpatched, `Optional[Path]`
    # fails to build), and bytes go straight to preprocessing without a temp file.
    model_config = ConfigDict(extra="forbid")
    media_type: ClassVar[str | None] = "multipart/form-data"

    image: Annotated[bytes | None, WithJsonSchema({"type": "string", "format": "binary", "description": "a PNG or JPEG image file"})] = None
    audio: Annotated[bytes | None, WithJsonSchema({"type": "string", "format": "binary", "description": "a WAV audio file"})] = None
    text: Annotated[str | None, WithJsonSchema({"type": "string", "description": "a short text, e.g. a transcript"})] = None

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> "PredictForm":
        try:
            return cls.model_construct(**await cls._fields(request))
        except RequestRejected as rejected:
            reject(request, rejected)
            return _empty(cls)

    @classmethod
    async def _fields(cls, request: Request) -> dict[str, Any]:
        """The form's fields, refusing unknown, repeated, mistyped and oversized ones (all named at once)."""
        kind = require_media_type(
            request, ("multipart/form-data", "application/x-www-form-urlencoded"),
            "multipart/form-data with the fields image, audio and/or text",
        )  # fmt: skip
        body = await read_body(request, SERVE.max_request_bytes)
        try:
            parts = parse_multipart(body, request.headers["content-type"]) if kind == "multipart/form-data" else parse_urlencoded(body)
        except ValueError as exc:
            raise RequestRejected(400, [Problem(("body",), str(exc), "malformed")]) from exc
        values: dict[str, Any] = dict.fromkeys(cls.model_fields)
        seen: set[str] = set()
        problems: list[Problem] = []
        for part in parts:
            name = part.name
            if name not in cls.model_fields:
                problems.append(Problem((name,), "unknown field; the fields are image, audio and text.", "extra_forbidden"))
            elif name in seen:
                problems.append(Problem((name,), "given more than once; send one per request.", "duplicate"))
            elif name == "text":
                if len(part.data) > SERVE.max_field_bytes:
                    problems.append(Problem((name,), f"over the field limit of {SERVE.max_field_bytes} bytes.", "too_large"))
                else:
                    values[name] = form_text(bytes(part.data), name)
            elif part.filename is None:
                problems.append(Problem((name,), "must be a file upload (a part with a filename), not a plain field.", "file_type"))
            elif (part.content_type or "") not in GENERIC_TYPES and not part.content_type.startswith(FILE_KINDS[name]):
                wanted = "a PNG or JPEG image" if name == "image" else "a WAV audio file"
                problems.append(Problem((name,), f"the file is declared as {part.content_type}; send {wanted}.", "wrong_kind"))
            elif part.filename or part.data:  # an empty, unnamed file is a browser's untouched file input: absent
                values[name] = bytes(part.data)
            seen.add(name)
        if problems:
            raise RequestRejected(415 if all(p.type == "wrong_kind" for p in problems) else 400, problems)
        return values


# Every field is a form part of its own: BentoML's OpenAPI would otherwise mark `text` as JSON-encoded.
PredictForm.multipart_fields = list(PredictForm.model_fields)


class _JSONInput(IODescriptor):
    """A JSON request body, size-capped while read, validated strictly (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> "_JSONInput":
        try:
            require_media_type(request, ("application/json",), "application/json")
            body = await read_body(request, SERVE.max_request_bytes)
            try:
                return cls.model_validate_json(body or b"{}")
            except ValidationError as exc:
                raise RequestRejected(400, validation_problems(exc)) from exc
        except RequestRejected as rejected:
            reject(request, rejected)
            return _empty(cls)


def _strict_base64(value: Any) -> bytes:
    """Standard base64 only: pydantic's Base64Bytes silently skips invalid characters, so "%%%" became b""."""
    if not isinstance(value, str):
        raise PydanticCustomError("base64_type", "must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise PydanticCustomError("base64_decode", "not valid base64 ({reason})", {"reason": str(exc)}) from exc


Base64Media = Annotated[bytes, PlainValidator(_strict_base64), WithJsonSchema({"type": "string", "format": "byte"})]


class SampleIn(BaseModel):
    """One sample of a batch: any non-empty subset of the three modalities."""

    model_config = ConfigDict(extra="forbid")

    image: Base64Media | None = Field(None, description="a PNG or JPEG image, base64-encoded")
    audio: Base64Media | None = Field(None, description="a WAV file, base64-encoded")
    text: str | None = Field(None, description="a short text")


class PredictBatchBody(_JSONInput):
    samples: list[SampleIn] = Field(min_length=1, max_length=SERVE.max_batch_samples)


class PredictBatchResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per sample, in request order")


class FeedbackBody(_JSONInput):
    request_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the request_id a prediction returned")
    label: str = Field(min_length=1, max_length=256, description="the true label, one of the model's labels")


class FeedbackResponse(BaseModel):
    request_id: str
    label: str
    prediction: str = Field(description="what the model had answered")
    correct: bool


@lru_cache(maxsize=1)
def _batch_size_histogram() -> Any:
    """Created on first use: BentoML sets the multiprocess metrics directory after this module is imported."""
    import prometheus_client

    buckets = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b < SERVE.max_batch_size] + [SERVE.max_batch_size]
    return prometheus_client.Histogram(
        "mmfuse_model_batch_size", "Samples per model call (adaptive batching)", buckets=buckets
    )


def _with_status(ctx: bentoml.Context, response: JSONResponse) -> JSONResponse:
    """BentoML overwrites the status of a response returned by an API that takes `ctx` with
    ctx.response.status_code, so the error's status must be set there too."""
    ctx.response.status_code = response.status_code
    return response


async def _demo_page(_: Request) -> HTMLResponse:
    return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _docs_html() -> str:
    """BentoML's Swagger UI page (served at /) without its Google Tag Manager snippets: the
    project keeps telemetry off, and BENTOML_DO_NOT_TRACK does not reach this static page."""
    import _bentoml_impl.server

    page = (Path(_bentoml_impl.server.__file__).parent / "main-openapi.html").read_text(encoding="utf-8")
    return re.sub(r"<!-- Google Tag Manager.*?<!-- End Google Tag Manager[^>]*-->", "", page, flags=re.DOTALL)


async def _docs_page(_: Request) -> HTMLResponse:
    return HTMLResponse(_docs_html())


demo_app = Starlette(routes=[Route("/", _demo_page)])
docs_app = Starlette(routes=[Route("/", _docs_page)])  # mounted routes take precedence over BentoML's own "/"


@bentoml.asgi_app(docs_app, path="/", name="docs")
@bentoml.asgi_app(demo_app, path="/demo", name="demo")
@bentoml.service(
    name="mmfuse",
    workers=SERVE.workers,
    threads=SERVE.threads,
    traffic={"timeout": SERVE.timeout_s},
)
class MMFuse:
    """Multimodal classifier: image, audio and/or text in, a calibrated label and its reasons out."""

    champion = bentoml.models.BentoModel(f"{MODEL_NAME}:latest")

    def __init__(self) -> None:
        torch.set_num_threads(SERVE.torch_threads)
        stored = self.champion
        self.predictor = Predictor(Path(stored.path), str(stored.tag))
        self.labels = frozenset(self.predictor.labels)
        self.log = InferenceLog(log_path(), SERVE.log_max_rows, SERVE.log_queue_size)
        histogram = _batch_size_histogram()
        self.batcher = AdaptiveBatcher(
            self.predictor.forward, SERVE.max_batch_size, SERVE.batch_wait_ms / 1000, on_batch=histogram.observe
        )

    @bentoml.on_shutdown
    def close(self) -> None:
        """Refuse new model calls and write the queued log records before the process exits."""
        self.batcher.close()
        self.log.close()

    @bentoml.api(route="/predict", input_spec=PredictForm, output_spec=Prediction)
    def predict(
        self, ctx: bentoml.Context, image: bytes | None = None, audio: bytes | None = None, text: str | None = None
    ) -> Prediction | JSONResponse:
        """Classify one sample from any non-empty subset of image, audio and text."""
        started = time.perf_counter()
        if (refused := rejection(ctx.request)) is not None:
            return _with_status(ctx, refused)
        try:
            prepared = self.predictor.prepare(RawSample(image, audio, text))
        except InputProblem as problem:
            return _with_status(ctx, error_response(STATUS[problem.kind], [Problem((problem.field,), problem.message, problem.kind)]))
        return self._answer([prepared], "predict", started)[0]

    @bentoml.api(route="/predict_batch", input_spec=PredictBatchBody, output_spec=PredictBatchResponse)
    def predict_batch(self, ctx: bentoml.Context, samples: list[SampleIn]) -> PredictBatchResponse | JSONResponse:
        """Classify many samples in one call; any bad sample fails the call, naming every bad field."""
        started = time.perf_counter()
        if (refused := rejection(ctx.request)) is not None:
            return _with_status(ctx, refused)
        prepared: list[PreparedSample] = []
        problems: list[tuple[int, Problem]] = []
        for index, sample in enumerate(samples):
            try:
                prepared.append(self.predictor.prepare(RawSample(sample.image, sample.audio, sample.text)))
            except InputProblem as problem:
                problems.append((STATUS[problem.kind], Problem(("samples", index, problem.field), problem.message, problem.kind)))
        if problems:
            return _with_status(ctx, error_response(min(status for status, _ in problems), [p for _, p in problems]))
        return PredictBatchResponse(predictions=self._answer(prepared, "predict_batch", started))

    @bentoml.api(route="/feedback", input_spec=FeedbackBody, output_spec=FeedbackResponse)
    def feedback(self, ctx: bentoml.Context, request_id: str, label: str) -> FeedbackResponse | JSONResponse:
        """Record the true label of an earlier prediction, beside it in the inference log."""
        if (refused := rejection(ctx.request)) is not None:
            return _with_status(ctx, refused)
        if label not in self.labels:
            known = ", ".join(self.predictor.labels)
            problem = Problem(("label",), f"unknown label {label!r}; the labels are {known}.", "unknown_label")
            return _with_status(ctx, error_response(400, [problem]))
        prediction = self.log.feedback(request_id, label)
        if prediction is None:
            msg = "no prediction with this id in the inference log (never made, or removed by retention)."
            return _with_status(ctx, error_response(404, [Problem(("request_id",), msg, "not_found")]))
        return FeedbackResponse(request_id=request_id, label=label, prediction=prediction, correct=prediction == label)

    def _answer(self, prepared: list[PreparedSample], endpoint: str, started: float) -> list[Prediction]:
        """Run the model (adaptively batched with concurrent requests), explain, and log each sample."""
        scores = self.batcher(prepared)
        latency_ms = (time.perf_counter() - started) * 1000
        now = time.time()
        predictions = []
        for sample, score in zip(prepared, scores):
            prediction = self.predictor.explain(sample, score, uuid.uuid4().hex)
            self.log.record(
                LogRecord(
                    request_id=prediction.request_id,
                    ts=now,
                    endpoint=endpoint,
                    model_version=self.predictor.version,
                    present=tuple(bool(v) for v in sample.tensors["mask"].tolist()),
                    stats=sample.stats,
                    embedding=score.embedding.flatten().numpy(),
                    prediction=prediction.label,
                    confidence=prediction.confidence,
                    probabilities=prediction.probabilities,
                    latency_ms=latency_ms,
                )
            )
            predictions.append(prediction)
        return predictions


# Outermost first: refuse unauthenticated calls before reading anything, then oversized bodies.
MMFuse.add_asgi_middleware(BearerAuth, protected=PROTECTED)
MMFuse.add_asgi_middleware(BodySizeLimit, max_bytes=SERVE.max_request_bytes)
