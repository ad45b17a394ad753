"""A base's safety layers, which a stack with ``safety_layers`` leaves out of the user's training.

Located once per base, by the first job that needs them, from requests none of which the safety report
asks; kept in the service's own directory for the base, never in a base it adopted (someone else's run,
perhaps on a read-only volume).
"""

from pathlib import Path
from typing import Any

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
) -> tuple[dict[str, Any], bool]:
    """The record of the safety layers of the base ``base_id`` (aligned at ``base_path``: the layers, the
    separation after each layer, the seconds locating took), and whether this call located them (else an
    earlier job did)."""
    settings = get_service_settings()
    located: list[bool] = []
    record = base_safety_layers(
        base_path,
        settings.data_dir,
        config,
        exclude=report_prompts(settings, plan).normalised(),
        kept=base_dir(settings.home, base_id) / SAFETY_LAYERS_FILE,
        model=base_model,
        on_locate=lambda: located.append(True),
    )
    return record, bool(located)
