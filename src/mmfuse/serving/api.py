"""The service's HTTP API: one Starlette app that owns every public route but BentoML's health and metrics.

Routes: POST /predict, /predict_batch, /feedback; GET /docs (and /) the API reference,
/docs.json its OpenAPI document, /demo/ a page to try the model in a browser. The
BentoML service (serving/service.py) mounts this app with `bentoml.asgi_app`, runs its
lifecycle (model, batcher, inference log) and adds BentoML's /livez, /readyz and /metrics.

Why an app of our own rather than `@bentoml.api` endpoints: BentoML's request parsing
(its IO descriptors) cannot be made strict through its public API (see serving/http.py),
and replacing it meant subclassing private classes. Here a request takes one path: parsed
by serving/http.py, refused with one `RequestRejected` exception handler (4xx JSON naming
the field), answered by the service instance on its thread pool. The OpenAPI document is
built from the same pydantic models that validate the requests, so the schema the
fuzz test (tests/integration/test_service_schema.py) drives is the one that is enforced.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from functools import lru_cache, partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import anyio
import anyio.to_thread
import bentoml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, WithJsonSchema
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmfuse.inference.predictor import Contribution, Prediction, RawSample
from mmfuse.params import load_serve_params
from mmfuse.serving.docs import render_docs
from mmfuse.serving.http import (
    Loc,
    Problem,
    RequestRejected,
    error_response,
    form_text,
    read_form,
    read_json,
)

SERVE = load_serve_params()  # params.yaml's serve: section, read once per process
DEMO_PAGE = Path(__file__).parent / "static" / "demo.html"
PROTECTED = frozenset({"/predict", "/predict_batch", "/feedback", "/reload"})  # what bearer auth guards
FORM_FIELDS = ("image", "audio", "text")
FILE_KINDS = {"image": "image/", "audio": "audio/"}  # a declared part type must match (or be generic)
GENERIC_TYPES = frozenset({"", "application/octet-stream"})
SERVICE_KEY = "mmfuse.service"  # the ASGI scope key under which ServiceBinding puts the instance
R = TypeVar("R")


# ---------------------------------------------------------------- request and response models


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


class PredictBatchRequest(BaseModel):
    """The body of POST /predict_batch."""

    model_config = ConfigDict(extra="forbid")

    samples: list[SampleIn] = Field(min_length=1, max_length=SERVE.max_batch_samples)


class PredictBatchResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per sample, in request order")


class FeedbackRequest(BaseModel):
    """The body of POST /feedback."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="the request_id a prediction returned")
    label: str = Field(min_length=1, max_length=256, description="the true label, one of the model's labels")


class FeedbackResponse(BaseModel):
    request_id: str
    label: str
    prediction: str = Field(description="what the model had answered")
    correct: bool


class ReloadResponse(BaseModel):
    champion: str = Field(description="the model version this worker now answers with")
    challenger: str | None = Field(description="the model version it scores in shadow, if any")
    changed: bool = Field(description="whether this call swapped either")


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="where: the field first, then any index or key inside it")
    msg: str
    type: str = Field(description="a stable kind, e.g. missing, media, too_large, extra_forbidden")


class ErrorResponse(BaseModel):
    """Every client error (4xx) of the service has this shape."""

    error: str = Field(description="one readable line naming the field(s) at fault")
    detail: list[ErrorDetail]


# ---------------------------------------------------------------- the service instance


class Backend(Protocol):
    """What the routes need of the service instance (serving/service.py's MMFuse)."""

    limiter: anyio.CapacityLimiter

    def classify(
        self, samples: list[RawSample], locs: list[Loc], endpoint: str, capture: bool = False
    ) -> list[Prediction]: ...

    def record_feedback(self, request_id: str, label: str) -> FeedbackResponse: ...

    def reload(self) -> ReloadResponse: ...


class ServiceBinding:
    """ASGI middleware that hands the routes the service instance of *their* app.

    BentoML creates the instance while the app starts (its lifespan) and exposes it as
    `bentoml.get_current_service()`, one per process: right for `bentoml serve` (a process
    per worker), wrong when one process starts several apps (`MMFuse.to_asgi()` twice, as
    the in-process tests do). So this middleware takes the instance when its own app's
    start-up completes and puts it in each request's scope.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.service: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def capture(message: Message) -> None:
                if message["type"] == "lifespan.startup.complete":
                    self.service = bentoml.get_current_service()
                await send(message)

            await self.app(scope, receive, capture)
            return
        if scope["type"] == "http":
            scope[SERVICE_KEY] = self.service
        await self.app(scope, receive, send)


def _backend(request: Request) -> Backend:
    """The instance ServiceBinding bound; the process's current one when no lifespan ran."""
    return request.scope.get(SERVICE_KEY) or bentoml.get_current_service()


async def _on_thread(backend: Backend, work: Callable[[], R]) -> R:
    """Run blocking work (preprocessing, the batched model call, SQLite) on the instance's
    pool of `serve.threads` threads: at most that many requests of a worker run at once."""
    return await anyio.to_thread.run_sync(work, limiter=backend.limiter)


# ---------------------------------------------------------------- routes


async def _read_predict_form(request: Request) -> RawSample:
    """The /predict form as a sample, refusing unknown, repeated, mistyped and oversized fields
    (all named at once). An empty, unnamed file part is a browser's untouched file input: absent."""
    parts = await read_form(
        request, SERVE.max_request_bytes, "multipart/form-data with the fields image, audio and/or text"
    )
    values: dict[str, Any] = dict.fromkeys(FORM_FIELDS)
    seen: set[str] = set()
    problems: list[Problem] = []
    for part in parts:
        name = part.name
        if name not in FORM_FIELDS:
            problems.append(Problem((name,), "unknown field; the fields are image, audio and text.", "extra_forbidden"))
        elif name in seen:
            problems.append(Problem((name,), "given more than once; send one per request.", "duplicate"))
        elif name == "text":
            if len(part.data) > SERVE.max_field_bytes:
                problems.append(
                    Problem((name,), f"over the field limit of {SERVE.max_field_bytes} bytes.", "too_large")
                )
            else:
                values[name] = form_text(bytes(part.data), name)
        elif part.filename is None:
            problems.append(
                Problem((name,), "must be a file upload (a part with a filename), not a plain field.", "file_type")
            )
        elif (part.content_type or "") not in GENERIC_TYPES and not part.content_type.startswith(FILE_KINDS[name]):
            wanted = "a PNG or JPEG image" if name == "image" else "a WAV audio file"
            problems.append(
                Problem((name,), f"the file is declared as {part.content_type}; send {wanted}.", "wrong_kind")
            )
        elif part.filename or part.data:
            values[name] = bytes(part.data)
        seen.add(name)
    if problems:
        raise RequestRejected(415 if all(p.type == "wrong_kind" for p in problems) else 400, problems)
    return RawSample(values["image"], values["audio"], values["text"])


CAPTURE_HEADER = "x-mmfuse-capture"
_BOOL = TypeAdapter(bool)


def _capture(request: Request) -> bool:
    """Whether the request opted in to having its raw inputs kept (the X-MMFuse-Capture header,
    read as pydantic reads a boolean: true/false, 1/0, yes/no, on/off)."""
    value = request.headers.get(CAPTURE_HEADER)
    try:
        return value is not None and _BOOL.validate_python(value.strip())
    except ValidationError as exc:
        msg = "must be true or false (keep this request's raw inputs for training once labelled)."
        raise RequestRejected(400, [Problem(("header", CAPTURE_HEADER), msg, "capture")]) from exc


async def predict(request: Request) -> Response:
    """POST /predict: one sample from a form."""
    capture = _capture(request)
    sample = await _read_predict_form(request)
    backend = _backend(request)
    [prediction] = await _on_thread(backend, partial(backend.classify, [sample], [()], "predict", capture))
    return JSONResponse(prediction.model_dump(mode="json"))


async def predict_batch(request: Request) -> Response:
    """POST /predict_batch: many samples, base64 media in JSON."""
    capture = _capture(request)
    body = await read_json(request, PredictBatchRequest, SERVE.max_request_bytes)
    samples = [RawSample(s.image, s.audio, s.text) for s in body.samples]
    locs: list[Loc] = [("samples", index) for index in range(len(samples))]
    backend = _backend(request)
    predictions = await _on_thread(backend, partial(backend.classify, samples, locs, "predict_batch", capture))
    return JSONResponse(PredictBatchResponse(predictions=predictions).model_dump(mode="json"))


async def feedback(request: Request) -> Response:
    """POST /feedback: the true label of an earlier prediction."""
    body = await read_json(request, FeedbackRequest, SERVE.max_request_bytes)
    backend = _backend(request)
    stored = await _on_thread(backend, partial(backend.record_feedback, body.request_id, body.label))
    return JSONResponse(stored.model_dump(mode="json"))


async def reload(request: Request) -> Response:
    """POST /reload: serve the store's champion (and challenger) now, instead of at the next look."""
    backend = _backend(request)
    return JSONResponse((await _on_thread(backend, backend.reload)).model_dump(mode="json"))


async def docs(_: Request) -> Response:
    return HTMLResponse(docs_page())


async def docs_json(_: Request) -> Response:
    return JSONResponse(openapi_spec())


async def demo(_: Request) -> Response:
    return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))


async def _rejected(_: Request, exc: Exception) -> Response:
    """The one answer to a refused request, wherever it was refused (parsing or the model's checks)."""
    assert isinstance(exc, RequestRejected)
    return error_response(exc.status, exc.problems)


Endpoint = Callable[[Request], Awaitable[Response]]
ROUTES: list[tuple[str, str, Endpoint]] = [
    ("POST", "/predict", predict),
    ("POST", "/predict_batch", predict_batch),
    ("POST", "/feedback", feedback),
    ("POST", "/reload", reload),
    ("GET", "/", docs),  # BentoML's own index page loads a tag manager: ours replaces it
    ("GET", "/docs", docs),
    ("GET", "/docs.json", docs_json),
    ("GET", "/demo/", demo),  # the trailing slash matters: the page calls ../predict
]

app = Starlette(
    routes=[Route(path, endpoint, methods=[method]) for method, path, endpoint in ROUTES],
    exception_handlers={RequestRejected: _rejected},
)


# ---------------------------------------------------------------- OpenAPI and the docs page


def _error_responses(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "the request is malformed or a field (or the X-MMFuse-Capture header) is invalid",
        401: "bearer auth is on and the token is missing or wrong",
        404: "the referenced prediction is not in the inference log",
        413: "the body is over serve.max_request_bytes",
        415: "wrong Content-Type, or a file declared as the wrong kind",
        422: "a medium cannot be decoded or is out of range, or the model lacks the modality",
        503: "the model store holds no complete champion: the current model keeps serving",
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {str(status): {"description": meaning[status], "content": error} for status in statuses}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
    }


def _ok(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _curl(path: str, *args: str) -> list[dict[str, str]]:
    lines = [f"curl -X POST http://localhost:3000{path}", '-H "Authorization: Bearer $MMFUSE_API_TOKEN"', *args]
    return [{"lang": "shell", "label": "curl", "source": " \\\n  ".join(lines)}]


_FORM = {
    "type": "object",
    "description": "any non-empty subset of the three fields",
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "a PNG or JPEG image file"},
        "audio": {"type": "string", "format": "binary", "description": "a WAV audio file"},
        "text": {"type": "string", "description": "a short text, e.g. a transcript"},
    },
    "additionalProperties": False,
}
_TEXT_FORM = {
    "type": "object",
    "description": "a plain HTML form or `curl -d`: text only",
    "properties": {"text": _FORM["properties"]["text"]},
    "additionalProperties": False,
}
_SECURED = [{"bearerAuth": []}, {}]
_CAPTURE_PARAMETER = {
    "name": "X-MMFuse-Capture",
    "in": "header",
    "required": False,
    "description": (
        "true: keep this request's raw inputs beside the inference log, so that once labelled (POST /feedback) "
        "they can become training data (`mmfuse harvest`); off by default (serve.capture turns it on for all)"
    ),
    "schema": {"type": "boolean"},
}  # bearer auth when MMFUSE_API_TOKEN is set, none otherwise


def _plain(description: str, media_type: str = "text/plain") -> dict[str, Any]:
    return {"200": {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}}


@lru_cache(maxsize=1)
def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (served at /docs.json, rendered at /docs).

    Body schemas come from the pydantic models that validate the requests, and the limits
    from params.yaml's serve: section, so the document states what is enforced. Built once
    per process; callers must not mutate it.
    """
    models: list[tuple[type[BaseModel], Any]] = [
        (PredictBatchRequest, "validation"),
        (FeedbackRequest, "validation"),
        (Prediction, "serialization"),
        (Contribution, "serialization"),
        (PredictBatchResponse, "serialization"),
        (FeedbackResponse, "serialization"),
        (ReloadResponse, "serialization"),
        (ErrorResponse, "serialization"),
    ]
    _, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    try:
        release = version("mmfuse")
    except PackageNotFoundError:  # a bento's copy of the source is not an installed distribution
        release = "unknown"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mmfuse",
            "version": release,
            "description": (
                "A multimodal classifier: an image, an audio clip and/or a text in, a calibrated label, "
                "its probabilities and each modality's contribution out. Every prediction is logged with "
                "a request_id; POST /feedback with the true label once it is known. Client errors are JSON "
                "naming the field at fault. Set MMFUSE_API_TOKEN on the server to require a bearer token "
                "on the POST endpoints."
            ),
        },
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "parameters": [_CAPTURE_PARAMETER],
                    "tags": ["predict"],
                    "summary": "Classify one sample",
                    "description": (
                        "Any non-empty subset of image, audio and text. Modalities the model does not read "
                        f"are reported in modalities_ignored. The whole body may be at most {SERVE.max_request_bytes} "
                        f"bytes, the text field {SERVE.max_field_bytes} bytes."
                    ),
                    "security": _SECURED,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": _FORM,
                                "encoding": {
                                    "image": {"contentType": "image/png, image/jpeg"},
                                    "audio": {"contentType": "audio/wav"},
                                },
                            },
                            "application/x-www-form-urlencoded": {"schema": _TEXT_FORM},
                        },
                    },
                    "responses": {**_ok(Prediction, "the prediction"), **_error_responses(400, 401, 413, 415, 422)},
                    "x-codeSamples": _curl("/predict", "-F image=@digit.png", "-F audio=@clip.wav", "-F text=five"),
                }
            },
            "/predict_batch": {
                "post": {
                    "operationId": "predict_batch",
                    "parameters": [_CAPTURE_PARAMETER],
                    "tags": ["predict"],
                    "summary": "Classify many samples in one call",
                    "description": (
                        f"1 to {SERVE.max_batch_samples} samples, media base64-encoded. Any bad sample fails the "
                        "call, and the error names every bad field as samples.<index>.<field>."
                    ),
                    "security": _SECURED,
                    "requestBody": _json_body(PredictBatchRequest),
                    "responses": {
                        **_ok(PredictBatchResponse, "one prediction per sample, in order"),
                        **_error_responses(400, 401, 413, 415, 422),
                    },
                    "x-codeSamples": _curl(
                        "/predict_batch",
                        '-H "Content-Type: application/json"',
                        """-d '{"samples": [{"text": "five"}]}'""",
                    ),
                }
            },
            "/feedback": {
                "post": {
                    "operationId": "feedback",
                    "tags": ["feedback"],
                    "summary": "Record the true label of an earlier prediction",
                    "description": "Stored beside the prediction in the inference log, for monitoring.",
                    "security": _SECURED,
                    "requestBody": _json_body(FeedbackRequest),
                    "responses": {
                        **_ok(FeedbackResponse, "the stored feedback"),
                        **_error_responses(400, 401, 404, 413, 415),
                    },
                    "x-codeSamples": _curl(
                        "/feedback",
                        '-H "Content-Type: application/json"',
                        """-d '{"request_id": "<from a prediction>", "label": "five"}'""",
                    ),
                }
            },
            "/reload": {
                "post": {
                    "operationId": "reload",
                    "tags": ["models"],
                    "summary": "Serve the store's champion now",
                    "description": (
                        "Each worker also looks every serve.reload_interval_s seconds. The new model is loaded, "
                        "then swapped in between requests: requests in flight finish on the model they started "
                        "with. With several workers, this call reaches one of them."
                    ),
                    "security": _SECURED,
                    "responses": {**_ok(ReloadResponse, "the versions now served"), **_error_responses(401, 503)},
                    "x-codeSamples": _curl("/reload"),
                }
            },
            "/livez": {
                "get": {
                    "operationId": "livez",
                    "tags": ["health"],
                    "summary": "The process is up",
                    "responses": _plain("up"),
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "tags": ["health"],
                    "summary": "The model is loaded",
                    "responses": _plain("ready"),
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "tags": ["health"],
                    "summary": "Prometheus metrics",
                    "responses": _plain("metrics"),
                }
            },
        },
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "the server's MMFUSE_API_TOKEN"}
            },
        },
    }


@lru_cache(maxsize=1)
def docs_page() -> str:
    """The API reference page, rendered once from the OpenAPI document (no scripts, nothing fetched)."""
    return render_docs(openapi_spec(), spec_url="docs.json", demo_url="demo/")
