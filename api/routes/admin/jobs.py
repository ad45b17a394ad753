"""Jobs of every tenant: list with filters, cancel, requeue a failed one."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from api.deps import SessionDep
from api.errors import APIError, found
from api.routes.admin.tenants import audit
from api.routes.jobs import JobObject
from service import jobs
from service.models import Job

router = APIRouter(prefix="/jobs")


@router.get("")
def list_jobs(
    session: SessionDep,
    tenant_id: str | None = None,
    status: str | None = None,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    query = select(Job)
    for column, value in ((Job.tenant_id, tenant_id), (Job.status, status), (Job.model, model)):
        if value is not None:
            query = query.where(column == value)
    rows = session.scalars(query.order_by(Job.created_at.desc()).limit(limit))
    return {"object": "list", "data": [JobObject.of(j).model_dump() for j in rows]}


@router.post("/{job_id}/cancel")
def cancel(job_id: str, session: SessionDep) -> dict[str, Any]:
    job = found(session.get(Job, job_id), "fine-tuning job", job_id)
    cancelled = jobs.cancel(session, job_id=job_id, by="an operator")
    session.refresh(job)
    if not cancelled:
        raise APIError(409, "job_not_active", f"Job '{job_id}' has already ended ({job.status}).", param="id")
    audit(session, "job.cancel", job_id)
    session.commit()
    return JobObject.of(job).model_dump()


@router.post("/{job_id}/requeue")
def requeue(job_id: str, request: Request, session: SessionDep) -> dict[str, Any]:
    """Put a failed job back in the queue; it resumes from its newest checkpoint."""
    job = found(session.get(Job, job_id), "fine-tuning job", job_id)
    requeued = jobs.requeue_failed(session, job_id=job_id, by="an operator")
    session.refresh(job)
    if not requeued:
        raise APIError(409, "job_not_failed", f"Only failed jobs can be requeued; this one is {job.status}.")
    audit(session, "job.requeue", job_id)
    session.commit()
    request.app.state.dispatch(job_id)
    return JobObject.of(job).model_dump()
