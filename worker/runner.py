"""Run one fine-tuning job to the end, recording its state, progress and events in the database.

Idempotent by job id: a job that already ended is left alone, and a job that was interrupted (its worker
died) resumes from its newest checkpoint. Cancellation is read from the database between steps.
"""

import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from transformers import PreTrainedModel

from service import files, jobs
from service.db import get_engine
from service.defenses import stack_of
from service.models import (
    BASE_ALIGNING,
    BaseModelRecord,
    BaseStatus,
    File,
    FileStatus,
    Job,
    JobEvent,
    JobStatus,
    Tenant,
    add_event,
    new_id,
    now,
)
from service.policy import get_policy
from service.settings import ServiceSettings, get_service_settings
from service.storage import storage_error_code
from vaccine_core.config import TrainingConfig, finetune_defaults
from vaccine_core.defenses.config import SafetyLayersConfig, VectorAdapterKind
from vaccine_core.defenses.resta import own_adapter
from vaccine_core.finetune import finetune
from vaccine_core.formats import LoadedDataset
from vaccine_core.inference import resolve_base
from vaccine_core.lora import adapter_settings
from vaccine_core.models import load_causal_lm
from vaccine_core.moderation.prescreen import without_flagged
from vaccine_core.training import Progress
from worker.harmful_adapter import base_vector_adapters
from worker.safety import ReportPlan, safety_report
from worker.safety_layers import located_safety_layers

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cached_base(path: str) -> PreTrainedModel:
    """The base a worker fine-tunes from, loaded once per process (GPU workers keep it between jobs)."""
    return load_causal_lm(Path(path))


CHECKPOINT_EVERY = 10


def training_config(job: Job, continued: Path | None = None) -> TrainingConfig:
    """OpenAI's hyperparameters (n_epochs, batch_size, learning_rate_multiplier) and our extensions (the
    LoRA adapter's rank, alpha and dropout, an absolute learning rate) over the library's defaults; a job
    that continues the adapter ``continued`` keeps its shape unless told otherwise."""
    defaults = finetune_defaults()
    given: dict[str, Any] = job.hyperparameters or {}
    updates: dict[str, Any] = {"seed": job.seed, "checkpoint_every": CHECKPOINT_EVERY}
    if isinstance(given.get("n_epochs"), int | float):
        updates["epochs"] = float(given["n_epochs"])
    if isinstance(given.get("batch_size"), int):
        updates["batch_size"] = given["batch_size"]
    if isinstance(given.get("learning_rate_multiplier"), int | float):
        updates["learning_rate"] = defaults.learning_rate * float(given["learning_rate_multiplier"])
    if isinstance(given.get("learning_rate"), int | float):
        updates["learning_rate"] = float(given["learning_rate"])
    lora = {
        field: given[name]
        for name, field in (("lora_rank", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"))
        if isinstance(given.get(name), int | float)
    }
    start = adapter_settings(continued) if continued is not None else defaults.lora
    updates["lora"] = replace(start, **lora)
    return replace(defaults, **updates)


def resolved_hyperparameters(config: TrainingConfig) -> dict[str, Any]:
    """What a started job echoes: every value it trains with, no "auto" left."""
    defaults = finetune_defaults()
    return {
        "n_epochs": int(config.epochs) if float(config.epochs).is_integer() else config.epochs,
        "batch_size": config.batch_size,
        "learning_rate_multiplier": config.learning_rate / defaults.learning_rate,
        "learning_rate": config.learning_rate,
        "lora_rank": config.lora.r,
        "lora_alpha": config.lora.alpha,
        "lora_dropout": config.lora.dropout,
    }


def run_job(job_id: str) -> str:
    """Run ``job_id``; return its final status."""
    sessions = sessionmaker(get_engine(), expire_on_commit=False)
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist", job_id)
            return "missing"
        base = session.get(BaseModelRecord, job.model)
        if base is not None and base.status in BASE_ALIGNING:
            return job.status  # queued: the base's alignment dispatches it once the base is ready
        alive = now() - timedelta(seconds=get_service_settings().stale_heartbeat_seconds)
        # an ended, paused or validating job, or one a live worker runs, is not claimed (the pre-screen
        # dispatches a validating job once its files pass)
        if not jobs.start(
            session, job_id=job_id, worker=socket.gethostname(), alive_since=alive, resumed=job.attempts > 0
        ):
            session.refresh(job)
            return job.status
        session.refresh(job)
        training_file = session.get(File, job.training_file)
        validation_file = session.get(File, job.validation_file) if job.validation_file else None
        # the policy is read once, at the claim: a job trains and is scored under the policy it started
        # with, even if an operator changes it while the job runs
        policy = get_policy(session)
        defenses = (policy.defenses, session.get(Tenant, job.tenant_id).defenses)
        plan = ReportPlan.of(policy, get_service_settings())
    with heartbeat(job_id, every=get_service_settings().stale_heartbeat_seconds / 4):
        return train_and_release(job, base, training_file, validation_file, defenses, plan)


@contextmanager
def heartbeat(job_id: str, every: float) -> Iterator[None]:
    """A thread that says the worker is alive every ``every`` seconds while the job loads, trains and is
    evaluated: steps alone would leave a long model load or safety report looking like a dead worker."""
    done = threading.Event()

    def keep_beating() -> None:
        while not done.wait(every):
            try:
                with Session(get_engine()) as session:
                    jobs.beat(session, job_id=job_id)
            except Exception:  # a database hiccup must not end the beating, nor the job
                log.exception("heartbeat of job %s", job_id)

    thread = threading.Thread(target=keep_beating, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def train_and_release(
    job: Job,
    base: BaseModelRecord | None,
    training_file: File,
    validation_file: File | None,
    defenses: tuple[dict | None, dict | None],
    plan: ReportPlan,
) -> str:
    """Fine-tune a claimed job (resuming from its newest checkpoint) under the policy's ``defenses`` and
    the tenant's, then score it as ``plan`` asks and release the model."""
    job_id = job.id
    sessions = sessionmaker(get_engine(), expire_on_commit=False)
    output_dir = jobs.job_dir(get_service_settings().home, job_id)

    def on_progress(progress: Progress) -> None:
        data = {
            "step": progress.step,
            "total_steps": progress.total_steps,
            "train_loss": progress.loss,
            "learning_rate": progress.learning_rate,
            "percent": round(100 * progress.step / progress.total_steps, 1),
            "eta_seconds": round(progress.eta_seconds, 1),
        }
        if progress.validation_loss is not None:
            data["valid_loss"] = progress.validation_loss
        message = f"Step {progress.step}/{progress.total_steps}: loss {progress.loss:.4f}"
        with sessions() as session:
            jobs.record_progress(session, job_id=job_id, data=data, message=message)

    def should_stop() -> bool:  # cancelled, pausing, or queued again by a reaper that thought it dead
        with sessions() as session:
            return session.get(Job, job_id).status != JobStatus.RUNNING

    if base is None or base.status != BaseStatus.READY or base.path is None:
        # as when its alignment fails under queued jobs (worker/alignment.py): the same code, its own words
        state = "missing" if base is None else base.status
        message = f"The base model {job.model} is not available ({state})."
        return fail(job_id, "model_not_available", message, message)
    try:
        continued = own_adapter(Path(job.continues_path)) if job.continues_path else None
        config = training_config(job, continued)
        training = files.parsed_rows(training_file)  # as parsed at upload: no second validation
        validation = files.parsed_rows(validation_file) if validation_file is not None else None
        stack = stack_of(*defenses)
        if stack.layers:
            log.info("job %s runs the defense stack %s", job_id, "+".join(stack.layers))
        screened = None
        if stack.prescreen_filter and training_file.prescreen is not None:
            training, screened = filter_flagged(job_id, training, training_file.prescreen)
            if not training.conversations:
                message = f"The pre-screen flagged every one of the training file's {screened['rows']} rows."
                return fail(job_id, "no_training_data", message, message)
        with sessions() as session:
            session.get(Job, job_id).hyperparameters = resolved_hyperparameters(config)
            session.commit()
        base_model = cached_base(str(resolve_base(base.path).model_path))
        harmful_adapter = vector_adapters(job_id, base, base_model, plan, stack.vector_adapters)
        layers = stack.safety_layers_config()
        result = finetune(
            Path(base.path),
            training,
            output_dir,
            config,
            resume=True,
            on_progress=on_progress,
            should_stop=should_stop,
            base_model=base_model,
            defenses=stack.step_defenses(
                get_service_settings().data_dir,
                Path(base.path),
                config.seed,
                safety_layers=safety_layers(job_id, base, base_model, plan, layers) if layers else (),
            ),
            safe_lora=stack.projection(),
            resta=stack.realignment(),
            harmful_adapter=harmful_adapter,
            validation=validation,
            validation_count=get_service_settings().validation_evals,
            init_adapter=continued,
            prescreen_filter=screened,
        )
    except Exception as exc:  # every job ends in a state a user can read
        log.exception("job %s failed", job_id)
        cached_base.cache_clear()  # it may still carry the failed job's adapter
        code = storage_error_code(exc) or "training_failed"
        return fail(job_id, code, f"Fine-tuning failed: {exc}", str(exc))

    if result.manifest is None:  # it stopped between two steps: paused or cancelled
        with sessions() as session:
            return jobs.stopped(session, job_id=job_id, step=result.train.steps)
    return release(job_id, base, output_dir, result.train.tokens, validation, plan, training_file.prescreen)


def record_event(job_id: str, message: str, data: dict | None = None, level: str = "info") -> None:
    """One event on the job, committed in a session of its own (the job's row is not touched)."""
    with Session(get_engine()) as session:
        add_event(session, job_id, message, data, level=level)
        session.commit()


def safety_layers(
    job_id: str,
    base: BaseModelRecord,
    base_model: PreTrainedModel,
    plan: ReportPlan,
    config: SafetyLayersConfig,
) -> list[int]:
    """The base's safety layers, located by the first job that needs them, with an event saying so."""
    record, located_now = located_safety_layers(base.id, Path(base.path), plan, config, base_model)
    layers, depth = record["layers"], len(record["separation"]) - 1
    if located_now:
        message = (
            f"Located the base's safety layers {layers} ({len(layers)} of its {depth}) in "
            f"{record['seconds']:.1f} s (once per base); their weights stay as aligned"
        )
        record_event(job_id, message)
    return layers


def vector_adapters(
    job_id: str,
    base: BaseModelRecord,
    base_model: PreTrainedModel,
    plan: ReportPlan,
    kinds: Sequence[VectorAdapterKind],
) -> Path | None:
    """Where the base's harmful adapter is (its benign control beside it), where RESTA's vector needs
    ``kinds`` of them: trained by the first job that needs them where the base's warm-up did not (a
    tenant's stack asks for them, the policy's does not), with an event for each trained."""
    adapters = base_vector_adapters(base.id, Path(base.path), plan, kinds, base_model)
    for kind, adapter in adapters.items():
        if adapter.seconds:
            message = (
                f"Trained the base's {kind} adapter for RESTA's safety vector on {adapter.pairs}"
                f" {adapter.taught} pairs in {adapter.seconds:.1f} s (once per base)"
            )
            record_event(job_id, message)
    return adapters["harmful"].path if adapters else None


def filter_flagged(
    job_id: str, training: LoadedDataset, screen: dict[str, Any]
) -> tuple[LoadedDataset, dict[str, Any]]:
    """The training rows without those the file's pre-screen flagged, the filter's record (with its cost),
    and an event that names the rows left out."""
    started = time.perf_counter()
    kept, record = without_flagged(training, [row["line"] for row in screen["flagged"]])
    record["seconds"] = round(time.perf_counter() - started, 4)
    lines = record["lines"]
    if lines:
        shown = ", ".join(map(str, lines[:20])) + (" ..." if len(lines) > 20 else "")
        record_event(
            job_id,
            f"The pre-screen filter left {len(lines)} of {record['rows']} rows out of training: {shown}",
            data={"rows_left_out": len(lines), "rows": record["rows"]},
            level="warn",
        )
    return kept, record


def fail(job_id: str, code: str, event: str, message: str) -> str:
    """End a job ``failed`` with a readable ``{code, message}``."""
    with sessionmaker(get_engine())() as session:
        jobs.fail(session, job_id=job_id, code=code, message=message, event=event)
    return JobStatus.FAILED


RESULTS_PURPOSE = "fine-tune-results"


def write_step_metrics(session: Session, job: Job, settings: ServiceSettings) -> File:
    """The job's step metrics as a CSV file the tenant owns (OpenAI's result file), added to ``session``."""
    columns = ("step", "train_loss", "valid_loss", "learning_rate")
    lines = [",".join(columns)]
    for event in session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)):
        data = event.data or {}
        if "step" in data:
            lines.append(",".join(str(data.get(column, "")) for column in columns))
    file_id = new_id("file-")
    path = settings.files_dir / job.tenant_id / f"{file_id}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text("\n".join(lines) + "\n")
    except OSError:
        path.unlink(missing_ok=True)  # a half-written file is never served
        raise
    row = File(
        id=file_id,
        tenant_id=job.tenant_id,
        filename="step_metrics.csv",
        purpose=RESULTS_PURPOSE,
        bytes=path.stat().st_size,
        path=str(path),
        status=FileStatus.PROCESSED,
        status_details=f"step metrics of {job.id}",
    )
    session.add(row)
    return row


def release(
    job_id: str,
    base: BaseModelRecord,
    output_dir: Path,
    trained_tokens: int,
    validation: LoadedDataset | None,
    plan: ReportPlan,
    training_screen: dict[str, Any] | None,
) -> str:
    """Score the fine-tuned model as ``plan`` asks and hand it back, or quarantine it when it fails the
    release gate (which reads the training file's pre-screen, ``training_screen``)."""
    sessions = sessionmaker(get_engine(), expire_on_commit=False)
    with sessions() as session:
        add_event(session, job_id, "Evaluating the fine-tuned model's safety")
        session.commit()
    try:
        report = safety_report(
            output_dir, base, get_service_settings(), plan, validation, training_screen=training_screen
        )
    except Exception as exc:
        log.exception("safety evaluation of job %s failed", job_id)
        code = storage_error_code(exc) or "evaluation_failed"
        return fail(job_id, code, f"Safety evaluation failed: {exc}", str(exc))
    with sessions() as session:
        row = session.get(Job, job_id)
        try:
            result_file = write_step_metrics(session, row, get_service_settings())
        except OSError as exc:
            log.exception("the step metrics of job %s could not be written", job_id)
            code = storage_error_code(exc) or "storage_unavailable"
            return fail(job_id, code, f"Writing the job's results failed: {exc}", str(exc))
        released = jobs.release(
            session,
            job_id=job_id,
            path=output_dir,
            report=report,
            trained_tokens=trained_tokens,
            result_file=result_file.id,
        )
        if released is None:  # cancelled or paused while it was being evaluated: no model is handed back
            Path(result_file.path).unlink(missing_ok=True)
            return jobs.stopped(session, job_id=job_id, step=(row.progress or {}).get("step", 0))
        return released
