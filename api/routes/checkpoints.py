"""``/v1/fine_tuning/checkpoints/{checkpoint}/permissions``: share a checkpoint with other tenants.

OpenAI's checkpoint permissions let an organisation's projects train from another project's checkpoint;
here a tenant stands for a project and the checkpoint's owner grants, lists and revokes. A grantee may
name the checkpoint as the ``model`` of its own job (which is scored before anything is released); it
cannot list, download or chat with it.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import select, tuple_

from api.deps import SessionDep, SettingsDep, TenantDep
from api.errors import APIError, not_found
from service import checkpoints
from service.models import CheckpointPermission, epoch

router = APIRouter(prefix="/v1/fine_tuning/checkpoints", tags=["checkpoints"])


class PermissionObject(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str

    @classmethod
    def of(cls, row: CheckpointPermission) -> "PermissionObject":
        return cls(id=row.id, created_at=epoch(row.created_at), project_id=row.tenant_id)


class PermissionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PermissionObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, rows: list[CheckpointPermission], has_more: bool = False) -> "PermissionList":
        data = [PermissionObject.of(row) for row in rows]
        return cls(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )


class PermissionDeleted(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool = True


class PermissionRequest(BaseModel):
    project_ids: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        min_length=1, max_length=100, description="the tenants (projects) that may train from it"
    )


def owned_checkpoint(
    checkpoint: str, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> checkpoints.Checkpoint:
    """The caller's checkpoint named in the path; another tenant's answers as a missing one, before the
    body is read."""
    found = checkpoints.find(session, settings.home, checkpoint)
    if found is None or found.job.tenant_id != tenant.id:
        raise not_found("fine-tuned model checkpoint", checkpoint)
    return found


OwnedCheckpoint = Annotated[checkpoints.Checkpoint, Depends(owned_checkpoint)]


@router.post("/{checkpoint:path}/permissions", response_model=PermissionList)
def create_permissions(
    found: OwnedCheckpoint, body: PermissionRequest, tenant: TenantDep, session: SessionDep
) -> PermissionList:
    if tenant.id in body.project_ids:
        raise APIError(
            400, "invalid_project", "A checkpoint's owner can always train from it.", param="project_ids"
        )
    try:
        granted = checkpoints.grant(session, checkpoint=found, tenant_ids=body.project_ids)
    except checkpoints.UnknownTenants as exc:
        raise APIError(400, "invalid_project", f"{str(exc).capitalize()}.", param="project_ids") from None
    return PermissionList.of(granted)


@router.get("/{checkpoint:path}/permissions", response_model=PermissionList)
def list_permissions(
    found: OwnedCheckpoint,
    session: SessionDep,
    project_id: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    order: Literal["ascending", "descending"] = "descending",
) -> PermissionList:
    query = select(CheckpointPermission).where(CheckpointPermission.checkpoint == found.name)
    if project_id:
        query = query.where(CheckpointPermission.tenant_id == project_id)
    ascending = order == "ascending"
    key = tuple_(CheckpointPermission.created_at, CheckpointPermission.id)
    if after:
        anchor = session.get(CheckpointPermission, after)
        if anchor is None or anchor.checkpoint != found.name:
            raise APIError(
                400, "invalid_request", f"'{after}' is not a permission of this checkpoint.", param="after"
            )
        anchor_key = tuple_(anchor.created_at, anchor.id)
        query = query.where(key > anchor_key if ascending else key < anchor_key)
    ordering = (
        (CheckpointPermission.created_at, CheckpointPermission.id)
        if ascending
        else (CheckpointPermission.created_at.desc(), CheckpointPermission.id.desc())
    )
    rows = list(session.scalars(query.order_by(*ordering).limit(limit + 1)))
    return PermissionList.of(rows[:limit], has_more=len(rows) > limit)


@router.delete("/{checkpoint:path}/permissions/{permission_id}", response_model=PermissionDeleted)
def delete_permission(found: OwnedCheckpoint, permission_id: str, session: SessionDep) -> PermissionDeleted:
    if not checkpoints.revoke(session, name=found.name, permission_id=permission_id):
        raise not_found("checkpoint permission", permission_id)
    return PermissionDeleted(id=permission_id)
