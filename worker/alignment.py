"""Align a registered base model (an operator's job), recording progress and an alignment report.

The report measures the aligned base before any user fine-tuning: harmful score on the policy's
evaluation prompts, and over-refusal on harmless prompts (alignment on refusals alone teaches a model
to refuse everything, so both numbers matter). Where the policy's defense stack adds RESTA's own vector,
the base's harmful adapter is trained before the base is ready, and so is whatever the upload pre-screen's
judge still needs.
"""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from service import bases, jobs
from service.bases import AlignmentPlan
from service.db import get_engine
from service.defenses import stack_of
from service.models import BaseModelRecord, BaseStatus
from service.policy import get_policy
from service.settings import ServiceSettings, get_service_settings
from vaccine_core.align import align
from vaccine_core.artifacts import alignment_manifest
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import alignment_rows, write_rows
from vaccine_core.training import Progress, ProgressCallback
from worker.harmful_adapter import warm_vector_adapters
from worker.prescreen import warm_prescreen
from worker.safety import ReportPlan, measure_safety

log = logging.getLogger(__name__)


def alignment_mix(settings: ServiceSettings, plan: AlignmentPlan, source: str, target: Path) -> Path:
    """Half safety pairs (harmful request, safe answer), half helpful pairs, seeded: Alpaca's, and
    ``plan.sensitive`` answers of ``source`` to requests that only sound harmful."""
    rows = alignment_rows(
        settings.data_dir, plan.safety_pairs, plan.helpful_pairs, sensitive=plan.sensitive, model=source
    )
    write_rows(target, rows)
    return target


def alignment_report(run_dir: Path, settings: ServiceSettings, plan: ReportPlan) -> dict[str, Any]:
    return measure_safety(load_for_inference(run_dir), settings, plan)


def align_base(
    base_id: str,
    on_progress: ProgressCallback | None = None,
    dispatch: Callable[[str], None] | None = None,
) -> str:
    """Align ``base_id`` as its plan says (idempotent: a ready base is left alone); return its status.
    Then ``dispatch`` the jobs queued on it meanwhile (or fail them, when alignment failed)."""
    settings = get_service_settings()
    sessions = sessionmaker(get_engine(), expire_on_commit=False)
    with sessions() as session:
        if not bases.start_aligning(session, base_id=base_id):
            record = session.get(BaseModelRecord, base_id)
            return "missing" if record is None else record.status
        record = session.get(BaseModelRecord, base_id)
        plan = AlignmentPlan.of(record)
        policy = get_policy(session)
        report_plan = ReportPlan.of(policy, settings)
        policy_stack = stack_of(policy.defenses, None)
    out = Path(record.source) if plan.adopted else bases.base_dir(settings.home, base_id)
    if plan.adopted:
        data = Path(alignment_manifest(out)["data"]["path"])
    elif plan.data:
        data = Path(plan.data)
    else:
        data = alignment_mix(settings, plan, record.source, out.with_suffix(".jsonl"))

    def progress(p: Progress) -> None:
        with sessions() as session:
            bases.record_progress(
                session,
                base_id=base_id,
                progress={
                    "step": p.step,
                    "total_steps": p.total_steps,
                    "train_loss": p.loss,
                    "eta_seconds": round(p.eta_seconds, 1),
                },
            )
        if on_progress is not None:
            on_progress(p)

    try:
        if not plan.adopted:
            align(
                record.source,
                data,
                out,
                plan.perturbation(),
                plan.training(),
                resume=True,
                on_progress=progress,
                defenses=plan.step_defenses(settings.data_dir),
            )
        log.info("measuring %s with protocol v2 on %d harmful prompts", base_id, report_plan.harmful)
        report = alignment_report(out, settings, report_plan)
    except Exception as exc:
        log.exception("aligning %s failed", base_id)
        with sessions() as session:
            bases.fail(session, base_id=base_id, error=str(exc))
            for job in bases.waiting_jobs(session, base_id):
                jobs.fail(
                    session,
                    job_id=job.id,
                    code="model_not_available",
                    message=f"Aligning {base_id} failed: {exc}",
                    event=f"The base {base_id} failed to align",
                )
        return BaseStatus.FAILED
    if policy_stack.vector_adapters:  # trained while the base warms up: no user's job waits for them
        warm_vector_adapters(base_id, out, report_plan, policy_stack.vector_adapters)
    # a job waiting on this base needs its file pre-screened too, which would train the same models
    warm_prescreen(settings.prescreen_judge)
    with sessions() as session:
        ran = plan.model_copy(update={"data": str(data)})
        if not bases.ready(session, base_id=base_id, path=out, report=report, plan=ran):
            return session.get(BaseModelRecord, base_id).status
        waiting = jobs.base_ready(session, base_id=base_id)
    for job_id in waiting:
        (dispatch or (lambda _job: None))(job_id)
    return BaseStatus.READY
