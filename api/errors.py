"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

T = TypeVar("T")


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None, **extra: Any):
        self.status, self.code, self.message, self.param, self.extra = status, code, message, param, extra


def found(row: T | None, kind: str, identifier: str) -> T:
    """``row``, or the 404 a missing object gets."""
    if row is None:
        raise not_found(kind, identifier)
    return row


def not_found(kind: str, identifier: str) -> APIError:
    # Another tenant's object answers exactly like a missing one.
    return APIError(404, "not_found", f"No {kind} with id '{identifier}'.", param="id")


def _body(code: str, message: str, param: str | None, kind: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return JSONResponse(
            _body(exc.code, exc.message, exc.param, kind, **exc.extra), status_code=exc.status
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
            _body("invalid_request", message, param, "invalid_request_error"), status_code=400
        )
