"""Commands that train: align, finetune, and the end-to-end demo."""

import json
from pathlib import Path
from typing import Annotated

import typer

from vaccine_core.cli import app
from vaccine_core.cli.common import (
    DataOption,
    DeviceOption,
    LimitOption,
    ModelOption,
    OutOption,
    ResumeOption,
    fail,
    run_with_progress,
    setup_logging,
    training_options,
)
from vaccine_core.config import PerturbationConfig, TrainingConfig, alignment_defaults, finetune_defaults
from vaccine_core.settings import get_settings


@app.command()
@training_options(alignment_defaults)
def align(
    data: DataOption,
    out: OutOption,
    model: ModelOption = "default",
    method: Annotated[
        str,
        typer.Option(
            help="vaccine (perturbation-aware), sft (plain), or random (Gaussian noise of variance rho)."
        ),
    ] = "vaccine",
    rho: Annotated[
        float,
        typer.Option(
            help="Perturbation radius: the global L2 norm of the hidden-embedding perturbation "
            "over all layers and the whole batch."
        ),
    ] = 2.0,
    tau: Annotated[
        int,
        typer.Option(
            help="Recompute the Vaccine perturbation every tau steps and carry its direction in between "
            "(1 = every step, as in the paper)."
        ),
    ] = 1,
    limit: LimitOption = None,
    device: DeviceOption = None,
    resume: ResumeOption = False,
    config: TrainingConfig | None = None,
) -> None:
    """Align a base model: train a LoRA adapter on safety data and merge it into the base."""
    from vaccine_core.align import align as run_align

    setup_logging()
    try:
        perturbation = PerturbationConfig(method=method, rho=rho, tau=tau)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_with_progress(
        f"align ({method})",
        lambda bar: run_align(
            model, data, out, perturbation, config, limit=limit, device=device, resume=resume, on_progress=bar
        ),
    )


@app.command()
@training_options(finetune_defaults)
def finetune(
    base: Annotated[
        str,
        typer.Option(
            "--base", help="An alignment run's directory (or any model spec, to fine-tune an unaligned base)."
        ),
    ],
    data: DataOption,
    out: OutOption,
    limit: LimitOption = None,
    device: DeviceOption = None,
    resume: ResumeOption = False,
    config: TrainingConfig | None = None,
) -> None:
    """Fine-tune an aligned base on user data with a fresh LoRA adapter."""
    from vaccine_core.finetune import finetune as run_finetune

    setup_logging()
    run_with_progress(
        "finetune",
        lambda bar: run_finetune(
            base, data, out, config, limit=limit, device=device, resume=resume, on_progress=bar
        ),
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Directory for the demo's runs.")] = Path("runs/demo"),
    limit: Annotated[int, typer.Option(help="Alignment examples.")] = 64,
    prompts: Annotated[int, typer.Option(help="Harmful prompts to evaluate.")] = 32,
) -> None:
    """Align the default model with Vaccine, fine-tune it on an attacked SST-2 sample, and evaluate both."""
    from vaccine_core.demo import run_demo

    setup_logging()
    settings = get_settings()
    if not settings.data_dir.is_dir():
        fail(f"data directory {settings.data_dir} not found; set VACCINE_DATA_DIR")
    typer.echo(json.dumps(run_demo(settings.data_dir, out, limit=limit, prompts=prompts), indent=2))
