"""LoRA adapters through PEFT: the only place that builds a LoraConfig."""

import warnings
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

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
