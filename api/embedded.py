"""What the embedded default needs before it serves: a migrated database, its base registered, a demo key."""

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import bases
from service.bases import AlignmentPlan, BoosterPlan
from service.db import get_engine
from service.models import ADOPT, BaseModelRecord, Tenant
from service.settings import ServiceSettings
from service.tenants import create_key, create_tenant
from vaccine_core.artifacts import alignment_manifest

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"


def register_default_base(settings: ServiceSettings) -> BaseModelRecord:
    """The default base's record, created on first start with its alignment plan (the shipped method on
    a mix of safety and helpful pairs), or, when ``default_base_source`` is an alignment run directory,
    that run to adopt as it is. Aligning it is a worker's task: nothing here trains, so the API answers
    at once."""
    with Session(get_engine(), expire_on_commit=False) as session:
        record = session.get(BaseModelRecord, settings.default_base_name)
        if record is not None:
            return record
        source = settings.default_base_source
        try:
            alignment_manifest(Path(source))
            plan = AlignmentPlan(method=ADOPT)
        except ValueError:
            plan = AlignmentPlan(
                pairs=settings.default_alignment_pairs,
                epochs=settings.default_alignment_epochs,
                booster=BoosterPlan() if settings.default_alignment_booster else None,
            )
        return bases.register(session, name=settings.default_base_name, source=source, plan=plan)


def demo_key() -> str:
    """A fresh key for the demo tenant (created on first start). Keys are stored hashed: print it now."""
    with Session(get_engine()) as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == DEMO_TENANT))
        if tenant is None:
            return create_tenant(session, DEMO_TENANT)[1]
        key = create_key(session, tenant)
        session.commit()
        return key
