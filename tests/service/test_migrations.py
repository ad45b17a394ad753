"""Alembic migrations: from an empty database up to head and back down, and in step with the models."""

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.models import Base
from tests.service_helpers import alembic_config, fresh_postgres_database


def check_round_trip(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, "head")
    engine = create_engine(url)
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) >= set(Base.metadata.tables)
        # the migrations create exactly what the ORM describes: autogenerate finds nothing to add
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    command.downgrade(config, "base")
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_sqlite_up_and_down(tmp_path):
    check_round_trip(f"sqlite:///{tmp_path / 'migrations.db'}")


@pytest.mark.postgres
def test_postgres_up_and_down():
    with fresh_postgres_database() as url:
        check_round_trip(url)
