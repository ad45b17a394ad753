"""The ``vaccine`` command: align, fine-tune and evaluate models, and prepare data."""

import functools
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm.auto import tqdm

from vaccine_core.config import (
    ALL_LINEAR,
    LoraSettings,
    PerturbationConfig,
    TrainingConfig,
    alignment_defaults,
    finetune_defaults,
)
from vaccine_core.data import DatasetError, load_dataset
from vaccine_core.progress import ProgressBar
from vaccine_core.settings import get_settings

app = typer.Typer(
    help="Vaccine: perturbation-aware safety alignment and LoRA fine-tuning that resists harmful data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Validate and prepare fine-tuning data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
moderation_app = typer.Typer(help="Train and evaluate the default harmfulness judge.", no_args_is_help=True)
app.add_typer(moderation_app, name="moderation")


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
                annotation=Annotated[kind | None, typer.Option(help=text, rich_help_panel="Training")],
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


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


# ------------------------------------------------------------------------------------------- commands

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


def _print_result(result: Any) -> None:
    if result.manifest is None:
        typer.echo(
            f"stopped at step {result.train.steps}; resume with --resume "
            f"(checkpoint: {result.train.last_checkpoint})"
        )
        return
    typer.echo(json.dumps({"output_dir": str(result.output_dir), **result.manifest["metrics"]}, indent=2))


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

    _setup_logging()
    try:
        perturbation = PerturbationConfig(method=method, rho=rho, tau=tau)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    bar = ProgressBar(f"align ({method})")
    try:
        result = run_align(
            model, data, out, perturbation, config, limit=limit, device=device, resume=resume, on_progress=bar
        )
    except DatasetError as exc:
        _fail(str(exc))
    finally:
        bar.close()
    _print_result(result)


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

    _setup_logging()
    bar = ProgressBar("finetune")
    try:
        result = run_finetune(
            base, data, out, config, limit=limit, device=device, resume=resume, on_progress=bar
        )
    except DatasetError as exc:
        _fail(str(exc))
    finally:
        bar.close()
    _print_result(result)


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Option("--model", help="A fine-tuning or alignment run's directory, or any model spec.")
    ],
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="Harmful prompts (JSON Lines with 'prompt') for the harmful score."),
    ] = None,
    judge: Annotated[
        str, typer.Option(help="Judge for the harmful score: refusal (keyword refusal judge).")
    ] = "refusal",
    limit: Annotated[int | None, typer.Option(help="Use only the first N prompts.")] = None,
    task: Annotated[
        str | None, typer.Option(help="Also measure fine-tune accuracy: sst2, agnews or gsm8k.")
    ] = None,
    task_data: Annotated[
        Path | None,
        typer.Option(help="Rows for --task (default: the task's held-out file in the data directory)."),
    ] = None,
    task_limit: Annotated[int, typer.Option(help="Rows of --task data to grade.")] = 100,
    drift_data: Annotated[
        Path | None, typer.Option(help="Alignment data for harmful embedding drift (fine-tuned runs only).")
    ] = None,
    drift_limit: Annotated[int, typer.Option(help="Examples of --drift-data to use.")] = 64,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    device: DeviceOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for answers.jsonl, task_answers.jsonl and summary.json."),
    ] = None,
) -> None:
    """Measure harmful score, fine-tune accuracy and embedding drift; print a JSON summary."""
    from vaccine_core import evaluation
    from vaccine_core.inference import load_for_inference
    from vaccine_core.mixing import read_jsonl
    from vaccine_core.moderation import load_judge
    from vaccine_core.tasks import get_task

    _setup_logging()
    if prompts is None and task is None and drift_data is None:
        raise typer.BadParameter("give at least one of --prompts, --task or --drift-data")
    try:
        moderator = load_judge(judge, device)
        task_spec = get_task(task) if task else None
        prompt_list = evaluation.load_prompts(prompts, limit) if prompts else None
    except (ValueError, DatasetError) as exc:
        _fail(str(exc))
    loaded = load_for_inference(model, device)
    summary: dict[str, Any] = {"model": model, "kind": loaded.kind}
    if prompt_list is not None:
        with tqdm(total=len(prompt_list), desc="harmful score", unit="prompt") as bar:
            report = evaluation.harmful_score(
                loaded.model,
                loaded.tokenizer,
                prompt_list,
                moderator,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                on_batch=bar.update,
            )
        summary["harmful"] = report.summary()
        if out:
            evaluation.write_jsonl(out / "answers.jsonl", report.items)
    if task_spec is not None:
        rows = read_jsonl(task_data or get_settings().data_dir / task_spec.eval_file)[:task_limit]
        with tqdm(total=len(rows), desc=f"{task_spec.name} accuracy", unit="row") as bar:
            accuracy = evaluation.task_accuracy(
                loaded.model, loaded.tokenizer, task_spec, rows, batch_size=batch_size, on_batch=bar.update
            )
        summary["task"] = accuracy.summary()
        if out:
            evaluation.write_jsonl(out / "task_answers.jsonl", accuracy.items)
    if drift_data is not None:
        if not loaded.has_adapter:
            _fail("--drift-data needs a fine-tuned run: drift compares it with its aligned base")
        conversations = load_dataset(drift_data, limit=drift_limit).conversations
        summary["embedding_drift"] = evaluation.embedding_drift(loaded.model, loaded.tokenizer, conversations)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(summary, indent=2))


@data_app.command("validate")
def data_validate(file: Annotated[Path, typer.Argument(help="The data file to check.")]) -> None:
    """Check a fine-tuning file; list every problem with its line and field."""
    try:
        dataset = load_dataset(file)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"{file}: {len(dataset.conversations)} examples, {dataset.format} format, valid")


@data_app.command("mix")
def data_mix(
    out: OutOption,
    task: Annotated[str, typer.Option(help="Benign task: sst2, agnews or gsm8k.")] = "sst2",
    n: Annotated[int, typer.Option(help="Rows in all.")] = 100,
    harmful_fraction: Annotated[
        float, typer.Option(help="Share p of rows that are harmful pairs from the attack set.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Sampling and shuffling seed.")] = 0,
) -> None:
    """Write a fine-tuning set of n task rows of which a fraction p are harmful (the paper's attack)."""
    from vaccine_core.mixing import build_mix, write_rows

    try:
        rows = build_mix(task, n, harmful_fraction, get_settings().data_dir, seed)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    write_rows(out, rows)
    typer.echo(f"wrote {len(rows)} rows ({sum(r['harmful'] for r in rows)} harmful) to {out}")


JudgeOption = Annotated[
    str,
    typer.Option(
        "--judge",
        help="'refusal' (keyword refusal judge), or a model directory: a sequence classifier "
        "(multi-label or safe/unsafe) or a Llama Guard-style generative guard.",
    ),
]


@app.command()
def moderate(
    file: Annotated[Path, typer.Argument(help="JSON Lines with 'prompt' and 'response' fields.")],
    judge: JudgeOption = "refusal",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the verdicts here instead of stdout.")
    ] = None,
    device: DeviceOption = None,
) -> None:
    """Judge (prompt, response) pairs: one JSON line per input with flagged, score and categories."""
    from vaccine_core.data import read_rows
    from vaccine_core.moderation import load_judge

    try:
        rows = read_rows(file)
        moderator = load_judge(judge, device)
    except (ValueError, DatasetError) as exc:
        _fail(str(exc))
    pairs = []
    for line, row in rows:
        if not (
            isinstance(row, dict)
            and isinstance(row.get("prompt"), str)
            and isinstance(row.get("response"), str)
        ):
            _fail(f"line {line}: expected an object with string fields 'prompt' and 'response'")
        pairs.append((row["prompt"], row["response"]))
    verdicts = moderator.score(pairs)
    lines = [
        json.dumps({"flagged": v.flagged, "score": round(v.score, 6), "categories": list(v.categories)})
        for v in verdicts
    ]
    text = "\n".join(lines) + "\n"
    if out:
        out.write_text(text)
    else:
        typer.echo(text, nl=False)


@app.command()
def prescreen(
    file: Annotated[
        Path, typer.Argument(help="A fine-tuning file (alpaca, chat or prompt/completion rows).")
    ],
    judge: JudgeOption = "refusal",
    device: DeviceOption = None,
) -> None:
    """Score every row of a fine-tuning file; report flagged rows by line, their share and categories."""
    from vaccine_core.moderation import load_judge
    from vaccine_core.moderation.prescreen import prescreen as run_prescreen

    try:
        report = run_prescreen(file, load_judge(judge, device))
    except (ValueError, DatasetError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(report.to_dict(), indent=2))


@moderation_app.command("train")
def moderation_train(
    epochs: Annotated[int, typer.Option(help="Passes over the training pairs.")] = 4,
    max_length: Annotated[int, typer.Option(help="Tokens of question and answer read together.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for the head's initialisation and the data order.")] = 0,
) -> None:
    """Train the default judge (cross-encoder on the bundled MiniLM) once and cache it; print its path."""
    from vaccine_core.moderation.learned import JudgeTrainingConfig, ensure_default_judge

    _setup_logging()
    config = JudgeTrainingConfig(epochs=epochs, max_length=max_length, seed=seed)
    bar = ProgressBar("train judge")
    try:
        path = ensure_default_judge(get_settings().data_dir, config, on_progress=bar)
    finally:
        bar.close()
    typer.echo(str(path))


@moderation_app.command("evaluate")
def moderation_evaluate(
    judge: JudgeOption = "default",
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON report here too.")] = None,
    quantize: Annotated[
        bool, typer.Option(help="Score with int8 dynamic quantisation (default judge on a CPU).")
    ] = False,
    device: DeviceOption = None,
) -> None:
    """Score the held-out split (never trained on): accuracy, precision, recall, F1, confusion matrix,
    category accuracy, and agreement with the refusal-phrase judge."""
    from vaccine_core.moderation import RefusalPhraseJudge, load_judge
    from vaccine_core.moderation.dataset import load_labelled_pairs, split
    from vaccine_core.moderation.metrics import evaluate_judge

    _setup_logging()
    _train, held_out = split(load_labelled_pairs(get_settings().data_dir))
    options = {"quantize": True} if quantize else {}
    report = evaluate_judge(load_judge(judge, device, **options), held_out, reference=RefusalPhraseJudge())
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text + "\n")
    typer.echo(text)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Directory for the demo's runs.")] = Path("runs/demo"),
    limit: Annotated[int, typer.Option(help="Alignment examples.")] = 64,
    prompts: Annotated[int, typer.Option(help="Harmful prompts to evaluate.")] = 32,
) -> None:
    """Align the default model with Vaccine, fine-tune it on an attacked SST-2 sample, and evaluate both."""
    from vaccine_core.demo import run_demo

    _setup_logging()
    settings = get_settings()
    if not settings.data_dir.is_dir():
        _fail(f"data directory {settings.data_dir} not found; set VACCINE_DATA_DIR")
    typer.echo(json.dumps(run_demo(settings.data_dir, out, limit=limit, prompts=prompts), indent=2))


if __name__ == "__main__":
    app()
