"""Request dependencies: a database session, the calling tenant, the operator."""

from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from api.errors import APIError
from service.db import get_session
from service.models import Tenant
from service.operator import is_operator_key
from service.rate_limit import seconds_to_wait
from service.settings import ServiceSettings, get_service_settings
from service.tenants import hash_key, tenant_for_key

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[ServiceSettings, Depends(get_service_settings)]


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "invalid_api_key", "Send an API key as 'Authorization: Bearer <key>'.")
    return token.strip()


def current_tenant(
    session: SessionDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Tenant:
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


def require_operator(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    if not is_operator_key(settings, _bearer(authorization)):
        raise APIError(403, "forbidden", "This route needs the operator key.")


TenantDep = Annotated[Tenant, Depends(current_tenant)]
OperatorDep = Depends(require_operator)
