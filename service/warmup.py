"""What a worker is still preparing after a first start: bases not aligned yet and an untrained default
judge, each with its progress. The API takes requests meanwhile (jobs wait in the queue for their base,
uploads for their pre-screen); the readiness probe and the operator's workers view show this."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.models import BASE_ALIGNING, BaseModelRecord
from service.settings import get_service_settings
from vaccine_core.moderation.intent import intent_model_ready, intent_training_progress
from vaccine_core.moderation.judge_config import default_judge_ready, judge_training_progress
from vaccine_core.moderation.registry import DEFAULT_JUDGE, INTENT_GATE_SUFFIX


def untrained(spec: str) -> list[str]:
    """What judge ``spec`` needs that is not trained yet (a worker trains it on first use): the default
    judge ("default") and the pre-screen's intent gate ("intent")."""
    missing = []
    if spec.removesuffix(INTENT_GATE_SUFFIX) == DEFAULT_JUDGE and not default_judge_ready():
        missing.append("default")
    if spec.endswith(INTENT_GATE_SUFFIX) and not intent_model_ready():
        missing.append("intent")
    return missing


def warming_up(session: Session) -> dict[str, Any]:
    settings = get_service_settings()
    pending: dict[str, Any] = {}
    for base in session.scalars(select(BaseModelRecord).where(BaseModelRecord.status.in_(BASE_ALIGNING))):
        pending[f"base:{base.id}"] = {"status": base.status, "progress": base.progress}
    missing = {
        model for spec in (settings.prescreen_judge, settings.safety_judge) for model in untrained(spec)
    }
    if "default" in missing:
        pending["judge:default"] = training_state(judge_training_progress())
    if "intent" in missing:
        pending["judge:intent"] = training_state(intent_training_progress())
    return pending


def training_state(progress: dict | None) -> dict[str, Any]:
    """A model a worker trains on first use, as the probes show it: training (how far), or not yet."""
    if progress is None:
        return {"status": "not trained yet (a worker trains it on first use)"}
    return {"status": "training", "progress": progress}
