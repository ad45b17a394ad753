"""What the embedded default needs before it serves: a migrated database, an aligned base, a demo key."""

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import get_engine
from api.models import ADOPT, BaseModelRecord, BaseStatus, Tenant
from api.settings import ServiceSettings
from api.tenants import create_key, create_tenant
from vaccine_core.artifacts import alignment_manifest
from vaccine_core.defenses import BoosterConfig
from vaccine_core.progress import ProgressBar
from worker.alignment import align_base

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
RHO = 2.0


def ensure_default_base(settings: ServiceSettings) -> BaseModelRecord:
    """The default base, aligned with Vaccine once (minutes on 2 CPU cores) and registered; or, when
    ``default_base_source`` is an alignment run directory, that run adopted as it is."""
    with Session(get_engine(), expire_on_commit=False) as session:
        record = session.get(BaseModelRecord, settings.default_base_name)
        if record is None:
            source = settings.default_base_source
            try:
                alignment_manifest(Path(source))
                plan: dict = {"method": ADOPT}
            except ValueError:
                plan = {
                    "method": "vaccine",
                    "rho": RHO,
                    "pairs": settings.default_alignment_pairs,
                    "epochs": settings.default_alignment_epochs,
                    "booster": BoosterConfig().to_dict() if settings.default_alignment_booster else None,
                }
            record = BaseModelRecord(id=settings.default_base_name, source=source, alignment=plan)
            session.add(record)
            session.commit()
    if record.status != BaseStatus.READY:
        if record.alignment["method"] == ADOPT:
            log.info("adopting the alignment run %s; measuring its alignment report", record.source)
        else:
            log.info(
                "aligning %s with Vaccine (rho=%s) on first start; later starts reuse it", record.source, RHO
            )
        bar = ProgressBar(f"aligning {record.id}")
        try:
            status = align_base(record.id, on_progress=bar)
        finally:
            bar.close()
        if status != BaseStatus.READY:
            raise RuntimeError(f"aligning the default base failed ({status}); see the log above")
    with Session(get_engine(), expire_on_commit=False) as session:
        return session.get(BaseModelRecord, settings.default_base_name)


def demo_key() -> str:
    """A fresh key for the demo tenant (created on first start). Keys are stored hashed: print it now."""
    with Session(get_engine()) as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == DEMO_TENANT))
        if tenant is None:
            return create_tenant(session, DEMO_TENANT)[1]
        key = create_key(session, tenant)
        session.commit()
        return key
