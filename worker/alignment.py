"""Align a registered base model (an operator's job), recording progress and an alignment report.

The report measures the aligned base before any user fine-tuning: harmful score on the policy's
evaluation prompts, and over-refusal on harmless prompts (alignment on refusals alone teaches a model
to refuse everything, so both numbers matter).
"""

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import jobs
from service.db import get_engine
from service.models import ADOPT, BaseModelRecord, BaseStatus, Job, JobStatus, now
from service.policy import get_policy
from service.settings import ServiceSettings, get_service_settings
from vaccine_core.align import align
from vaccine_core.artifacts import alignment_manifest
from vaccine_core.config import PerturbationConfig, alignment_defaults
from vaccine_core.defenses import BoosterConfig, StepDefenses
from vaccine_core.defenses.data import booster_pairs
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import alignment_rows, write_rows
from vaccine_core.training import Progress, ProgressCallback
from worker.safety import ReportPlan, measure_safety

log = logging.getLogger(__name__)


def alignment_mix(settings: ServiceSettings, pairs: int, target: Path) -> Path:
    """Half safety pairs (harmful request, safe answer), half helpful Alpaca pairs, seeded."""
    write_rows(target, alignment_rows(settings.data_dir, pairs // 2, pairs - pairs // 2))
    return target


def alignment_report(run_dir: Path, settings: ServiceSettings, plan: ReportPlan) -> dict[str, Any]:
    return measure_safety(load_for_inference(run_dir), settings, plan)


def align_base(
    base_id: str,
    on_progress: ProgressCallback | None = None,
    dispatch: Callable[[str], None] | None = None,
) -> str:
    """Align ``base_id`` as its record says (idempotent: a ready base is left alone); return its status.
    Then ``dispatch`` the jobs queued on it meanwhile (or fail them, when alignment failed)."""
    settings = get_service_settings()
    sessions = sessionmaker(get_engine(), expire_on_commit=False)
    with sessions() as session:
        record = session.get(BaseModelRecord, base_id)
        if record is None or record.status == BaseStatus.READY:
            return "missing" if record is None else record.status
        record.status, record.error = BaseStatus.ALIGNING, None
        plan = dict(record.alignment or {})
        report_plan = ReportPlan.of(get_policy(session), settings)
        session.commit()
    adopted = plan.get("method") == ADOPT
    out = Path(record.source) if adopted else settings.home / "bases" / base_id
    if adopted:
        data = Path(alignment_manifest(out)["data"]["path"])
    elif plan.get("data"):
        data = Path(plan["data"])
    else:
        data = alignment_mix(settings, plan.get("pairs", 64), out.with_suffix(".jsonl"))

    def progress(p: Progress) -> None:
        with sessions() as session:
            session.get(BaseModelRecord, base_id).progress = {
                "step": p.step,
                "total_steps": p.total_steps,
                "train_loss": p.loss,
                "eta_seconds": round(p.eta_seconds, 1),
            }
            session.commit()
        if on_progress is not None:
            on_progress(p)

    try:
        if not adopted:
            perturbation = PerturbationConfig(plan.get("method", "vaccine"), rho=plan.get("rho", 2.0))
            config = replace(alignment_defaults(), epochs=float(plan.get("epochs", 1.0)))
            defenses = None
            if plan.get("booster"):
                booster = BoosterConfig(**plan["booster"])
                defenses = StepDefenses(booster=booster, booster_rows=booster_pairs(settings.data_dir))
            align(
                record.source,
                data,
                out,
                perturbation,
                config,
                resume=True,
                on_progress=progress,
                defenses=defenses,
            )
        log.info("measuring %s with protocol v2 on %d harmful prompts", base_id, report_plan.harmful)
        report = alignment_report(out, settings, report_plan)
    except Exception as exc:
        log.exception("aligning %s failed", base_id)
        with sessions() as session:
            row = session.get(BaseModelRecord, base_id)
            row.status, row.error = BaseStatus.FAILED, str(exc)
            session.commit()
            for job in waiting_jobs(session, base_id):
                jobs.fail(
                    session,
                    job_id=job.id,
                    code="model_not_available",
                    message=f"Aligning {base_id} failed: {exc}",
                    event=f"The base {base_id} failed to align",
                )
        return BaseStatus.FAILED
    with sessions() as session:
        row = session.get(BaseModelRecord, base_id)
        row.status, row.path, row.report = BaseStatus.READY, str(out), report
        row.alignment = {**plan, "data": str(data)}
        waiting = []
        for job in waiting_jobs(session, base_id):
            job.dispatched_at = now()
            waiting.append(job.id)
        session.commit()
    for job_id in waiting:
        (dispatch or (lambda _job: None))(job_id)
    return BaseStatus.READY


def waiting_jobs(session: Session, base_id: str) -> list[Job]:
    """Jobs queued on a base while it was aligning."""
    return list(session.scalars(select(Job).where(Job.model == base_id, Job.status == JobStatus.QUEUED)))
