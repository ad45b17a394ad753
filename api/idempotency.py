"""Idempotency-Key on every POST, as plain ASGI middleware so that uploads still stream.

A new key: the request passes through while its body is hashed chunk by chunk; a successful answer
(status < 500) is stored. A known key with the same method, path and body: the stored answer is replayed
and the route does not run again. A known key with another request: 409. Keys are scoped to the caller's
credentials, so tenants cannot collide or read each other's answers.
"""

import hashlib

from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import get_engine
from service.models import IdempotentResponse

HEADER = b"idempotency-key"


class Fingerprint:
    """sha256 of a request body streamed in chunks, without its multipart boundary: a client draws a new
    random boundary for every request, so the same upload sent twice differs in nothing else."""

    def __init__(self, prefix: bytes, content_type: bytes):
        self.digest = hashlib.sha256(prefix)
        _, _, boundary = content_type.partition(b"boundary=")
        self.boundary = boundary.split(b";")[0].strip(b'"')
        self.tail = b""

    def update(self, chunk: bytes) -> None:
        if not self.boundary:
            self.digest.update(chunk)
            return
        data = (self.tail + chunk).replace(self.boundary, b"")
        keep = len(self.boundary) - 1  # a boundary may straddle two chunks
        self.tail = data[-keep:] if keep else b""
        self.digest.update(data[: len(data) - len(self.tail)])

    def hexdigest(self) -> str:
        self.digest.update(self.tail)
        self.tail = b""
        return self.digest.hexdigest()


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        if scope["type"] != "http" or scope["method"] != "POST" or HEADER not in headers:
            await self.app(scope, receive, send)
            return
        key = headers[HEADER].decode(errors="replace")
        caller = hashlib.sha256(headers.get(b"authorization", b"")).hexdigest()
        digest = Fingerprint(
            f"{scope['method']} {scope['path']}\n".encode(), headers.get(b"content-type", b"")
        )

        with Session(get_engine()) as session:
            stored = session.get(IdempotentResponse, (caller, key))
        if stored is not None:
            # Drain the body to compare it, without keeping it.
            while True:
                message = await receive()
                digest.update(message.get("body", b""))
                if not message.get("more_body"):
                    break
            if digest.hexdigest() != stored.request_sha256:
                await _send(
                    send,
                    409,
                    b'{"error": {"message": "This Idempotency-Key was used for another '
                    b'request.", "type": "invalid_request_error", "param": null, '
                    b'"code": "idempotency_key_reused"}}',
                    "application/json",
                )
            else:
                await _send(send, stored.status_code, stored.body, stored.content_type)
            return

        async def hashing_receive() -> Message:
            message = await receive()
            digest.update(message.get("body", b""))
            return message

        response: dict = {"body": bytearray()}

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["type"] = dict(message.get("headers") or []).get(b"content-type", b"").decode()
            elif message["type"] == "http.response.body":
                response["body"] += message.get("body", b"")
            await send(message)

        await self.app(scope, hashing_receive, capturing_send)
        if response.get("status", 500) < 500:
            with Session(get_engine()) as session:
                session.merge(
                    IdempotentResponse(
                        scope=caller,
                        key=key,
                        request_sha256=digest.hexdigest(),
                        status_code=response["status"],
                        content_type=response["type"],
                        body=bytes(response["body"]),
                    )
                )
                session.commit()


async def _send(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type.encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
