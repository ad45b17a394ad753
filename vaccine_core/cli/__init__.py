"""The ``vaccine`` command: align, fine-tune and evaluate models, moderate, and prepare data."""

import typer

app = typer.Typer(
    help="Vaccine: perturbation-aware safety alignment and LoRA fine-tuning that resists harmful data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Validate and prepare fine-tuning data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
moderation_app = typer.Typer(help="Train and evaluate the default harmfulness judge.", no_args_is_help=True)
app.add_typer(moderation_app, name="moderation")

# The command modules register themselves on the apps above.
from vaccine_core.cli import data, evaluate, moderation, train  # noqa: E402, F401
