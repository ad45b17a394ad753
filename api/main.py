"""The FastAPI application: routes per resource, errors in OpenAI's shape."""

import functools
import logging
from collections.abc import Callable

from fastapi import FastAPI

from api.console import install_console
from api.errors import install_handlers
from api.idempotency import IdempotencyMiddleware
from api.request_id import RequestIdMiddleware
from api.routes import admin, chat, checkpoints, files, health, jobs, models
from api.upload_limit import UploadLimitMiddleware
from service.settings import get_service_settings

log = logging.getLogger(__name__)


def _undispatched(identifier: str) -> None:
    log.warning("no worker dispatch configured: %s stays queued", identifier)


def tolerant(send: Callable[[str], None], what: str) -> Callable[[str], None]:
    """``send``, but a broker that is down does not fail the request: the row is already committed, and
    the worker's sweeper sends what was not sent (service.jobs.redispatch_lost)."""

    @functools.wraps(send)
    def send_or_log(identifier: str) -> None:
        try:
            send(identifier)
        except Exception:
            log.exception("could not hand %s %s to the broker; the sweeper will send it", what, identifier)

    return send_or_log


def create_app(
    dispatch: Callable[[str], None] | None = None,
    dispatch_alignment: Callable[[str], None] | None = None,
    dispatch_prescreen: Callable[[str], None] | None = None,
) -> FastAPI:
    """``dispatch(job_id)`` hands a new job to the workers, ``dispatch_alignment(base_id)`` an operator's
    alignment, ``dispatch_prescreen(file_id)`` an upload's moderation pre-screen (Celery tasks in
    production)."""
    app = FastAPI(title="Vaccine fine-tuning service", version="0.1.0")
    install_handlers(app)
    app.add_middleware(IdempotencyMiddleware)
    # outside the idempotency middleware, which reads a body to fingerprint it
    app.add_middleware(UploadLimitMiddleware, limit=lambda: get_service_settings().max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)  # outermost: even a replayed or failed answer carries its id
    app.state.dispatch = tolerant(dispatch, "job") if dispatch else _undispatched
    app.state.dispatch_alignment = dispatch_alignment or _undispatched
    app.state.dispatch_prescreen = dispatch_prescreen or _undispatched
    app.include_router(files.router)
    app.include_router(jobs.router)
    app.include_router(checkpoints.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    install_console(app, get_service_settings())
    return app
