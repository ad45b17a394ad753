"""What the embedded default needs before it serves: a migrated database, an aligned base, a demo key."""

import json
import logging
import random
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import get_engine
from api.models import BaseModelRecord, Tenant
from api.settings import ServiceSettings
from api.tenants import create_key, create_tenant
from vaccine_core.align import align
from vaccine_core.config import PerturbationConfig, alignment_defaults
from vaccine_core.mixing import read_jsonl
from vaccine_core.progress import ProgressBar

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
RHO = 2.0


def alignment_mix(settings: ServiceSettings, target: Path) -> Path:
    """Half safety pairs (harmful request, safe answer), half helpful Alpaca pairs, seeded."""
    rng = random.Random(0)
    half = settings.default_alignment_pairs // 2
    safety = rng.sample(read_jsonl(settings.data_dir / "alignment/safe_refusals.jsonl"), half)
    helpful = rng.sample(
        read_jsonl(settings.data_dir / "benign/alpaca_demo.jsonl"), settings.default_alignment_pairs - half
    )
    rows = safety + helpful
    rng.shuffle(rows)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return target


def ensure_default_base(settings: ServiceSettings) -> BaseModelRecord:
    """The default base, aligned with Vaccine once (minutes on 2 CPU cores) and registered."""
    with Session(get_engine(), expire_on_commit=False) as session:
        record = session.get(BaseModelRecord, settings.default_base_name)
        if record is not None and record.status == "ready":
            return record
        if record is None:
            record = BaseModelRecord(id=settings.default_base_name, source=settings.default_base_source)
            session.add(record)
        record.status = "aligning"
        session.commit()
        log.info(
            "aligning %s with Vaccine (rho=%s) on first start; later starts reuse it", record.source, RHO
        )
        data = alignment_mix(settings, settings.home / "bases" / f"{record.id}-alignment.jsonl")
        out = settings.home / "bases" / record.id
        bar = ProgressBar(f"aligning {record.id}")
        try:
            align(
                record.source,
                data,
                out,
                PerturbationConfig("vaccine", rho=RHO),
                alignment_defaults(),
                on_progress=bar,
                resume=True,
            )
        except Exception:
            record.status = "failed"
            session.commit()
            raise
        finally:
            bar.close()
        record.status, record.path = "ready", str(out)
        record.alignment = {
            "method": "vaccine",
            "rho": RHO,
            "data": str(data),
            "pairs": settings.default_alignment_pairs,
        }
        session.commit()
        return record


def demo_key() -> str:
    """A fresh key for the demo tenant (created on first start). Keys are stored hashed: print it now."""
    with Session(get_engine()) as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == DEMO_TENANT))
        if tenant is None:
            return create_tenant(session, DEMO_TENANT)[1]
        key = create_key(session, tenant)
        session.commit()
        return key
