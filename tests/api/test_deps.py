"""Request dependencies under concurrency: more requests than pooled connections and pool threads."""

import asyncio

import anyio.to_thread
import httpx
from sqlalchemy.orm import Session

from service.db import get_engine
from service.settings import get_service_settings
from service.tenants import create_tenant


def test_more_requests_than_connections_and_threads_all_get_answers(service, monkeypatch):
    # two connections and two pool threads against 40 requests at once: a request that holds a connection
    # while it waits for a thread (to serialise its answer) used to wait on threads that all waited for
    # connections, until the pool's 30 s timeout answered 500s
    monkeypatch.setenv("VACCINE_DATABASE_POOL_SIZE", "1")
    monkeypatch.setenv("VACCINE_DATABASE_MAX_OVERFLOW", "1")
    get_service_settings.cache_clear()
    get_engine().dispose()
    get_engine.cache_clear()
    with Session(get_engine()) as session:
        _tenant, key = create_tenant(session, "many")

    async def burst() -> list[int]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        transport = httpx.ASGITransport(app=service.app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as http:
            answers = await asyncio.wait_for(
                asyncio.gather(*(http.get("/v1/fine_tuning/jobs") for _ in range(40))), timeout=20
            )
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * 40
