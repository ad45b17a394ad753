"""``vaccine evaluate``: harmful score, fine-tune accuracy and embedding drift of a model."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm.auto import tqdm

from vaccine_core.cli import app
from vaccine_core.cli.common import DeviceOption, JudgeOption, fail, setup_logging
from vaccine_core.formats import DatasetError, load_dataset
from vaccine_core.settings import get_settings


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Option("--model", help="A fine-tuning or alignment run's directory, or any model spec.")
    ],
    prompts: Annotated[
        Path | None,
        typer.Option("--prompts", help="Harmful prompts (JSON Lines with 'prompt') for the harmful score."),
    ] = None,
    judge: JudgeOption = "refusal",
    harmless_prompts: Annotated[
        Path | None,
        typer.Option(help="Harmless prompts (JSON Lines with 'prompt'): measure over-refusal on them."),
    ] = None,
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

    setup_logging()
    if prompts is None and harmless_prompts is None and task is None and drift_data is None:
        raise typer.BadParameter("give at least one of --prompts, --harmless-prompts, --task or --drift-data")
    try:
        moderator = load_judge(judge, device)
        task_spec = get_task(task) if task else None
        prompt_list = evaluation.load_prompts(prompts, limit) if prompts else None
        harmless_list = evaluation.load_prompts(harmless_prompts, limit) if harmless_prompts else None
    except (ValueError, DatasetError) as exc:
        fail(str(exc))
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
    if harmless_list is not None:
        with tqdm(total=len(harmless_list), desc="over-refusal", unit="prompt") as bar:
            refusal = evaluation.refusal_rate(
                loaded.model,
                loaded.tokenizer,
                harmless_list,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                on_batch=bar.update,
            )
        summary["over_refusal"] = refusal.summary()
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
            fail("--drift-data needs a fine-tuned run: drift compares it with its aligned base")
        conversations = load_dataset(drift_data, limit=drift_limit).conversations
        summary["embedding_drift"] = evaluation.embedding_drift(loaded.model, loaded.tokenizer, conversations)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(summary, indent=2))


@app.command("safety-eval")
def safety_eval(
    model: Annotated[
        str, typer.Option("--model", help="A fine-tuning or alignment run's directory, or any model spec.")
    ],
    judge: JudgeOption = "default",
    harmful: Annotated[int, typer.Option(help="Harmful prompts: the protocol split's first N.")] = 256,
    harmless: Annotated[int, typer.Option(help="Harmless prompts: the split's first N.")] = 128,
    borderline: Annotated[int, typer.Option(help="Borderline prompts (only sound harmful).")] = 100,
    samples: Annotated[int, typer.Option(help="Sampled answers per prompt, beside the greedy one.")] = 2,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the sampled answers.")] = 0,
    device: DeviceOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Directory for answers.jsonl (every answer, its bucket) and summary.json."
        ),
    ] = None,
) -> None:
    """Safety evaluation protocol v2: greedy and sampled answers to the fixed split's harmful, harmless and
    borderline prompts, each put in a bucket (degenerate, harmful, refusal, other); print the summary."""
    from vaccine_core import evaluation
    from vaccine_core.inference import load_for_inference
    from vaccine_core.moderation import load_judge
    from vaccine_core.safety_eval import (
        ProtocolConfig,
        answer_count,
        generate_answers,
        judge_answers,
        load_split,
        protocol_identity,
        summarise,
    )

    setup_logging()
    try:
        config = ProtocolConfig(
            harmful, harmless, borderline, samples, max_new_tokens=max_new_tokens, seed=seed
        )
        prompts = load_split(get_settings().data_dir)
        moderator = load_judge(judge, device)
    except ValueError as exc:
        fail(str(exc))
    loaded = load_for_inference(model, device)
    with tqdm(total=answer_count(prompts, config), desc="protocol v2", unit="answer") as bar:
        answers = generate_answers(loaded.model, loaded.tokenizer, prompts, config, on_batch=bar.update)
    judged = judge_answers(answers, prompts, config, moderator)
    summary = {"model": model, "protocol": protocol_identity(prompts, config, moderator), **summarise(judged)}
    if out:
        evaluation.write_jsonl(out / "answers.jsonl", judged)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    typer.echo(json.dumps(summary, indent=2))
