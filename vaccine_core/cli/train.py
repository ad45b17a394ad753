"""Commands that train: align, finetune, and the end-to-end demo."""

import json
from dataclasses import fields, replace
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
from vaccine_core.defenses import (
    BoosterConfig,
    LisaConfig,
    RestaConfig,
    SafeLoraConfig,
    SafetyLayersConfig,
    TokenConstraintConfig,
)
from vaccine_core.defenses.config import LISA_SAFETY_PAIRS
from vaccine_core.settings import get_settings


def help_of(config: type) -> dict[str, str]:
    """Each option's help text, from its dataclass field (one home for a default and its help)."""
    return {f.name: f.metadata.get("help", "") for f in fields(config)}


BOOSTER_HELP, LISA_HELP, SAFE_LORA_HELP = help_of(BoosterConfig), help_of(LisaConfig), help_of(SafeLoraConfig)
CONSTRAINT_HELP, RESTA_HELP = help_of(TokenConstraintConfig), help_of(RestaConfig)


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
    booster: Annotated[
        bool,
        typer.Option(
            help="Add Booster's attenuation term (harmful pairs: the JailbreakBench-judged harmful answers "
            "of the data directory; combines with --method).",
            rich_help_panel="Defenses",
        ),
    ] = False,
    booster_lambda: Annotated[
        float, typer.Option(help=BOOSTER_HELP["lamb"], rich_help_panel="Defenses")
    ] = BoosterConfig.lamb,
    booster_alpha: Annotated[
        float, typer.Option(help=BOOSTER_HELP["alpha"], rich_help_panel="Defenses")
    ] = BoosterConfig.alpha,
    limit: LimitOption = None,
    device: DeviceOption = None,
    resume: ResumeOption = False,
    config: TrainingConfig | None = None,
) -> None:
    """Align a base model: train a LoRA adapter on safety data and merge it into the base."""
    from vaccine_core.align import align as run_align
    from vaccine_core.defenses.data import booster_pairs
    from vaccine_core.defenses.stack import StepDefenses

    setup_logging()
    try:
        perturbation = PerturbationConfig(method=method, rho=rho, tau=tau)  # type: ignore[arg-type]
        defenses = None
        if booster:
            options = BoosterConfig(lamb=booster_lambda, alpha=booster_alpha)
            defenses = StepDefenses(booster=options, booster_rows=booster_pairs(get_settings().data_dir))
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    run_with_progress(
        f"align ({method}{' + booster' if booster else ''})",
        lambda bar: run_align(
            model,
            data,
            out,
            perturbation,
            config,
            limit=limit,
            device=device,
            resume=resume,
            on_progress=bar,
            defenses=defenses,
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
    lisa: Annotated[
        bool,
        typer.Option(
            help="Alternate with safety pairs the base was not aligned on, under Lisa's proximal term.",
            rich_help_panel="Defenses",
        ),
    ] = False,
    lisa_rho: Annotated[
        float, typer.Option(help=LISA_HELP["rho"], rich_help_panel="Defenses")
    ] = LisaConfig.rho,
    lisa_pairs: Annotated[
        int, typer.Option(help="Safety pairs Lisa draws from.", rich_help_panel="Defenses")
    ] = LISA_SAFETY_PAIRS,
    token_constraint: Annotated[
        bool,
        typer.Option(
            help="Hold the answers' first tokens near the aligned base's distribution (Qi et al. 2025).",
            rich_help_panel="Defenses",
        ),
    ] = False,
    token_constraint_beta: Annotated[
        float, typer.Option(help=CONSTRAINT_HELP["beta"], rich_help_panel="Defenses")
    ] = TokenConstraintConfig.beta,
    safety_layers: Annotated[
        bool,
        typer.Option(
            help="Leave the layers where the base tells harmful requests from harmless ones untrained "
            "(located once per base and kept in its directory; Li et al. 2024).",
            rich_help_panel="Defenses",
        ),
    ] = False,
    safe_lora: Annotated[
        bool,
        typer.Option(
            help="Project the adapter's stray layers onto the base's alignment subspace (an aligned base's).",
            rich_help_panel="Defenses",
        ),
    ] = False,
    safe_lora_threshold: Annotated[
        float, typer.Option(help=SAFE_LORA_HELP["threshold"], rich_help_panel="Defenses")
    ] = SafeLoraConfig.threshold,
    resta: Annotated[
        bool,
        typer.Option(
            help="Add the base's alignment update to the adapter again after training (an aligned base's).",
            rich_help_panel="Defenses",
        ),
    ] = False,
    resta_scale: Annotated[
        float, typer.Option(help=RESTA_HELP["scale"], rich_help_panel="Defenses")
    ] = RestaConfig.scale,
    resta_vector: Annotated[
        str,
        typer.Option(
            help=RESTA_HELP["vector"] + " The harmful adapter is trained on the first run that needs it "
            "(JailbreakBench judged-harmful pairs from the data directory) and kept in the base's directory.",
            rich_help_panel="Defenses",
        ),
    ] = RestaConfig.vector,
    resta_outside_user: Annotated[
        bool, typer.Option(help=RESTA_HELP["outside_user"], rich_help_panel="Defenses")
    ] = RestaConfig.outside_user,
    limit: LimitOption = None,
    device: DeviceOption = None,
    resume: ResumeOption = False,
    config: TrainingConfig | None = None,
) -> None:
    """Fine-tune an aligned base on user data with a fresh LoRA adapter."""
    from vaccine_core.defenses.config import VECTOR_ADAPTERS
    from vaccine_core.defenses.data import lisa_pairs as draw_lisa_pairs
    from vaccine_core.defenses.harmful_adapter import ensure_vector_adapter
    from vaccine_core.defenses.safety_layers import base_safety_layers
    from vaccine_core.defenses.stack import StepDefenses
    from vaccine_core.finetune import finetune as run_finetune

    setup_logging()
    try:
        defenses = None
        if lisa:
            rows = draw_lisa_pairs(
                get_settings().data_dir, base, lisa_pairs, seed=config.seed if config else 0
            )
            defenses = StepDefenses(lisa=LisaConfig(rho=lisa_rho), lisa_rows=rows)
        if token_constraint:
            constraint = TokenConstraintConfig(beta=token_constraint_beta)
            defenses = replace(defenses or StepDefenses(), token_constraint=constraint)
        if safety_layers:
            locating = SafetyLayersConfig()
            located = base_safety_layers(base, get_settings().data_dir, locating)
            typer.echo(f"the base's safety layers, kept untrained: {located['layers']}", err=True)
            defenses = replace(
                defenses or StepDefenses(), safety_layers=locating, safety_layer_indices=located["layers"]
            )
        projection = SafeLoraConfig(threshold=safe_lora_threshold) if safe_lora else None
        realignment = (
            RestaConfig(scale=resta_scale, vector=resta_vector, outside_user=resta_outside_user)
            if resta
            else None
        )
        for kind in VECTOR_ADAPTERS[realignment.vector] if realignment is not None else ():
            adapter = ensure_vector_adapter(kind, Path(base), get_settings().data_dir)
            if adapter.seconds:
                typer.echo(
                    f"trained the base's {kind} adapter ({adapter.path}) on {adapter.pairs}"
                    f" {adapter.taught} pairs in {adapter.seconds:.1f} s; later runs on this base reuse it",
                    err=True,
                )
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    run_with_progress(
        "finetune",
        lambda bar: run_finetune(
            base,
            data,
            out,
            config,
            limit=limit,
            device=device,
            resume=resume,
            on_progress=bar,
            defenses=defenses,
            safe_lora=projection,
            resta=realignment,
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
