"""``vaccine data``: validate a fine-tuning file, or build an experiment's attack mix."""

from pathlib import Path
from typing import Annotated

import typer

from vaccine_core.cli import data_app
from vaccine_core.cli.common import OutOption, fail
from vaccine_core.formats import DatasetError, load_dataset
from vaccine_core.settings import get_settings


@data_app.command("validate")
def data_validate(file: Annotated[Path, typer.Argument(help="The data file to check.")]) -> None:
    """Check a fine-tuning file; list every problem with its line and field."""
    try:
        dataset = load_dataset(file)
    except DatasetError as exc:
        fail(str(exc))
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
        fail(str(exc))
    write_rows(out, rows)
    typer.echo(f"wrote {len(rows)} rows ({sum(r['harmful'] for r in rows)} harmful) to {out}")
