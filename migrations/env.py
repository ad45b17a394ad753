"""Alembic environment: the service's metadata, and the URL from the settings unless one is given."""

from alembic import context

from service.db import make_engine
from service.models import Base
from service.settings import get_service_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_service_settings().database_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    with make_engine(url).connect() as connection:
        # batch mode lets SQLite, which cannot ALTER most things, take the same migrations as PostgreSQL
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
