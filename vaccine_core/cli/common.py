"""Options, errors and the training-options decorator shared by the commands."""

import functools
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from vaccine_core.config import ALL_LINEAR, LoraSettings, TrainingConfig
from vaccine_core.formats import DatasetError
from vaccine_core.progress import ProgressBar

# ------------------------------------------------------------------------------ shared training options

_TRAINING_OPTIONS: dict[str, tuple[type, str]] = {
    "epochs": (float, "Passes over the data (alignment default 1; fine-tuning default 3)."),
    "batch_size": (int, "Examples per micro-batch (default 5, as in the reference)."),
    "learning_rate": (float, "Peak AdamW learning rate (alignment default 1e-3; fine-tuning 1e-4)."),
    "warmup_ratio": (float, "Share of the steps spent warming the learning rate up from 0 (default 0.1)."),
    "scheduler": (str, "Learning-rate schedule after warm-up: cosine, linear or constant (default cosine)."),
    "weight_decay": (float, "AdamW weight decay (alignment default 0.1; fine-tuning 0)."),
    "gradient_accumulation_steps": (int, "Micro-batches per optimizer step (default 1)."),
    "max_steps": (int, "Stop after this many optimizer steps, overriding --epochs."),
    "max_length": (int, "Truncate each rendered example to this many tokens (default 256)."),
    "max_grad_norm": (float, "Clip the gradient norm to this value; 0 turns clipping off (default 1)."),
    "seed": (int, "Seed for data order, adapter initialisation and dropout (default 42)."),
    "checkpoint_every": (int, "Write a resumable checkpoint every N steps (default: only when stopped)."),
    "unpadded": (
        bool,
        "Run each batch as runs of examples of similar length on the CPU, the same gradient on fewer padded "
        "tokens (SFT and Vaccine steps; default on). --no-unpadded keeps batches whole.",
    ),
    "lora_r": (int, "LoRA rank (default 8)."),
    "lora_alpha": (
        float,
        "LoRA alpha; the update is scaled by alpha / r (alignment default 4; fine-tuning 8).",
    ),
    "lora_dropout": (float, "Dropout on the LoRA input (default 0.1)."),
    "lora_targets": (
        str,
        f"Comma-separated module names for LoRA, or '{ALL_LINEAR}' (default; on Llama-family "
        "models that is q,k,v,o,gate,up,down).",
    ),
}


def _config_from_options(defaults: TrainingConfig, given: dict[str, Any]) -> TrainingConfig:
    lora = defaults.lora
    lora_given = {k.removeprefix("lora_"): given.pop(k) for k in list(given) if k.startswith("lora_")}
    if lora_given.get("targets") is not None:
        targets = lora_given.pop("targets")
        lora_given["target_modules"] = (
            targets if targets == ALL_LINEAR else [t.strip() for t in targets.split(",")]
        )
    lora = LoraSettings(**{**lora.__dict__, **{k: v for k, v in lora_given.items() if v is not None}})
    updates = {k: v for k, v in given.items() if v is not None}
    if updates.get("max_grad_norm") == 0:
        updates["max_grad_norm"] = None
    return replace(defaults, lora=lora, **updates)


def training_options(defaults: Callable[[], TrainingConfig]) -> Callable:
    """Add the shared hyperparameter options to a command; it receives them as one ``config``."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        extra = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                # a switch's --no- form would widen the panel's names column and cut the longest names
                annotation=Annotated[
                    kind | None,
                    typer.Option(
                        help=text, rich_help_panel="Training switches" if kind is bool else "Training"
                    ),
                ],
            )
            for name, (kind, text) in _TRAINING_OPTIONS.items()
        ]
        own = [p for p in signature.parameters.values() if p.name != "config"]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in _TRAINING_OPTIONS}
            try:
                config = _config_from_options(defaults(), given)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            return command(config=config, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="'default' (bundled SmolLM2-135M-Instruct), a .gguf file or a Hugging Face model directory.",
    ),
]
DataOption = Annotated[
    Path,
    typer.Option(
        "--data", help="Training data: JSON Lines or a JSON array of alpaca, chat or prompt/completion rows."
    ),
]
OutOption = Annotated[
    Path, typer.Option("--out", help="Output directory (adapter, manifest.json, checkpoints).")
]
LimitOption = Annotated[int | None, typer.Option("--limit", help="Use only the first N examples.")]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="torch device (default: cuda if present, else cpu).")
]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")]


def run_with_progress(description: str, run: Callable[[ProgressBar], Any]) -> None:
    """Run an alignment or fine-tuning job behind a progress bar; print its metrics, or how to resume."""
    bar = ProgressBar(description)
    try:
        result = run(bar)
    except DatasetError as exc:
        fail(str(exc))
    finally:
        bar.close()
    if result.manifest is None:
        typer.echo(
            f"stopped at step {result.train.steps}; resume with --resume "
            f"(checkpoint: {result.train.last_checkpoint})"
        )
        return
    typer.echo(json.dumps({"output_dir": str(result.output_dir), **result.manifest["metrics"]}, indent=2))


JudgeOption = Annotated[
    str,
    typer.Option(
        "--judge",
        help="'refusal' (keyword refusal judge), or a model directory: a sequence classifier "
        "(multi-label or safe/unsafe) or a Llama Guard-style generative guard.",
    ),
]
