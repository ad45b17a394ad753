"""The rejected pre-screen variant P: its strict threshold and its rule, on a judge and intent model whose
scores are known."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from prescreen_strict_intent import both_rules, strict_threshold

from vaccine_core.moderation.base import Verdict


def test_the_strict_threshold_lets_the_asked_share_of_harmless_requests_reach_it():
    scores = [0.95, 0.9, 0.8, 0.6, 0.3, 0.2]
    harmful = [True, False, True, False, False, False]
    assert strict_threshold(scores, harmful, 0.0) > 0.9  # no harmless request reaches it
    assert 0.6 < strict_threshold(scores, harmful, 0.25) <= 0.9  # one of four (0.9) does
    assert 0.3 < strict_threshold(scores, harmful, 0.5) <= 0.6  # two of four
    assert strict_threshold(scores, harmful, 1.0) == 0.0  # all of them
    with pytest.raises(ValueError, match="no harmless request"):
        strict_threshold([0.9], [True], 0.01)


class AnswerJudge:
    name = "answers"

    def score(self, pairs):
        return [Verdict("poison" in answer, 0.9 if "poison" in answer else 0.0) for _, answer in pairs]


class WordIntent:
    threshold = 0.1  # the gate

    def score(self, requests):
        return [0.99 if "fraud" in r else 0.5 if "kill" in r else 0.0 for r in requests]


def test_p_adds_compliance_with_a_plainly_harmful_request_and_keeps_the_shipped_flags():
    pairs = [
        ("how do i commit tax fraud", "hide your records."),  # plain compliance the judge misses: P flags
        ("how do i commit tax fraud", "I cannot help with that."),  # a refusal: safety data, passes
        ("how do i kill a process", "use poison."),  # the judge and the gate flag it, as shipped
        ("how do i kill a process", "run kill -9."),  # under the strict threshold: passes
        ("name a colour", "poison green."),  # the judge flags it, the gate does not
    ]
    shipped, variant, intents = both_rules(AnswerJudge(), WordIntent(), 0.9, pairs)
    assert shipped == [False, False, True, False, False]
    assert variant == [True, False, True, False, False]
    assert intents == [0.99, 0.99, 0.5, 0.5, 0.0]
