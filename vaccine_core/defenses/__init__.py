"""Defenses beyond Vaccine, one per stage of a fine-tuning service:

* alignment: ``booster`` (attenuate how much a harmful step can lower the harmful loss) and ``preference``
  (DPO on pairs of answers: refuse the harmful request, answer the benign one that sounds harmful);
* fine-tuning: ``lisa`` (alternate with safety pairs under a proximal term), ``token_constraint`` (keep
  the answers' first tokens near the aligned base's distribution), ``safety_layers`` (leave the layers
  where the base tells harmful requests from harmless ones out of the user's training) and
  ``backdoor_align`` (safety pairs behind a secret system prompt, served first in every conversation);
* after fine-tuning: ``safe_lora`` (project the user's update onto the alignment subspace where it strays)
  and ``resta`` (add the base's alignment update to the user's adapter again).

The options (``*Config``) load at once; the code behind them, which needs torch, on first use.
"""

from importlib import import_module
from typing import Any

from vaccine_core.defenses.config import (
    BackdoorAlignConfig,
    BoosterConfig,
    LisaConfig,
    PreferenceConfig,
    RestaConfig,
    SafeLoraConfig,
    SafetyLayersConfig,
    TokenConstraintConfig,
)

# the layers that edit the saved adapter after fine-tuning, in the order ``finetune`` applies them; a
# fine-tune's manifest records each under its name, with the seconds it took
ADAPTER_EDITS = ("safe_lora", "resta")

_LAZY = {
    "BatchStream": "base",
    "StepDefense": "base",
    "Booster": "booster",
    "Lisa": "lisa",
    "Preference": "preference",
    "LayerProjection": "safe_lora",
    "project_adapter": "safe_lora",
    "add_alignment": "resta",
    "StepDefenses": "stack",
    "freeze_layers": "safety_layers",
    "locate_safety_layers": "safety_layers",
    "TokenConstraint": "token_constraint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"vaccine_core.defenses.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vaccine_core.defenses' has no attribute {name!r}")


__all__ = [
    "ADAPTER_EDITS",
    "BackdoorAlignConfig",
    "BoosterConfig",
    "LisaConfig",
    "PreferenceConfig",
    "RestaConfig",
    "SafeLoraConfig",
    "SafetyLayersConfig",
    "TokenConstraintConfig",
    *_LAZY,
]
