"""Request dependencies: a database session, the calling tenant, the operator."""

import hmac
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from api.errors import APIError
from service.db import get_session
from service.models import Tenant
from service.settings import ServiceSettings, get_service_settings
from service.tenants import tenant_for_key

SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[ServiceSettings, Depends(get_service_settings)]


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "invalid_api_key", "Send an API key as 'Authorization: Bearer <key>'.")
    return token.strip()


def current_tenant(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    tenant = tenant_for_key(session, _bearer(authorization))
    if tenant is None:
        raise APIError(401, "invalid_api_key", "Unknown or revoked API key.")
    return tenant


def require_operator(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    expected = settings.admin_key.get_secret_value() if settings.admin_key else None
    if not expected or not hmac.compare_digest(_bearer(authorization), expected):
        raise APIError(403, "forbidden", "This route needs the operator key.")


TenantDep = Annotated[Tenant, Depends(current_tenant)]
OperatorDep = Depends(require_operator)
