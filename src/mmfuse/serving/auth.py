"""Optional bearer-token access control for the prediction and feedback endpoints.

Off by default so a local `mmfuse serve` just works. In production set MMFUSE_API_TOKEN
(a long random secret) in the server's environment; clients then send
`Authorization: Bearer <token>`. Health (/livez, /readyz), /metrics, the OpenAPI page and
the demo page stay open: orchestrators probe them without credentials, and the demo page
holds no data (it asks for the token and sends it with each call).
"""

from __future__ import annotations

import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from mmfuse.serving.http import Problem, error_response

TOKEN_ENV = "MMFUSE_API_TOKEN"


def configured_token() -> str | None:
    """The token from the environment; None (auth off) when unset or blank."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


class BearerAuth:
    """ASGI middleware: requests to `protected` paths need `Authorization: Bearer <token>`.

    The token is read from the environment when the server builds its middleware stack
    (once per worker process). The path is compared with its trailing slashes stripped, so
    /predict/ cannot slip past. The token comparison takes constant time, so response
    timing does not leak it.
    """

    def __init__(self, app: ASGIApp, protected: frozenset[str]) -> None:
        self.app = app
        token = configured_token()
        self.token = token.encode() if token else None
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or scope["path"].rstrip("/") not in self.protected:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token):
            await self.app(scope, receive, send)
            return
        problem = (
            Problem(("header", "authorization"), "missing: send `Authorization: Bearer <token>`.", "unauthorized")
            if not header
            else Problem(("header", "authorization"), "the bearer token is not valid.", "unauthorized")
        )
        response = error_response(401, [problem], {"www-authenticate": 'Bearer realm="mmfuse"'})
        await response(scope, receive, send)
