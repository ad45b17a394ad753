"""``/v1/chat/completions`` in OpenAI's shape, streaming or not: talk to a ready base or to one of the
tenant's released fine-tuned models (a quarantined one answers 403)."""

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.deps import SettingsDep, authenticate
from api.errors import APIError
from service.db import get_engine
from service.inference import ChatModels, Completion
from service.models import BaseModelRecord, BaseStatus, FineTunedModel, Tenant
from service.policy import get_policy
from service.settings import get_service_settings
from vaccine_core.moderation import shared_judge

router = APIRouter(prefix="/v1/chat", tags=["chat"])


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: Annotated[int, Field(ge=1, le=1024)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1024)] | None = None
    temperature: float = Field(default=1.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="one answer a request")


DEFAULT_MAX_TOKENS = 256


def model_spec(session: Session, tenant: Tenant, model_id: str) -> Path:
    tuned = session.get(FineTunedModel, model_id)
    if tuned is not None and tuned.tenant_id == tenant.id:
        if tuned.quarantined:
            raise APIError(
                403, "quarantined", "This model failed the release gate and awaits an operator's review."
            )
        return Path(tuned.path)
    base = session.get(BaseModelRecord, model_id)
    if base is not None and base.status == BaseStatus.READY and base.path:
        return Path(base.path)
    raise APIError(404, "model_not_found", f"No model '{model_id}' to chat with.", param="model")


def engine(request: Request) -> ChatModels:
    if not hasattr(request.app.state, "chat_models"):
        request.app.state.chat_models = ChatModels()
    return request.app.state.chat_models


# A chat generates for seconds: it holds no admitted session (api.deps.get_session) meanwhile, and reads
# what it needs with short sessions of its own, closed before generation starts.


def caller(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> Tenant:
    with Session(get_engine(), expire_on_commit=False) as session:
        return authenticate(session, settings, authorization)


def looked_up(tenant: Tenant, model_id: str) -> tuple[Path, bool]:
    """The model's weights, and whether answers pass the judge first."""
    with Session(get_engine()) as session:
        return model_spec(session, tenant, model_id), get_policy(session).moderate_chat


@router.post("/completions")
async def chat_completions(
    body: ChatRequest, request: Request, tenant: Annotated[Tenant, Depends(caller)]
) -> Any:
    spec, moderate = await run_in_threadpool(looked_up, tenant, body.model)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise APIError(400, "invalid_request", "At most 4 stop sequences.", param="stop")
    options = {
        "max_tokens": body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed if body.seed is not None else 0,
        "stop": stop,
    }
    messages = [m.model_dump() for m in body.messages]
    identifier, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream and not moderate:  # tokens as they are generated
        pieces = engine(request).stream(body.model, spec, messages, **options)
        return StreamingResponse(
            live_chunks(identifier, created, body.model, pieces), media_type="text/event-stream"
        )
    completion: Completion = await run_in_threadpool(
        engine(request).complete, body.model, spec, messages, **options
    )
    if moderate:  # the judge reads the whole answer before any of it leaves
        completion = await run_in_threadpool(moderated, body, completion)
    if body.stream:
        return StreamingResponse(
            chunks(identifier, created, body.model, completion), media_type="text/event-stream"
        )
    return {
        "id": identifier,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


MODERATED_ANSWER = "I can't help with that."


def moderated(body: ChatRequest, completion: Completion) -> Completion:
    """The answer as the safety judge lets it out: a flagged one is replaced by a refusal (OpenAI's
    ``content_filter`` finish reason) and counted on the model."""
    question = next((m.content for m in reversed(body.messages) if m.role == "user"), "")
    judge = shared_judge(get_service_settings().safety_judge)
    if not judge.score([(question, completion.text)])[0].flagged:
        return completion
    with Session(get_engine()) as session:
        for table in (FineTunedModel, BaseModelRecord):
            session.execute(
                update(table)
                .where(table.id == body.model)
                .values(flagged_completions=table.flagged_completions + 1)
                .execution_options(synchronize_session=False)
            )
        session.commit()
    return replace(completion, text=MODERATED_ANSWER, finish_reason="content_filter")


def event(identifier: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    """One server-sent event in OpenAI's chunk shape."""
    chunk = {
        "id": identifier,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


def live_chunks(
    identifier: str, created: int, model: str, pieces: Iterator[str | Completion]
) -> Iterator[str]:
    """The role, then each piece of the answer as the model writes it, then the finish reason."""
    yield event(identifier, created, model, {"role": "assistant", "content": ""})
    for piece in pieces:
        if isinstance(piece, Completion):
            yield event(identifier, created, model, {}, piece.finish_reason)
        else:
            yield event(identifier, created, model, {"content": piece})
    yield "data: [DONE]\n\n"


def chunks(identifier: str, created: int, model: str, completion: Completion) -> Iterator[str]:
    """A whole answer as a stream (after output moderation has read it): the role, the answer word by
    word, the finish reason."""
    yield event(identifier, created, model, {"role": "assistant", "content": ""})
    words = completion.text.split(" ")
    for i, word in enumerate(words):
        yield event(identifier, created, model, {"content": word if i == 0 else " " + word})
    yield event(identifier, created, model, {}, completion.finish_reason)
    yield "data: [DONE]\n\n"
