"""LoRA adapters through PEFT: the only place that builds a LoraConfig."""

import json
import warnings
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import PreTrainedModel

from vaccine_core.artifacts import ADAPTER_WEIGHTS
from vaccine_core.config import LoraSettings

# PEFT reads a property that transformers 5 deprecated, once per wrapped model; nothing for our users to do.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def lora_config(settings: LoraSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    return get_peft_model(model, lora_config(settings))


def load_adapter(base: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(base, str(adapter_dir))


ADAPTER_CONFIG = "adapter_config.json"


def adapter_settings(adapter_dir: Path) -> LoraSettings:
    """The LoRA settings a saved adapter was trained with (to continue training it)."""
    saved = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    targets = saved["target_modules"]
    return LoraSettings(
        r=saved["r"],
        alpha=saved["lora_alpha"],
        dropout=saved["lora_dropout"],
        target_modules=sorted(targets) if isinstance(targets, list | set) else targets,
    )


def start_from(model: PeftModel, adapter_dir: Path) -> None:
    """Load a saved adapter's weights into ``model``'s fresh adapter of the same shape."""
    weights = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the adapter at {adapter_dir} does not fit this run's LoRA settings "
            f"({len(missing)} weights missing, {len(result.unexpected_keys)} unexpected)"
        )
