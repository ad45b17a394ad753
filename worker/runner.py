"""Run one fine-tuning job to the end, recording its state, progress and events in the database.

Idempotent by job id: a job that already ended is left alone, and a job that was interrupted (its worker
died) resumes from its newest checkpoint. Cancellation is read from the database between steps.
"""

import logging
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from api.db import get_engine
from api.models import BaseModelRecord, File, Job, add_event, now
from api.settings import get_service_settings
from vaccine_core.config import TrainingConfig, finetune_defaults
from vaccine_core.finetune import finetune
from vaccine_core.training import Progress

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
CHECKPOINT_EVERY = 10


def training_config(job: Job) -> TrainingConfig:
    """OpenAI's hyperparameters (n_epochs, batch_size, learning_rate_multiplier) over our defaults."""
    defaults = finetune_defaults()
    given: dict[str, Any] = job.hyperparameters or {}
    updates: dict[str, Any] = {"seed": job.seed, "checkpoint_every": CHECKPOINT_EVERY}
    if isinstance(given.get("n_epochs"), int | float):
        updates["epochs"] = float(given["n_epochs"])
    if isinstance(given.get("batch_size"), int):
        updates["batch_size"] = given["batch_size"]
    if isinstance(given.get("learning_rate_multiplier"), int | float):
        updates["learning_rate"] = defaults.learning_rate * float(given["learning_rate_multiplier"])
    return replace(defaults, **updates)


def run_job(job_id: str) -> str:
    """Run ``job_id``; return its final status."""
    sessions = sessionmaker(get_engine(), expire_on_commit=False)
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist", job_id)
            return "missing"
        if job.status in TERMINAL:
            return job.status
        base = session.get(BaseModelRecord, job.model)
        training_file = session.get(File, job.training_file)
        resumed = job.attempts > 0
        job.status, job.attempts, job.worker = "running", job.attempts + 1, socket.gethostname()
        job.started_at = job.started_at or now()
        job.heartbeat_at = now()
        add_event(session, job_id, "Resumed after an interruption" if resumed else "Fine-tuning job started")
        session.commit()
        config = training_config(job)

    output_dir = get_service_settings().home / "jobs" / job_id

    def on_progress(progress: Progress) -> None:
        data = {
            "step": progress.step,
            "total_steps": progress.total_steps,
            "train_loss": progress.loss,
            "learning_rate": progress.learning_rate,
            "percent": round(100 * progress.step / progress.total_steps, 1),
            "eta_seconds": round(progress.eta_seconds, 1),
        }
        with sessions() as session:
            row = session.get(Job, job_id)
            row.progress, row.heartbeat_at = data, now()
            add_event(
                session,
                job_id,
                f"Step {progress.step}/{progress.total_steps}: loss {progress.loss:.4f}",
                data,
            )
            session.commit()

    def cancelled() -> bool:
        with sessions() as session:
            return session.get(Job, job_id).status == "cancelled"

    try:
        if base is None or base.status != "ready" or base.path is None:
            raise RuntimeError(f"base model {job.model} is not ready")
        result = finetune(
            Path(base.path),
            Path(training_file.path),
            output_dir,
            config,
            resume=True,
            on_progress=on_progress,
            should_stop=cancelled,
        )
    except Exception as exc:  # every job ends in a state a user can read
        log.exception("job %s failed", job_id)
        with sessions() as session:
            row = session.get(Job, job_id)
            row.status, row.finished_at = "failed", now()
            row.error = {"code": "training_failed", "message": str(exc), "param": None}
            add_event(session, job_id, f"Fine-tuning failed: {exc}", level="error")
            session.commit()
        return "failed"

    with sessions() as session:
        row = session.get(Job, job_id)
        row.finished_at = now()
        if result.manifest is None:
            row.status = "cancelled"
            add_event(session, job_id, f"Cancelled at step {result.train.steps}")
        else:
            row.status = "succeeded"
            row.trained_tokens = result.train.tokens
            row.fine_tuned_model = f"ft:{row.model}:{row.suffix or 'custom'}:{row.id}"
            add_event(session, job_id, "The job has successfully completed", {"output_dir": str(output_dir)})
        session.commit()
        return row.status
