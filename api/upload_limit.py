"""Refuse an upload larger than the limit while it streams in, not after.

Starlette spools a multipart body to a temporary file before a route sees it, so a limit checked in the
route lets a 2 GB upload fill the disk first. This plain ASGI middleware counts the bytes as they arrive
on the upload route: a declared ``Content-Length`` over the limit is refused before a byte is read, and a
chunked body is cut off at the first chunk past it. Both answer 413 in the error envelope.
"""

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import envelope

UPLOAD_PATH = "/v1/files"
# Multipart framing and the form's other fields (purpose) around the file's bytes.
MULTIPART_SLACK = 64 * 1024


class UploadTooLarge(HTTPException):
    """Raised from ``receive``: FastAPI passes an HTTP exception met while it parses a body on to the
    app's handlers (any other error there becomes a 400), so the answer is the envelope's 413."""

    code, param = "file_too_large", "file"

    def __init__(self, limit: int):
        super().__init__(413, f"The upload is larger than {limit} bytes.")


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, limit: Callable[[], int]):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        limit = self.limit()
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit + MULTIPART_SLACK:
            await too_large(limit)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit + MULTIPART_SLACK:
                    raise UploadTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except UploadTooLarge:  # raised where no handler of the app sees it (a middleware reading the body)
            if not started:
                await too_large(limit)(scope, receive, send)


def too_large(limit: int) -> JSONResponse:
    error = UploadTooLarge(limit)
    body = envelope(error.code, error.detail, error.param, "invalid_request_error")
    return JSONResponse(body, status_code=error.status_code)
