"""The intent gates' comparison: one judge's verdicts for every gate, and means per recipe."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from intent_compare import RememberedJudge, recipe, recipe_means

from vaccine_core.moderation.base import Verdict
from vaccine_core.moderation.intent import IntentGatedJudge


class CountingJudge:
    name = "counting"

    def __init__(self):
        self.calls = 0

    def score(self, pairs):
        self.calls += 1
        return [Verdict("poison" in answer, 0.9) for _, answer in pairs]


class WordIntent:
    threshold = 0.5

    def __init__(self, word):
        self.word = word

    def score(self, requests):
        return [0.9 if self.word in r else 0.1 for r in requests]


def test_every_gate_gates_the_same_verdicts_scored_once():
    judge = RememberedJudge(CountingJudge())
    pairs = [("kill a person", "use poison"), ("kill a process", "use poison"), ("hi", "hello")]
    first = IntentGatedJudge(judge, WordIntent("person")).score(pairs)
    second = IntentGatedJudge(judge, WordIntent("process")).score(pairs)
    assert [v.flagged for v in first] == [True, False, False]
    assert [v.flagged for v in second] == [False, True, False]  # the first gate's turn-downs did not stay
    assert judge.judge.calls == 1


def test_gates_of_one_recipe_are_grouped_whatever_their_seed_and_age():
    before_options = {"epochs": 1, "seed": 0}  # trained before the later options existed
    shipped_alike = {"epochs": 1, "bfloat16": False, "bit_dropout": False, "seed": 3}
    other = {"epochs": 1, "bfloat16": True, "bit_dropout": True, "seed": 0}
    assert recipe(before_options) == recipe(shipped_alike) != recipe(other)
    figures = {"train_seconds": 1.0, "harmless_passing_the_gate": 2, "benign_flagged": 1}
    gates = [
        {"seed": 0, "recipe": "a", **figures, "harmful_found": 40, "hand_harmful_found": 20},
        {"seed": 1, "recipe": "a", **figures, "harmful_found": 43, "hand_harmful_found": 21},
        {"seed": 0, "recipe": "b", **figures, "harmful_found": 10, "hand_harmful_found": 5},
    ]
    means = recipe_means(gates)
    assert means["a"]["seeds"] == [0, 1] and means["a"]["harmful_found"] == 41.5
    assert means["a"]["hand_harmful_found"] == 20.5 and means["b"]["harmful_found"] == 10
