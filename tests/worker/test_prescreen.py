"""The worker's pre-screen: what it prepares before a first upload arrives."""

import logging

import pytest

import worker.prescreen as worker_prescreen
from service.settings import get_service_settings
from vaccine_core.moderation.intent import INTENT_FILE, IntentTrainingConfig


@pytest.fixture
def gated_prescreen(monkeypatch):
    monkeypatch.setenv("VACCINE_PRESCREEN_JUDGE", "refusal+intent")
    get_service_settings.cache_clear()
    yield "refusal+intent"
    get_service_settings.cache_clear()


def test_an_untrained_pre_screen_judge_is_prepared_and_a_failure_only_logged(
    gated_prescreen, monkeypatch, caplog
):
    asked = []

    def failing(spec):
        asked.append(spec)
        raise RuntimeError("no data to train the gate on")

    monkeypatch.setattr(worker_prescreen, "shared_judge", failing)
    with caplog.at_level(logging.ERROR, logger="worker.prescreen"):
        worker_prescreen.warm_prescreen(gated_prescreen)  # does not raise: the first upload tries again
    assert asked == ["refusal+intent"]
    assert "the first upload tries again" in caplog.text


def test_a_trained_pre_screen_judge_is_left_alone(gated_prescreen, monkeypatch):
    trained = get_service_settings().home / "judges" / f"intent-0123456789-{IntentTrainingConfig().key()}"
    trained.mkdir(parents=True)
    (trained / INTENT_FILE).write_text("{}")
    monkeypatch.setattr(worker_prescreen, "shared_judge", lambda spec: pytest.fail("loaded again"))
    worker_prescreen.warm_prescreen(gated_prescreen)
    worker_prescreen.warm_prescreen("refusal")  # nothing to train
