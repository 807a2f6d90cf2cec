"""The HTTP edge of the service: strict request parsing, one error shape, the body-size guard.

BentoML 1.4's default request parsing has traps for a public endpoint, which the
service's input models avoid by parsing requests with the functions here:
- a multipart string where a file is expected is fetched as a URL (server-side request
  forgery), and a failed fetch is a 500;
- every non-file multipart field is JSON-decoded, so the text "5" arrives as the int 5
  (a 400 for a valid transcript) and "null" as None;
- a malformed multipart body raises Starlette's HTTPException, which BentoML's endpoint
  wrapper turns into a 500;
- a 4xx BentoMLException is rendered as a JSON *list* (`[{"error": ...}]`), a
  ValidationError as a 400 whose message names no field, each with a logged traceback.
So a parser never raises: it records why it refused the request (`reject`) and hands
BentoML an empty input; the endpoint's first step returns that refusal (`rejection`).
Every client error, parsing or semantic, is then one `error_response`:
`{"error": "<field>: <problem>", "detail": [{"loc": [<field>, ...], "msg": ..., "type": ...}]}`
with the status that fits (400, 401, 404, 413, 415, 422).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

Loc = tuple[str | int, ...]


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
    return JSONResponse(error_body(problems), status_code=status, headers=headers)


class RequestRejected(Exception):
    """Raised while parsing a request; caught by the input model and turned into `reject`."""

    def __init__(self, status: int, problems: Sequence[Problem]) -> None:
        super().__init__(error_body(problems)["error"])
        self.status = status
        self.problems = list(problems)


def validation_problems(exc: ValidationError) -> list[Problem]:
    """pydantic's errors as Problems (the loc starts with the field; no input echoed back)."""
    return [Problem(tuple(err["loc"]) or ("body",), err["msg"], err["type"]) for err in exc.errors(include_input=False)]


_REJECTION = "mmfuse_rejection"


def reject(request: Request, rejected: RequestRejected) -> None:
    """Remember why the request was refused; the endpoint answers with it (`rejection`).

    Stored in the ASGI scope's state, which every Request object of this request shares
    (BentoML's context holds a different Request object than the parser gets).
    """
    setattr(request.state, _REJECTION, rejected)


def rejection(request: Request) -> JSONResponse | None:
    """The error response for a request its parser refused, or None when it parsed."""
    rejected: RequestRejected | None = getattr(request.state, _REJECTION, None)
    return None if rejected is None else error_response(rejected.status, rejected.problems)


def media_type(request: Request) -> str:
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
