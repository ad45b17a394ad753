"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

T = TypeVar("T")
DATABASE_RETRY_AFTER = 5  # seconds a client waits before asking again while the database is away


class APIError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        self.status, self.code, self.message, self.param, self.extra = status, code, message, param, extra
        self.headers = headers or {}


def found(row: T | None, kind: str, identifier: str) -> T:
    """``row``, or the 404 a missing object gets."""
    if row is None:
        raise not_found(kind, identifier)
    return row


def not_found(kind: str, identifier: str) -> APIError:
    # Another tenant's object answers exactly like a missing one.
    return APIError(404, "not_found", f"No {kind} with id '{identifier}'.", param="id")


def envelope(code: str, message: str, param: str | None, kind: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


# what the framework's own HTTP errors (an unknown route, a wrong method) are called in the envelope
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return JSONResponse(
            envelope(exc.code, exc.message, exc.param, kind, **exc.extra),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or HTTP_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"No route {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            envelope(code, message, getattr(exc, "param", None), kind),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.scope.get("request_id", "")
        headers = {"x-request-id": request_id} if request_id else {}
        if isinstance(exc, OperationalError | InterfaceError):  # the database is down or restarting
            log.warning("database unavailable in %s %s: %s", request.method, request.url.path, exc)
            message = "The service's database is unavailable; try again shortly."
            return JSONResponse(
                envelope("database_unavailable", message, None, "server_error"),
                status_code=503,
                headers={**headers, "Retry-After": str(DATABASE_RETRY_AFTER)},
            )
        log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
        message = f"The server failed to answer this request (request id {request_id}); it was logged."
        # this answer leaves from outside every middleware, so it names its request itself
        return JSONResponse(
            envelope("server_error", message, None, "server_error"),
            status_code=500,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if p not in {"body", "query", "path"})
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p not in {'body', 'query', 'path'})}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse(
            envelope("invalid_request", message, param, "invalid_request_error"), status_code=400
        )
