"""LoRA adapters through PEFT: the only place that builds a LoraConfig."""

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from vaccine_core.config import LoraSettings


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
