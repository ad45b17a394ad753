"""The ``vaccine`` command with the service's subcommands added to the library's."""

from pathlib import Path
from typing import Annotated

import typer
from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session

from api.db import get_engine
from api.settings import get_service_settings
from vaccine_core.cli import app
from vaccine_core.cli.common import fail

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"

tenants_app = typer.Typer(help="Manage the service's tenants.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the service's database.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(db_app, name="db")


def migrate() -> None:
    """Bring the configured database to the newest migration (idempotent)."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", get_service_settings().database_url)
    get_service_settings().home.mkdir(parents=True, exist_ok=True)
    command.upgrade(config, "head")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to VACCINE_DATABASE_URL (default: the SQLite file in VACCINE_HOME)."""
    migrate()
    typer.echo(f"database at head: {get_service_settings().database_url}")


@tenants_app.command("create")
def tenants_create(name: Annotated[str, typer.Argument(help="The tenant's unique name.")]) -> None:
    """Create a tenant and print its API key: it is shown this once and stored only as a digest."""
    from api.tenants import create_tenant

    migrate()
    with Session(get_engine()) as session:
        try:
            tenant, key = create_tenant(session, name)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"tenant {tenant.id} ({name})\napi key: {key}")
