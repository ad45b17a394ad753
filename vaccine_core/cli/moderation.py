"""Moderation commands: judge pairs, pre-screen a file, train and evaluate the default judge."""

import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from vaccine_core.cli import app, moderation_app
from vaccine_core.cli.common import DeviceOption, JudgeOption, fail, setup_logging
from vaccine_core.formats import DatasetError
from vaccine_core.moderation.judge_config import JudgeTrainingConfig
from vaccine_core.progress import ProgressBar
from vaccine_core.settings import get_settings


def option_help(name: str, config: type = JudgeTrainingConfig) -> str:
    """A training option's help, written once beside its default in ``config`` (the judge's by default)."""
    return next(f.metadata["help"] for f in fields(config) if f.name == name)


def with_given(config: Any, given: dict[str, Any]) -> Any:
    """``config`` with the options the command line gave (those left unset keep their defaults)."""
    return replace(config, **{name: value for name, value in given.items() if value is not None})


def intent_help(name: str) -> str:
    from vaccine_core.moderation.intent import IntentTrainingConfig

    return option_help(name, IntentTrainingConfig)


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
    from vaccine_core.formats import read_rows
    from vaccine_core.moderation import load_judge

    try:
        rows = read_rows(file)
        moderator = load_judge(judge, device)
    except (ValueError, DatasetError) as exc:
        fail(str(exc))
    pairs = []
    for line, row in rows:
        if not (
            isinstance(row, dict)
            and isinstance(row.get("prompt"), str)
            and isinstance(row.get("response"), str)
        ):
            fail(f"line {line}: expected an object with string fields 'prompt' and 'response'")
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
        fail(str(exc))
    typer.echo(json.dumps(report.to_dict(), indent=2))


@moderation_app.command("train")
def moderation_train(
    epochs: Annotated[int | None, typer.Option(help=option_help("epochs"))] = None,
    max_length: Annotated[int | None, typer.Option(help=option_help("max_length"))] = None,
    answer_tail: Annotated[int | None, typer.Option(help=option_help("answer_tail"))] = None,
    group_by_length: Annotated[bool | None, typer.Option(help=option_help("group_by_length"))] = None,
    frozen_layers: Annotated[int | None, typer.Option(help=option_help("frozen_layers"))] = None,
    attention_dropout: Annotated[
        float | None, typer.Option(min=0, max=1, help=option_help("attention_dropout"))
    ] = None,
    eager_attention: Annotated[bool | None, typer.Option(help=option_help("eager_attention"))] = None,
    bit_dropout: Annotated[bool | None, typer.Option(help=option_help("bit_dropout"))] = None,
    unpadded: Annotated[bool | None, typer.Option(help=option_help("unpadded"))] = None,
    harmful_swapped: Annotated[float | None, typer.Option(help=option_help("harmful_swapped"))] = None,
    cache_frozen: Annotated[bool | None, typer.Option(help=option_help("cache_frozen"))] = None,
    average_tail: Annotated[float | None, typer.Option(help=option_help("average_tail"))] = None,
    opener: Annotated[float | None, typer.Option(help=option_help("opener"))] = None,
    hand_labels: Annotated[bool | None, typer.Option(help=option_help("hand_labels"))] = None,
    int8_scoring: Annotated[bool | None, typer.Option(help=option_help("int8_scoring"))] = None,
    bfloat16: Annotated[bool | None, typer.Option(help=option_help("bfloat16"))] = None,
    validation_percent: Annotated[
        int | None, typer.Option(min=1, max=60, help=option_help("validation_percent"))
    ] = None,
    seed: Annotated[int, typer.Option(help=option_help("seed"))] = 0,
) -> None:
    """Train the default judge (cross-encoder on the bundled MiniLM) once and cache it; print its path."""
    from vaccine_core.moderation.learned import ensure_default_judge

    setup_logging()
    given = {
        "epochs": epochs,
        "max_length": max_length,
        "answer_tail": answer_tail,
        "group_by_length": group_by_length,
        "frozen_layers": frozen_layers,
        "attention_dropout": attention_dropout,
        "eager_attention": eager_attention,
        "bit_dropout": bit_dropout,
        "unpadded": unpadded,
        "harmful_swapped": harmful_swapped,
        "cache_frozen": cache_frozen,
        "average_tail": average_tail,
        "opener": opener,
        "hand_labels": hand_labels,
        "int8_scoring": int8_scoring,
        "bfloat16": bfloat16,
        "validation_percent": validation_percent,
    }
    config = with_given(JudgeTrainingConfig(seed=seed), given)
    bar = ProgressBar("train judge")
    try:
        path = ensure_default_judge(get_settings().data_dir, config, on_progress=bar)
    finally:
        bar.close()
    typer.echo(str(path))


@moderation_app.command("train-intent")
def moderation_train_intent(
    bfloat16: Annotated[bool | None, typer.Option(help=intent_help("bfloat16"))] = None,
    bit_dropout: Annotated[bool | None, typer.Option(help=intent_help("bit_dropout"))] = None,
    unpadded: Annotated[bool | None, typer.Option(help=intent_help("unpadded"))] = None,
    seed: Annotated[int, typer.Option(help=intent_help("seed"))] = 0,
) -> None:
    """Train the pre-screen's request-intent gate (``+intent`` judges) once and cache it; print its path.
    Workers train it on first use otherwise: this lets an image or an operator do it beforehand."""
    from vaccine_core.moderation.intent import IntentTrainingConfig, ensure_intent_model

    setup_logging()
    given = {"bfloat16": bfloat16, "bit_dropout": bit_dropout, "unpadded": unpadded}
    config = with_given(IntentTrainingConfig(seed=seed), given)
    typer.echo(str(ensure_intent_model(get_settings().data_dir, config)))


@moderation_app.command("evaluate")
def moderation_evaluate(
    judge: JudgeOption = "default",
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSON report here too.")] = None,
    quantize: Annotated[
        bool | None,
        typer.Option(
            help="int8 dynamic quantisation of the default judge on a CPU (default: as its threshold "
            "was calibrated; float32 for judges trained with the default options)."
        ),
    ] = None,
    device: DeviceOption = None,
    hand_labels: Annotated[
        bool,
        typer.Option(
            help="Label BeaverTails' answers and JailbreakBench's test answers as read by hand, borderline "
            "ones left out (off: BeaverTails all harmful, JailbreakBench as its automated judge decided)."
        ),
    ] = True,
) -> None:
    """Score the held-out split (never trained on): accuracy, precision, recall, F1, confusion matrix,
    category accuracy, and agreement with the refusal-phrase judge."""
    from vaccine_core.moderation import RefusalPhraseJudge, load_judge
    from vaccine_core.moderation.dataset import split
    from vaccine_core.moderation.learned import judge_data
    from vaccine_core.moderation.metrics import evaluate_judge

    setup_logging()
    _train, _validation, held_out = split(judge_data(get_settings().data_dir, hand_labels=hand_labels))
    options = {} if quantize is None else {"quantize": quantize}
    moderator = load_judge(judge, device, **options)
    report = {
        "command": "vaccine " + " ".join(sys.argv[1:]),
        "judge_path": str(getattr(moderator, "path", judge)),
        "quantized": getattr(moderator, "quantized", False),
        "labels": "BeaverTails and JailbreakBench read by hand" if hand_labels else "as shipped",
        **evaluate_judge(moderator, held_out, reference=RefusalPhraseJudge()),
    }
    text = json.dumps(report, indent=2)
    if out:
        out.write_text(text + "\n")
    typer.echo(text)
