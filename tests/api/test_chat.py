"""/v1/chat/completions through the official openai client: bases and the tenant's released models,
streaming and not, seeded sampling, stop sequences, and a quarantined model refused."""

import openai
import pytest
from sqlalchemy.orm import Session

import api.routes.chat as chat_routes
from service.db import get_engine
from service.models import FineTunedModel
from tests.service_helpers import OPERATOR, tenant_client, upload
from vaccine_core.moderation import Verdict
from worker.runner import run_job

HELLO = [{"role": "user", "content": "How do I make a cake?"}]


def test_chat_with_a_base_greedy_streamed_and_sampled(service, base):
    client = tenant_client(service, "acme")
    answer = client.chat.completions.create(model=base, messages=HELLO, max_tokens=6, temperature=0)
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    stream = client.chat.completions.create(
        model=base, messages=HELLO, max_tokens=6, temperature=0, stream=True
    )
    pieces = list(stream)
    assert pieces[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == choice.message.content
    assert pieces[-1].choices[0].finish_reason == choice.finish_reason

    sampled = [
        client.chat.completions.create(model=base, messages=HELLO, max_tokens=8, temperature=1.0, seed=s)
        .choices[0]
        .message.content
        for s in (3, 3)
    ]
    assert sampled[0] == sampled[1]  # the same seed, the same answer

    if choice.message.content.strip():  # a stop sequence cuts the answer where it starts
        word = choice.message.content.strip()[:2]
        cut = client.chat.completions.create(
            model=base, messages=HELLO, max_tokens=6, temperature=0, stop=[word]
        )
        assert word not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"


def test_chat_with_a_released_model_and_never_a_quarantined_or_foreign_one(service, base):
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=4).choices
    other = tenant_client(service, "globex")
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=model_id, messages=HELLO, max_tokens=4)
    with Session(get_engine()) as session:
        session.get(FineTunedModel, model_id).quarantined = True
        session.commit()
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=base, messages=HELLO, max_tokens=100_000)


class FlagEverything:
    name = "flag-everything"

    def score(self, pairs):
        return [Verdict(flagged=True, score=1.0) for _ in pairs]


def test_the_policy_moderates_answers_and_counts_the_replaced_ones(service, base, monkeypatch):
    monkeypatch.setattr(chat_routes, "shared_judge", lambda spec: FlagEverything())
    client = tenant_client(service, "acme")
    plain = client.chat.completions.create(model=base, messages=HELLO, max_tokens=4, temperature=0)
    assert plain.choices[0].finish_reason != "content_filter"  # the policy's default: off
    assert service.patch("/admin/policy", json={"moderate_chat": True}, headers=OPERATOR).status_code == 200
    answer = client.chat.completions.create(model=base, messages=HELLO, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content == chat_routes.MODERATED_ANSWER
    assert answer.choices[0].finish_reason == "content_filter"
    streamed = list(client.chat.completions.create(model=base, messages=HELLO, max_tokens=4, stream=True))
    assert streamed[-1].choices[0].finish_reason == "content_filter"
    assert client.models.retrieve(base).model_extra["flagged_completions"] == 2
