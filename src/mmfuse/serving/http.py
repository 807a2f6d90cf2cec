"""The HTTP edge of the service: strict request parsing, one error shape, the body-size guard.

The API (serving/api.py) reads every request body with the functions here, and nothing
else, because a framework's form and JSON handling has traps for a public endpoint
(BentoML 1.4's, for one: a multipart string where a file is expected is fetched as a URL;
every non-file field is JSON-decoded, so the text "5" arrives as the int 5; a malformed
multipart body or a validation error becomes a 500, or a 400 naming no field). Here:
- bodies are read with a size cap while they stream (`read_body`), whatever the headers say;
- multipart parts stay raw bytes (`parse_multipart`), text is taken verbatim (`form_text`);
- JSON is validated strictly against a pydantic model (`read_json`), unknown keys refused;
- any refusal is a `RequestRejected`, which the API answers with one `error_response`:
  `{"error": "<field>: <problem>", "detail": [{"loc": [<field>, ...], "msg": ..., "type": ...}]}`
  with the status that fits (400, 401, 404, 413, 415, 422), never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where (`loc`, starting with the field), what, and its kind."""

    loc: Loc
    msg: str
    type: str

    def as_detail(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


def error_body(problems: Sequence[Problem]) -> dict[str, Any]:
    """`error`: one readable line naming the field(s); `detail`: the problems, pydantic-style."""
    summary = "; ".join(f"{'.'.join(str(part) for part in p.loc)}: {p.msg}" for p in problems)
    return {"error": summary, "detail": [p.as_detail() for p in problems]}


def error_response(status: int, problems: Sequence[Problem], headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every client error the service sends (the API, auth and the size guard)."""
    return JSONResponse(error_body(problems), status_code=status, headers=headers)


class RequestRejected(Exception):
    """Why a request is refused; raised anywhere while it is handled, answered by the API's one
    exception handler with `error_response(status, problems)`."""

    def __init__(self, status: int, problems: Sequence[Problem]) -> None:
        super().__init__(error_body(problems)["error"])
        self.status = status
        self.problems = list(problems)


def validation_problems(exc: ValidationError) -> list[Problem]:
    """pydantic's errors as Problems (the loc starts with the field; no input echoed back)."""
    return [Problem(tuple(err["loc"]) or ("body",), err["msg"], err["type"]) for err in exc.errors(include_input=False)]


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, lower-cased ("" when there is none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_media_type(request: Request, accepted: Sequence[str], hint: str) -> str:
    """The request's media type if it is one of `accepted`; 415 otherwise."""
    kind = media_type(request)
    if kind not in accepted:
        got = kind or "no Content-Type"
        raise RequestRejected(415, [Problem(("header", "content-type"), f"send {hint} (got {got}).", "content_type")])
    return kind


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes while it streams (chunked uploads
    carry no Content-Length for the guard middleware to check)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(413, [Problem(("body",), f"over the limit of {limit} bytes.", "too_large")])
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Part:
    """One multipart part, kept as raw bytes (no charset guessing, no JSON decoding)."""

    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a multipart/form-data body into parts; raises ValueError with a readable reason."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ValueError("the multipart/form-data Content-Type has no boundary.")
    parts: list[Part] = []
    current = Part()
    header: dict[str, bytearray] = {"name": bytearray(), "value": bytearray()}
    headers: dict[str, bytes] = {}

    def on_part_begin() -> None:
        nonlocal current
        current = Part()
        headers.clear()

    def on_header_end() -> None:
        headers[bytes(header["name"]).decode("latin-1").lower()] = bytes(header["value"])
        header["name"].clear()
        header["value"].clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get("content-disposition", b""))
        if b"name" not in disposition:
            raise ValueError('a part has no Content-Disposition "name".')
        current.name = disposition[b"name"].decode("utf-8", "replace")
        if b"filename" in disposition:
            current.filename = disposition[b"filename"].decode("utf-8", "replace")
        if "content-type" in headers:
            current.content_type = headers["content-type"].decode("latin-1").split(";")[0].strip().lower()

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": lambda data, start, end: current.data.extend(data[start:end]),
            "on_part_end": lambda: parts.append(current),
            "on_header_field": lambda data, start, end: header["name"].extend(data[start:end]),
            "on_header_value": lambda data, start, end: header["value"].extend(data[start:end]),
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ValueError(f"the multipart body is malformed ({exc}).") from exc
    if parser.state != MultipartState.END:
        raise ValueError("the multipart body is incomplete (no closing boundary).")
    return parts


def parse_urlencoded(body: bytes) -> list[Part]:
    """application/x-www-form-urlencoded (a plain HTML form or `curl -d`) as parts."""
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise ValueError("the form body is not valid URL-encoded UTF-8.") from exc
    return [Part(name=name, data=bytearray(value.encode("utf-8"))) for name, value in pairs]


async def read_form(request: Request, limit: int, hint: str) -> list[Part]:
    """A multipart/form-data or URL-encoded form body as parts; 415 for another media type,
    413 over `limit` bytes, 400 (naming the body) when it does not parse."""
    kind = require_media_type(request, ("multipart/form-data", "application/x-www-form-urlencoded"), hint)
    body = await read_body(request, limit)
    try:
        return (
            parse_multipart(body, request.headers["content-type"])
            if kind == "multipart/form-data"
            else parse_urlencoded(body)
        )
    except ValueError as exc:
        raise RequestRejected(400, [Problem(("body",), str(exc), "malformed")]) from exc


async def read_json(request: Request, model: type[M], limit: int) -> M:
    """A JSON body validated strictly as `model`: 415 for another media type, 413 over `limit`
    bytes, 400 naming every bad field (an empty body is `{}`, so the missing fields are named)."""
    require_media_type(request, ("application/json",), "application/json")
    body = await read_body(request, limit)
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise RequestRejected(400, validation_problems(exc)) from exc


def form_text(value: bytes, name: str) -> str:
    """A text field's value. Taken verbatim, except a JSON string literal is decoded: BentoML's
    own clients JSON-encode non-file multipart fields, so `"five"` means five; "5" stays "5"."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(400, [Problem((name,), f"not valid UTF-8 (byte {exc.start}).", "unicode_error")]) from exc
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(decoded, str):
            return decoded
    return text


class BodySizeLimit:
    """Refuses a request whose declared Content-Length is over the limit with 413, before
    any of it is read. (A body without Content-Length is capped while it is read.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0 or length > self.max_bytes:
                problem = (
                    Problem(("header", "content-length"), "not a valid length.", "invalid")
                    if length < 0
                    else Problem(("body",), f"{length} bytes is over the limit of {self.max_bytes} bytes.", "too_large")
                )
                response = error_response(400 if length < 0 else 413, [problem], {"connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
