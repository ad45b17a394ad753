"""What alignment and fine-tuning runs share: load data, add a fresh adapter, train, summarise."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vaccine_core.artifacts import sha256_file
from vaccine_core.config import PerturbationConfig, TrainingConfig
from vaccine_core.data import SupervisedDataset
from vaccine_core.defenses.stack import StepDefenses
from vaccine_core.evaluation import mean_loss
from vaccine_core.formats import LoadedDataset, as_dataset
from vaccine_core.lora import add_lora, start_from
from vaccine_core.training import (
    ProgressCallback,
    StopCheck,
    TrainResult,
    latest_checkpoint,
    train,
)


@dataclass
class RunResult:
    output_dir: Path
    train: TrainResult
    manifest: dict[str, Any] | None  # None when the run was cancelled before it finished


@dataclass
class AdapterRun:
    model: PeftModel
    train: TrainResult
    data: dict[str, Any]
    device: str = ""  # where it trained, with the weights' dtype: "cuda:0 torch.bfloat16"

    def train_summary(self) -> dict[str, Any]:
        losses = self.train.losses
        return {
            "steps": self.train.steps,
            "final_loss": self.train.final_loss,
            "mean_loss": sum(losses) / len(losses) if losses else None,
            "tokens": self.train.tokens,
            "seconds": round(self.train.seconds, 2),
            "device": self.device,
            # to the 0.1 ms: a defense's share of a small run is milliseconds, which 2 decimals round to 0
            "defense_seconds": {k: round(v, 4) for k, v in self.train.defense_seconds.items()},
            "validation_losses": {str(k): v for k, v in self.train.validation_losses.items()},
        }


def held_out_loss(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    validation: Path | LoadedDataset,
    config: TrainingConfig,
) -> Callable[[], float]:
    """The loss per answer token on a validation file, as a callable the training loop runs."""
    conversations = as_dataset(validation).conversations
    return lambda: mean_loss(model, tokenizer, conversations, max_length=config.max_length)


def train_adapter(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: Path | LoadedDataset,
    output_dir: Path,
    config: TrainingConfig,
    perturbation: PerturbationConfig,
    *,
    limit: int | None,
    resume: bool,
    on_progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    defenses: StepDefenses | None = None,
    validation: Path | LoadedDataset | None = None,
    validation_count: int = 0,
    init_adapter: Path | None = None,
) -> AdapterRun:
    """Validate the data (a file; rows parsed before are taken as they are), put a fresh LoRA adapter on
    ``model`` and train it (with ``defenses``, if any); checkpoints go to output_dir."""
    dataset = as_dataset(data, limit=limit)
    examples = SupervisedDataset(dataset.conversations, tokenizer, config.max_length)
    torch.manual_seed(config.seed)  # the adapter's initialisation is the run's too: same seed, same model
    peft_model = add_lora(model, config.lora)
    if init_adapter is not None:  # continue training a saved adapter (a resumed run overwrites it anyway)
        start_from(peft_model, init_adapter)
    step_defenses = defenses.build(peft_model, tokenizer, config, examples) if defenses else []
    output_dir.mkdir(parents=True, exist_ok=True)
    result = train(
        peft_model,
        tokenizer,
        examples,
        config,
        perturbation,
        output_dir=output_dir,
        resume_from=latest_checkpoint(output_dir) if resume else None,
        on_progress=on_progress,
        should_stop=should_stop,
        defenses=step_defenses,
        validate=None if validation is None else held_out_loss(peft_model, tokenizer, validation, config),
        validation_count=validation_count,
    )
    for defense in step_defenses:
        result.defense_seconds[defense.name] = (
            result.defense_seconds.get(defense.name, 0.0) + defense.setup_seconds
        )
    summary = {
        "path": str(dataset.path.resolve()) if dataset.path else None,  # None: rows built in memory
        "sha256": sha256_file(dataset.path) if dataset.path else None,
        "format": dataset.format,
        "examples": len(examples),
        "dropped_after_truncation": [str(p) for p in examples.dropped],
    }
    weight = next(peft_model.parameters())
    return AdapterRun(model=peft_model, train=result, data=summary, device=f"{weight.device} {weight.dtype}")
