"""What runs around every route: the API key and body size guard (ASGI middleware, before any body is read)
and the handlers that turn every refusal into an OpenAI-shaped error (`sphinx_x/serve/errors.py`)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sphinx_x.serve.errors import APIError, error_response
from sphinx_x.serve.settings import ServerSettings


class Guard:
    """ASGI middleware run before any body is read: API key on /v1/*, then the body size limit
    (Content-Length when given, counted bytes otherwise)."""

    def __init__(self, app: Any, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            return await refusal(scope, receive, send)
        limit = self.settings.max_body_bytes
        seen = 0

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # HTTPException passes through FastAPI's body reading unchanged
                    raise StarletteHTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counted_receive, send)

    def _refusal(self, path: str, headers: dict[str, str]) -> JSONResponse | None:
        """A 401 (missing or wrong key on /v1/*) or 413 (declared body too large) answer, or None."""
        key = self.settings.api_key
        if key is not None and path.startswith("/v1/"):
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
                message = "missing API key (send 'Authorization: Bearer <key>')" if not auth else "invalid API key"
                return error_response(401, message, headers={"WWW-Authenticate": "Bearer"})
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return error_response(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
        return None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """pydantic's first complaint as one sentence naming the field, and the field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"invalid request: {field}: {first.get('msg', 'invalid value')}{more}", field


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.headers)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(400, *validation_message(exc))


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail))


def install(app: FastAPI, settings: ServerSettings) -> None:
    """Add the guard and the error handlers to `app`."""
    app.add_middleware(Guard, settings=settings)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
