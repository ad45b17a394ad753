"""Request dependencies: a database session, the calling tenant, the operator."""

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.errors import APIError
from service.db import get_engine
from service.models import Tenant
from service.operator import seconds_locked_out, try_operator_key
from service.rate_limit import seconds_to_wait
from service.settings import ServiceSettings, get_service_settings
from service.tenants import hash_key, tenant_for_key

# Per event loop: an asyncio semaphore belongs to the loop it first waits on, and tests run several.
_admissions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = (
    weakref.WeakKeyDictionary()
)


def _admission() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _admissions:
        settings = get_service_settings()
        # one connection is left for the middleware's sessions, which open on the event loop itself
        _admissions[loop] = asyncio.Semaphore(
            max(1, settings.database_pool_size + settings.database_max_overflow - 1)
        )
    return _admissions[loop]


async def get_session() -> AsyncIterator[Session]:
    """A route's session, admitted only while the pool has a connection for it (the rest wait here, on the
    event loop) and closed once the route's answer is built, before its body is sent. A request holds its
    connection across thread hops (the route, then the serialisation of its answer): without admission,
    every pool thread ends up waiting for a connection while every connection's request waits for a
    thread, and nothing moves until the pool's 30 s timeout (200 pollers did exactly that with 40 threads
    and 15 connections)."""
    async with _admission():
        session = Session(get_engine(), expire_on_commit=False)
        try:
            yield session
        finally:
            # in a pool thread: giving a connection back talks to the database (a rollback) and must never
            # stall the event loop; an admitted request never waits there for a connection, so threads
            # always come free. Shielded, so that a client who hangs up still gets its connection closed.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close)


async def get_settings() -> ServiceSettings:
    return get_service_settings()  # cached: not worth a trip to the thread pool


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "invalid_api_key", "Send an API key as 'Authorization: Bearer <key>'.")
    return token.strip()


def authenticate(session: Session, settings: ServiceSettings, authorization: str | None) -> Tenant:
    """The tenant whose key the ``Authorization`` header carries, within its rate limit: 401 or 429
    otherwise."""
    key = _bearer(authorization)
    tenant = tenant_for_key(session, key)
    if tenant is None:
        raise APIError(401, "invalid_api_key", "Unknown or revoked API key.")
    wait = seconds_to_wait(hash_key(key), settings.rate_limit, settings.rate_limit_storage)
    if wait is not None:
        raise APIError(
            429,
            "rate_limit_exceeded",
            f"More than {settings.rate_limit} requests with this key; try again in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
    return tenant


def current_tenant(
    session: SessionDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
    return authenticate(session, settings, authorization)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def require_operator(
    request: Request, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    client = client_address(request)
    if (wait := seconds_locked_out(settings, client)) is not None:
        raise APIError(
            429,
            "too_many_failed_attempts",
            f"Too many wrong operator keys from this address; try again in {wait} s.",
            headers={"Retry-After": str(wait)},
        )
    if not try_operator_key(settings, _bearer(authorization), client):
        raise APIError(403, "forbidden", "This route needs the operator key.")


TenantDep = Annotated[Tenant, Depends(current_tenant)]
OperatorDep = Depends(require_operator)
