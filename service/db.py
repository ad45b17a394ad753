"""The engine. SQLite for the embedded default, PostgreSQL in production."""

from functools import lru_cache

from sqlalchemy import Engine, create_engine, event

from service.settings import get_service_settings


def make_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> Engine:
    pool = {"pool_size": pool_size, "max_overflow": max_overflow}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # foreign keys and concurrent readers
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    # a pooled connection is tested before use (a restarted server leaves them all dead), and a server that
    # does not answer fails a request in seconds instead of hanging it
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5}, **pool)


@lru_cache
def get_engine() -> Engine:
    settings = get_service_settings()
    return make_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
