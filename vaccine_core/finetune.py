"""User fine-tuning: a fresh LoRA adapter on the merged, aligned base (the second half of "double LoRA")."""

from pathlib import Path

from transformers import PreTrainedModel

from vaccine_core.artifacts import write_manifest
from vaccine_core.config import PerturbationConfig, TrainingConfig, finetune_defaults
from vaccine_core.inference import resolve_base
from vaccine_core.models import load_causal_lm, load_tokenizer, pick_device
from vaccine_core.runs import RunResult, train_adapter
from vaccine_core.training import ProgressCallback, StopCheck


def finetune(
    base: str | Path,
    data: Path,
    output_dir: Path,
    config: TrainingConfig | None = None,
    *,
    limit: int | None = None,
    device: str | None = None,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    base_model: PreTrainedModel | None = None,
) -> RunResult:
    """``base`` is an alignment run's directory; any other model spec fine-tunes a base that was never
    aligned (the "no alignment" row of the paper's tables).

    ``base_model`` is that base already loaded (a worker keeps it between jobs). Its weights stay frozen;
    the fresh adapter is unloaded from it again before this returns, so it can serve the next job."""
    config = config or finetune_defaults()
    output_dir = Path(output_dir)
    start = resolve_base(base)
    tokenizer = load_tokenizer(start.model_path)
    run = train_adapter(
        base_model if base_model is not None else load_causal_lm(start.model_path, pick_device(device)),
        tokenizer,
        Path(data),
        output_dir,
        config,
        PerturbationConfig(method="sft"),
        limit=limit,
        resume=resume,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    if run.train.cancelled:
        if base_model is not None:
            run.model.unload()
        return RunResult(output_dir, run.train, None)

    run.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    if base_model is not None:
        run.model.unload()
    manifest = write_manifest(
        output_dir,
        {
            "kind": "finetune",
            "base_model": start.identity,
            "alignment": start.alignment,
            "training": config.to_dict(),
            "data": run.data,
            "metrics": {"train": run.train_summary()},
        },
    )
    return RunResult(output_dir, run.train, manifest)
