"""Tenants and their API keys: keys are random, shown once, and stored as sha256 digests."""

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import ApiKey, Tenant

KEY_PREFIX = "vk-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant: Tenant) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant=tenant, key_hash=hash_key(key), prefix=key[:10]))
    return key


def create_tenant(session: Session, name: str) -> tuple[Tenant, str]:
    """A new tenant and its first key (the only time the key is readable)."""
    if session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise ValueError(f"a tenant named {name!r} exists already")
    tenant = Tenant(name=name)
    session.add(tenant)
    key = create_key(session, tenant)
    session.commit()
    return tenant, key


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    """The active tenant a live key belongs to (one query: every request asks)."""
    return session.scalar(
        select(Tenant)
        .join(ApiKey)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None), Tenant.active)
    )
