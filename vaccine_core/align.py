"""Alignment: train a LoRA adapter on safety data with Vaccine (or SFT, or random noise), then merge it.

Booster (``defenses``) adds its attenuation term to whichever of these gives the alignment gradient.

The output directory holds the alignment adapter in PEFT's format, ``merged/`` (the base with the adapter
merged in, where every user fine-tuning job starts: the first half of "double LoRA") and manifest.json.
"""

from pathlib import Path

from vaccine_core.artifacts import MERGED_DIR, write_manifest
from vaccine_core.config import PerturbationConfig, TrainingConfig, alignment_defaults
from vaccine_core.defenses.stack import StepDefenses
from vaccine_core.models import load_causal_lm, load_tokenizer, pick_device, resolve_model
from vaccine_core.runs import RunResult, train_adapter
from vaccine_core.training import ProgressCallback, StopCheck


def align(
    model: str,
    data: Path,
    output_dir: Path,
    perturbation: PerturbationConfig,
    config: TrainingConfig | None = None,
    *,
    limit: int | None = None,
    device: str | None = None,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    defenses: StepDefenses | None = None,
) -> RunResult:
    config = config or alignment_defaults()
    output_dir = Path(output_dir)
    base = resolve_model(model)
    tokenizer = load_tokenizer(base.path)
    run = train_adapter(
        load_causal_lm(base.path, pick_device(device)),
        tokenizer,
        Path(data),
        output_dir,
        config,
        perturbation,
        limit=limit,
        resume=resume,
        on_progress=on_progress,
        should_stop=should_stop,
        defenses=defenses,
    )
    if run.train.cancelled:
        return RunResult(output_dir, run.train, None)

    run.model.save_pretrained(output_dir)
    merged = run.model.merge_and_unload()
    merged.save_pretrained(output_dir / MERGED_DIR)
    tokenizer.save_pretrained(output_dir / MERGED_DIR)
    manifest = write_manifest(
        output_dir,
        {
            "kind": "alignment",
            "base_model": base.identity(),
            "alignment": perturbation.to_dict(),
            "defenses": defenses.to_dict() if defenses else {},
            "training": config.to_dict(),
            "data": run.data,
            "metrics": {"train": run.train_summary()},
        },
    )
    return RunResult(output_dir, run.train, manifest)
