"""Base models: register one and align it (a worker job with progress); list them with their reports."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field
from sqlalchemy import select

from api.deps import SessionDep
from api.errors import APIError
from api.routes.admin.tenants import audit
from service import bases
from service.bases import AlignmentPlan
from service.models import BaseModelRecord, epoch
from vaccine_core.artifacts import alignment_manifest

router = APIRouter(prefix="/models")


class NewBase(AlignmentPlan):
    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._-]+$")
    source: str = Field(
        description="'default', a .gguf file or a Hugging Face model directory; with method 'aligned', "
        "an alignment run directory (`vaccine align` output) to adopt as it is"
    )


def _base(record: BaseModelRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "source": record.source,
        "status": record.status,
        "alignment": record.alignment,
        "report": record.report,
        "progress": record.progress,
        "error": record.error,
        "created_at": epoch(record.created_at),
    }


@router.post("")
def register(body: NewBase, request: Request, session: SessionDep) -> dict[str, Any]:
    if session.get(BaseModelRecord, body.name) is not None:
        raise APIError(409, "model_exists", f"A base model named '{body.name}' exists already.", param="name")
    if body.adopted:
        try:
            alignment_manifest(Path(body.source))
        except ValueError as exc:
            raise APIError(400, "invalid_model", str(exc), param="source") from None
    if body.data is not None and not Path(body.data).is_file():
        raise APIError(400, "invalid_file", f"No alignment file at {body.data}.", param="data")
    audit(session, "base.register", body.name, body.model_dump())
    record = bases.register(
        session, name=body.name, source=body.source, plan=AlignmentPlan.model_validate(body.model_dump())
    )
    request.app.state.dispatch_alignment(body.name)
    return _base(record)


@router.get("")
def list_bases(session: SessionDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            _base(r) for r in session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.created_at))
        ],
    }
