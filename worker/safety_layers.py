"""A base's safety layers, which a stack with ``safety_layers`` leaves out of the user's training.

Located once per base, by the first job that needs them, from requests none of which the safety report
asks; kept in the service's own directory for the base, never in a base it adopted (someone else's run,
perhaps on a read-only volume).
"""

from pathlib import Path

from transformers import PreTrainedModel

from service.bases import base_dir
from service.settings import get_service_settings
from vaccine_core.defenses.config import SafetyLayersConfig
from vaccine_core.defenses.safety_layers import SAFETY_LAYERS_FILE, base_safety_layers
from worker.safety import ReportPlan, report_prompts


def located_safety_layers(
    base_id: str,
    base_path: Path,
    plan: ReportPlan,
    config: SafetyLayersConfig,
    base_model: PreTrainedModel | None = None,
) -> tuple[list[int], float | None]:
    """The safety layers of the base ``base_id`` (aligned at ``base_path``), and the seconds locating them
    took where this call located them (None: they were kept from an earlier job)."""
    settings = get_service_settings()
    kept = base_dir(settings.home, base_id) / SAFETY_LAYERS_FILE
    before = kept.stat().st_mtime_ns if kept.is_file() else None
    record = base_safety_layers(
        base_path,
        settings.data_dir,
        config,
        exclude=report_prompts(settings, plan).normalised(),
        kept=kept,
        model=base_model,
    )
    located_now = kept.stat().st_mtime_ns != before
    return record["layers"], record["seconds"] if located_now else None
