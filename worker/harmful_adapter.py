"""A base's harmful adapter, whose negated update is RESTA's own safety vector (``resta_vector="harmful"``),
and its benign control (``resta_vector="contrast"``).

Each is trained once per base, as a user's job with the service's defaults would be (seed 0): the harmful
one on harmful pairs none of which the safety report asks, the control on as many helpful pairs, and
trained again when those change. They are kept in the service's own directory for the base, never in a
base it adopted (someone else's run, perhaps on a read-only volume); a lock keeps two workers from
training one together.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel

from service.bases import base_dir
from service.settings import get_service_settings
from vaccine_core.defenses.config import VectorAdapterKind
from vaccine_core.defenses.harmful_adapter import VectorAdapter, ensure_vector_adapter
from vaccine_core.defenses.resta import HARMFUL_ADAPTER
from worker.safety import ReportPlan, report_prompts

log = logging.getLogger(__name__)


def base_vector_adapters(
    base_id: str,
    base_path: Path,
    plan: ReportPlan,
    kinds: Sequence[VectorAdapterKind],
    base_model: PreTrainedModel | None = None,
) -> dict[str, VectorAdapter]:
    """The adapters of ``kinds`` of the base ``base_id`` (aligned at ``base_path``), by kind: each trained
    unless it is there, on pairs none of which the safety report of ``plan`` asks."""
    settings = get_service_settings()
    exclude = report_prompts(settings, plan).normalised()
    out = base_dir(settings.home, base_id) / HARMFUL_ADAPTER
    return {
        kind: ensure_vector_adapter(
            kind, base_path, settings.data_dir, exclude=exclude, out=out, base_model=base_model
        )
        for kind in kinds
    }


def warm_vector_adapters(
    base_id: str, base_path: Path, plan: ReportPlan, kinds: Sequence[VectorAdapterKind]
) -> None:
    """Train the base's adapters of ``kinds`` while the base warms up. A failure here leaves the base
    usable by every other stack; the first job that needs them tries again and, failing, says why."""
    try:
        adapters = base_vector_adapters(base_id, base_path, plan, kinds)
    except Exception:
        log.exception(
            "training %s's RESTA adapters failed; the first job that needs them tries again", base_id
        )
        return
    for kind, adapter in adapters.items():
        log.info(
            "%s's %s adapter: %d pairs, %.1f s of training", base_id, kind, adapter.pairs, adapter.seconds
        )
