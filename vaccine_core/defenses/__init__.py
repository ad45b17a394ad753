"""Defenses beyond Vaccine, one per stage of a fine-tuning service:

* alignment: ``booster`` (attenuate how much a harmful step can lower the harmful loss);
* fine-tuning: ``lisa`` (alternate with safety pairs under a proximal term);
* after fine-tuning: ``safe_lora`` (project the user's update onto the alignment subspace where it strays).
"""

from vaccine_core.defenses.base import BatchStream, StepDefense
from vaccine_core.defenses.booster import Booster, BoosterConfig
from vaccine_core.defenses.lisa import Lisa, LisaConfig
from vaccine_core.defenses.safe_lora import LayerProjection, SafeLoraConfig, project_adapter
from vaccine_core.defenses.stack import StepDefenses

__all__ = [
    "BatchStream",
    "Booster",
    "BoosterConfig",
    "LayerProjection",
    "Lisa",
    "LisaConfig",
    "SafeLoraConfig",
    "StepDefense",
    "StepDefenses",
    "project_adapter",
]
