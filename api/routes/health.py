"""Liveness and readiness probes."""

import tempfile
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.db import get_engine
from service.models import BaseModelRecord, BaseStatus
from service.settings import get_service_settings
from vaccine_core.moderation.judge_config import default_judge_ready

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz() -> JSONResponse:
    """The database answers and the storage directory takes files."""
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        home = get_service_settings().home
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home):
            pass
        checks["storage"] = "ok"
    except OSError as exc:
        checks["storage"] = f"error: {exc.strerror}"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    if checks["database"] == "ok":
        body["warming_up"] = warming_up()
    return JSONResponse(body, status_code=200 if ready else 503)


def warming_up() -> dict[str, Any]:
    """What a worker is still preparing (the API takes requests meanwhile: jobs wait in the queue, uploads
    for their pre-screen): bases not aligned yet, with their progress, and an untrained default judge."""
    settings = get_service_settings()
    pending: dict[str, Any] = {}
    with Session(get_engine()) as session:
        for base in session.scalars(
            select(BaseModelRecord).where(
                BaseModelRecord.status.in_((BaseStatus.REGISTERED, BaseStatus.ALIGNING))
            )
        ):
            pending[f"base:{base.id}"] = {"status": base.status, "progress": base.progress}
    judges = {settings.prescreen_judge, settings.safety_judge}
    if "default" in judges and not default_judge_ready():
        pending["judge:default"] = {"status": "not trained yet (a worker trains it on first use)"}
    return pending
