"""Tenants and keys: create (the key is shown once), list, revoke a key, set quotas."""

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import SessionDep
from api.errors import APIError, found, not_found
from service.defenses import DefenseStack
from service.models import ApiKey, AuditEntry, Tenant, epoch, now
from service.tenants import create_key, create_tenant

router = APIRouter(prefix="/tenants")


class NewTenant(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Quotas(BaseModel):
    max_concurrent_jobs: int | None = Field(default=None, ge=0)
    max_storage_bytes: int | None = Field(default=None, ge=0)


def _tenant(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "active": t.active,
        "max_concurrent_jobs": t.max_concurrent_jobs,
        "max_storage_bytes": t.max_storage_bytes,
        "defenses": t.defenses,  # None: the policy's stack
        "created_at": epoch(t.created_at),
        "keys": [
            {
                "id": k.id,
                "prefix": k.prefix,
                "revoked": k.revoked_at is not None,
                "created_at": epoch(k.created_at),
            }
            for k in t.keys
        ],
    }


def audit(session: SessionDep, action: str, target: str, details: dict | None = None) -> None:
    session.add(AuditEntry(actor="operator", action=action, target=target, details=details))


@router.post("")
def create(body: NewTenant, session: SessionDep) -> dict[str, Any]:
    try:
        tenant, key = create_tenant(session, body.name)
    except ValueError as exc:
        raise APIError(409, "tenant_exists", str(exc), param="name") from None
    audit(session, "tenant.create", tenant.id)
    session.commit()
    return {**_tenant(tenant), "api_key": key}


@router.get("")
def list_tenants(session: SessionDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [_tenant(t) for t in session.scalars(select(Tenant).order_by(Tenant.name))],
    }


@router.post("/{tenant_id}/keys")
def new_key(tenant_id: str, session: SessionDep) -> dict[str, Any]:
    tenant = found(session.get(Tenant, tenant_id), "tenant", tenant_id)
    key = create_key(session, tenant)
    audit(session, "key.create", tenant_id)
    session.commit()
    return {"tenant_id": tenant_id, "api_key": key}


@router.post("/{tenant_id}/keys/{key_id}/revoke")
def revoke_key(tenant_id: str, key_id: str, session: SessionDep) -> dict[str, Any]:
    key = session.get(ApiKey, key_id)
    if key is None or key.tenant_id != tenant_id:
        raise not_found("key", key_id)
    key.revoked_at = key.revoked_at or now()
    audit(session, "key.revoke", key_id, {"tenant_id": tenant_id})
    session.commit()
    return {"id": key_id, "revoked": True}


@router.put("/{tenant_id}/defenses")
def set_defenses(tenant_id: str, body: DefenseStack, session: SessionDep) -> dict[str, Any]:
    """The tenant's own defense stack, in place of the policy's."""
    tenant = found(session.get(Tenant, tenant_id), "tenant", tenant_id)
    tenant.defenses = body.model_dump()
    audit(session, "tenant.defenses", tenant_id, tenant.defenses)
    session.commit()
    return _tenant(tenant)


@router.delete("/{tenant_id}/defenses")
def clear_defenses(tenant_id: str, session: SessionDep) -> dict[str, Any]:
    """Back to the policy's stack."""
    tenant = found(session.get(Tenant, tenant_id), "tenant", tenant_id)
    tenant.defenses = None
    audit(session, "tenant.defenses", tenant_id, None)
    session.commit()
    return _tenant(tenant)


@router.patch("/{tenant_id}")
def set_quotas(tenant_id: str, body: Quotas, session: SessionDep) -> dict[str, Any]:
    tenant = found(session.get(Tenant, tenant_id), "tenant", tenant_id)
    changes = body.model_dump(exclude_none=True)
    for field, value in changes.items():
        setattr(tenant, field, value)
    audit(session, "tenant.quotas", tenant_id, changes)
    session.commit()
    return _tenant(tenant)
