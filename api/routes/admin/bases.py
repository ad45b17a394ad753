"""Base models: register one and align it (a worker job with progress); list them with their reports."""

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import SessionDep
from api.errors import APIError
from api.routes.admin.tenants import audit
from service.models import ADOPT, BaseModelRecord, BaseStatus, epoch
from vaccine_core.artifacts import alignment_manifest
from vaccine_core.defenses import BoosterConfig

router = APIRouter(prefix="/models")


class NewBase(BaseModel):
    name: str = Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._-]+$")
    source: str = Field(
        description="'default', a .gguf file or a Hugging Face model directory; with method 'aligned', "
        "an alignment run directory (`vaccine align` output) to adopt as it is"
    )
    method: Literal["vaccine", "sft", "aligned"] = "vaccine"
    rho: float = Field(default=2.0, ge=0)
    pairs: int = Field(
        default=64, ge=2, description="safety + helpful pairs, half each, when no data is given"
    )
    data: str | None = Field(default=None, description="an alignment file instead of the default mix")
    epochs: float = Field(default=1.0, gt=0, le=100)
    booster: bool = Field(
        default=False, description="add Booster's attenuation term (combines with vaccine or sft)"
    )
    booster_lambda: float = Field(default=BoosterConfig.lamb, ge=0, le=100)
    booster_alpha: float = Field(default=BoosterConfig.alpha, gt=0, le=10)


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
    if body.method == ADOPT:
        try:
            alignment_manifest(Path(body.source))
        except ValueError as exc:
            raise APIError(400, "invalid_model", str(exc), param="source") from None
    if body.data is not None and not Path(body.data).is_file():
        raise APIError(400, "invalid_file", f"No alignment file at {body.data}.", param="data")
    record = BaseModelRecord(
        id=body.name,
        source=body.source,
        status=BaseStatus.REGISTERED,
        alignment={
            "method": body.method,
            "rho": body.rho,
            "pairs": body.pairs,
            "epochs": body.epochs,
            "data": body.data,
            "booster": {"lamb": body.booster_lambda, "alpha": body.booster_alpha} if body.booster else None,
        },
    )
    session.add(record)
    audit(session, "base.register", body.name, body.model_dump())
    session.commit()
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
