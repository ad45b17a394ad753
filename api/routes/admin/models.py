"""Quarantined models: inspect the safety report, release or delete, each decision in the audit log."""

import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import SessionDep
from api.errors import APIError, not_found
from api.routes.admin.tenants import audit
from api.routes.models import ModelObject
from service import checkpoints
from service.models import AuditEntry, FineTunedModel, Job, JobStatus, add_event, epoch

router = APIRouter()


class Decision(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


@router.get("/quarantine")
def quarantined(session: SessionDep) -> dict[str, Any]:
    rows = session.scalars(select(FineTunedModel).where(FineTunedModel.quarantined.is_(True)))
    return {"object": "list", "data": [ModelObject.of_tuned(r).model_dump() for r in rows]}


def _quarantined(session: SessionDep, model_id: str) -> FineTunedModel:
    row = session.get(FineTunedModel, model_id)
    if row is None:
        raise not_found("model", model_id)
    if not row.quarantined:
        raise APIError(409, "not_quarantined", f"Model '{model_id}' is not in quarantine.")
    return row


@router.post("/quarantine/{model_id:path}/release")
def release(model_id: str, body: Decision, session: SessionDep) -> dict[str, Any]:
    """Hand the model to its tenant after review; its job then counts as succeeded."""
    row = _quarantined(session, model_id)
    row.quarantined = False
    job = session.get(Job, row.job_id)
    job.status, job.error = JobStatus.SUCCEEDED, None
    add_event(session, job.id, f"Released by an operator: {body.reason}")
    audit(session, "model.release", model_id, {"reason": body.reason, "safety_report": row.safety_report})
    session.commit()
    return ModelObject.of_tuned(row).model_dump()


@router.post("/quarantine/{model_id:path}/delete")
def delete(model_id: str, body: Decision, session: SessionDep) -> dict[str, Any]:
    """Delete the quarantined adapter; the job stays failed with code moderation_blocked."""
    row = _quarantined(session, model_id)
    shutil.rmtree(Path(row.path), ignore_errors=True)
    add_event(session, row.job_id, f"Quarantined model deleted by an operator: {body.reason}")
    audit(session, "model.delete", model_id, {"reason": body.reason, "safety_report": row.safety_report})
    checkpoints.revoke_all(session, job_id=row.job_id)
    session.delete(row)
    session.commit()
    return {"id": model_id, "deleted": True}


@router.get("/audit")
def audit_log(session: SessionDep) -> dict[str, Any]:
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(500))
    return {
        "object": "list",
        "data": [
            {
                "id": r.id,
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "details": r.details,
                "created_at": epoch(r.created_at),
            }
            for r in rows
        ],
    }
