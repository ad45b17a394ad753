"""User fine-tuning: a fresh LoRA adapter on the merged, aligned base (the second half of "double LoRA").

Defenses act here while training (``defenses``: Lisa, the token-wise constraint) and on the saved adapter,
in this order: Safe LoRA (``safe_lora``: layers whose update strays from the base's alignment subspace are
projected onto it), then RESTA (``resta``: the base's alignment update added to the adapter again).
"""

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from vaccine_core.artifacts import write_manifest
from vaccine_core.config import PerturbationConfig, TrainingConfig, finetune_defaults
from vaccine_core.defenses.config import RestaConfig
from vaccine_core.defenses.resta import USER_ADAPTER, add_alignment, safety_vector
from vaccine_core.defenses.safe_lora import ADAPTER_FILE, SafeLoraConfig, project_adapter
from vaccine_core.defenses.stack import StepDefenses
from vaccine_core.formats import LoadedDataset
from vaccine_core.inference import resolve_base
from vaccine_core.models import load_causal_lm, load_tokenizer, pick_device
from vaccine_core.runs import RunResult, train_adapter
from vaccine_core.training import ProgressCallback, StopCheck


def finetune(
    base: str | Path,
    data: Path | LoadedDataset,
    output_dir: Path,
    config: TrainingConfig | None = None,
    *,
    limit: int | None = None,
    device: str | None = None,
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    base_model: PreTrainedModel | None = None,
    defenses: StepDefenses | None = None,
    safe_lora: SafeLoraConfig | None = None,
    resta: RestaConfig | None = None,
    harmful_adapter: Path | None = None,
    validation: Path | LoadedDataset | None = None,
    validation_count: int = 0,
    init_adapter: Path | None = None,
    prescreen_filter: dict[str, Any] | None = None,
) -> RunResult:
    """``base`` is an alignment run's directory; any other model spec fine-tunes a base that was never
    aligned (the "no alignment" row of the paper's tables).

    ``base_model`` is that base already loaded (a worker keeps it between jobs). Its weights stay frozen;
    the fresh adapter is unloaded from it again before this returns, so it can serve the next job.
    ``init_adapter`` (a saved adapter of this run's LoRA shape, on the same base) makes the run continue
    training that adapter instead of a fresh one. ``prescreen_filter`` is the record of rows the caller
    left out of ``data`` before it came here (``moderation.prescreen.without_flagged``): the manifest keeps
    it with the other defenses. ``harmful_adapter`` is where the base's harmful adapter is kept for
    ``resta``'s harmful vector, when not in the base's directory."""
    config = config or finetune_defaults()
    output_dir = Path(output_dir)
    for layer, config_of_layer in (("Safe LoRA", safe_lora), ("RESTA", resta)):
        if config_of_layer is not None and not (Path(base) / ADAPTER_FILE).is_file():
            raise ValueError(f"{layer} needs an aligned base: it reads the base's alignment adapter")
    start = resolve_base(base)
    tokenizer = load_tokenizer(start.model_path)
    run = train_adapter(
        base_model if base_model is not None else load_causal_lm(start.model_path, pick_device(device)),
        tokenizer,
        data if isinstance(data, LoadedDataset) else Path(data),
        output_dir,
        config,
        PerturbationConfig(method="sft"),
        limit=limit,
        resume=resume,
        on_progress=on_progress,
        should_stop=should_stop,
        defenses=defenses,
        validation=validation,
        validation_count=validation_count,
        init_adapter=init_adapter,
    )
    if run.train.cancelled:
        if base_model is not None:
            run.model.unload()
        return RunResult(output_dir, run.train, None)

    # a user adapter kept by an earlier, interrupted RESTA belongs to the adapter this save replaces
    shutil.rmtree(output_dir / USER_ADAPTER, ignore_errors=True)
    run.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    if base_model is not None:
        run.model.unload()
    projection = apply_safe_lora(output_dir, base, safe_lora) if safe_lora is not None else None
    realignment = apply_resta(output_dir, base, resta, harmful_adapter) if resta is not None else None
    manifest = write_manifest(
        output_dir,
        {
            "kind": "finetune",
            "base_model": start.identity,
            "alignment": start.alignment,
            "training": config.to_dict(),
            "continued_from": str(init_adapter) if init_adapter is not None else None,
            "defenses": {
                **({"prescreen_filter": prescreen_filter} if prescreen_filter is not None else {}),
                **(defenses.to_dict() if defenses else {}),
                **({"safe_lora": projection} if projection is not None else {}),
                **({"resta": realignment} if realignment is not None else {}),
            },
            "data": run.data,
            "metrics": {"train": run.train_summary()},
        },
    )
    return RunResult(output_dir, run.train, manifest)


def apply_safe_lora(adapter_dir: Path, base: str | Path, config: SafeLoraConfig) -> dict[str, Any]:
    """Project the saved adapter in place against the alignment adapter of ``base``; what was done."""
    started = time.perf_counter()
    layers = project_adapter(adapter_dir, Path(base), config)
    cosines = [layer.cosine for layer in layers]
    return {
        **config.to_dict(),
        "layers": len(layers),
        "projected": sum(layer.projected for layer in layers),
        "mean_cosine": sum(cosines) / len(cosines) if cosines else None,
        # where a threshold would fall: the cosine below which 10 %, 20 %, ... 90 % of the layers lie
        "cosine_deciles": [round(c, 4) for c in statistics.quantiles(cosines, n=10)]
        if len(cosines) > 1
        else None,
        "seconds": round(time.perf_counter() - started, 2),
    }


def apply_resta(
    adapter_dir: Path, base: str | Path, config: RestaConfig, harmful_adapter: Path | None = None
) -> dict[str, Any]:
    """Add ``config``'s safety vector of ``base`` to the saved adapter, in place; what was done."""
    started = time.perf_counter()
    record = add_alignment(adapter_dir, safety_vector(Path(base), config, harmful_adapter), config)
    return {**record, "seconds": round(time.perf_counter() - started, 2)}
