"""The ``vaccine`` command with the service's subcommands added to the library's."""

import logging
import signal
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from alembic import command
from alembic.config import Config
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.db import get_engine
from service.settings import ServiceSettings, get_service_settings, settings_errors
from vaccine_core.cli import app
from vaccine_core.cli.common import fail

ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"

tenants_app = typer.Typer(help="Manage the service's tenants.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the service's database.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(db_app, name="db")


def service_settings() -> ServiceSettings:
    """The service's settings, or an error naming each environment variable that is out of bounds (every
    service command reads them first, so a bad value stops it before it starts anything)."""
    try:
        return get_service_settings()
    except ValidationError as exc:
        fail(settings_errors(exc))


def migrate() -> None:
    """Bring the configured database to the newest migration (idempotent)."""
    settings = service_settings()
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", settings.database_url)
    settings.home.mkdir(parents=True, exist_ok=True)
    command.upgrade(config, "head")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration to VACCINE_DATABASE_URL (default: the SQLite file in VACCINE_HOME)."""
    migrate()
    typer.echo(f"database at head: {get_service_settings().database_url}")


@tenants_app.command("create")
def tenants_create(name: Annotated[str, typer.Argument(help="The tenant's unique name.")]) -> None:
    """Create a tenant and print its API key: it is shown this once and stored only as a digest."""
    from service.tenants import create_tenant

    migrate()
    with Session(get_engine()) as session:
        try:
            tenant, key = create_tenant(session, name)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"tenant {tenant.id} ({name})\napi key: {key}")


WORKER_STOP_SECONDS = 10


def exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_worker(process: subprocess.Popen) -> None:
    """Stop the embedded worker with the service: a warm shutdown first, then a kill. Celery's warm
    shutdown waits for the task in hand, which may be a whole job; the job loses nothing by the kill (it
    resumes from its newest checkpoint when a worker next reaps it), and no worker outlives its service."""
    process.terminate()
    try:
        process.wait(timeout=WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[bool, typer.Option(help="Also run a worker (the embedded default).")] = True,
) -> None:
    """Run the service: migrate, register the default base, start a worker and the API. On a first start
    the worker aligns the default base (and trains the default judge) while the API already answers: jobs
    wait in the queue for the base, uploads for their pre-screen."""
    import sys

    import uvicorn

    from api.embedded import demo_key, register_default_base
    from api.main import create_app
    from service.models import BaseStatus
    from service.operator import ensure_operator_key
    from service.queue import dispatch, dispatch_alignment, dispatch_prescreen

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = service_settings()
    migrate()
    base = register_default_base(settings)
    if base.status != BaseStatus.READY:
        dispatch_alignment(base.id)  # idempotent: a worker finds a ready base and leaves it alone
    key = demo_key()
    operator_key = ensure_operator_key(settings)
    process = None
    if worker:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app:celery_app",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
        ]
        process = subprocess.Popen(command)
    typer.echo(
        f"\nserving on http://{host}:{port}/v1  base model: {base.id} ({base.status})  judge: "
        f"{settings.prescreen_judge}\n"
        f"demo tenant key (shown once): {key}\n"
        + (f"operator key (shown once; /admin and /console): {operator_key}\n" if operator_key else "")
    )
    # uvicorn shuts down gracefully on SIGTERM and then raises it again under the handler it found: make
    # that an exit, so that the worker is stopped below instead of outliving a process killed mid-way
    signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        uvicorn.run(
            create_app(
                dispatch=dispatch,
                dispatch_alignment=dispatch_alignment,
                dispatch_prescreen=dispatch_prescreen,
            ),
            host=host,
            port=port,
        )
    finally:
        if process is not None:
            stop_worker(process)
