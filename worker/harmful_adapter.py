"""A base's harmful adapter, whose negated update is RESTA's own safety vector (``resta_vector="harmful"``).

It is trained once per base, as a user's job with the service's defaults would be (seed 0), on harmful
pairs none of which the safety report asks, and trained again when those change. It is kept in the
service's own directory for the base, never in a base it adopted (someone else's run, perhaps on a
read-only volume); a lock keeps two workers from training it together.
"""

import logging
from pathlib import Path

from transformers import PreTrainedModel

from service.bases import base_dir
from service.settings import get_service_settings
from vaccine_core.defenses.harmful_adapter import HarmfulAdapter, ensure_harmful_adapter
from vaccine_core.defenses.resta import HARMFUL_ADAPTER
from worker.safety import ReportPlan, report_prompts

log = logging.getLogger(__name__)


def base_harmful_adapter(
    base_id: str, base_path: Path, plan: ReportPlan, base_model: PreTrainedModel | None = None
) -> HarmfulAdapter:
    """The harmful adapter of the base ``base_id`` (aligned at ``base_path``), trained unless it is there,
    on pairs none of which the safety report of ``plan`` asks."""
    settings = get_service_settings()
    return ensure_harmful_adapter(
        base_path,
        settings.data_dir,
        exclude=report_prompts(settings, plan).normalised(),
        out=base_dir(settings.home, base_id) / HARMFUL_ADAPTER,
        base_model=base_model,
    )


def warm_harmful_adapter(base_id: str, base_path: Path, plan: ReportPlan) -> None:
    """Train the base's harmful adapter while the base warms up. A failure here leaves the base usable by
    every other stack; the first job that needs the adapter tries again and, failing, says why."""
    try:
        adapter = base_harmful_adapter(base_id, base_path, plan)
    except Exception:
        log.exception(
            "training %s's harmful adapter failed; the first job that needs it tries again", base_id
        )
        return
    log.info("%s's harmful adapter: %d pairs, %.1f s of training", base_id, adapter.pairs, adapter.seconds)
