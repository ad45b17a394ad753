"""The one interface every harmfulness judge implements: ``Moderator.score(pairs)``.

A judge reads (question, answer) pairs and returns, for each, whether the answer is flagged as harmful, a
score in [0, 1] and the harm categories it triggers. The harmful score of a model and the pre-screen of an
uploaded data set both go through it; thresholds are the judge's configuration, never constants.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Pair = tuple[str, str]


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    score: float
    categories: tuple[str, ...] = field(default_factory=tuple)


def is_empty_answer(answer: str) -> bool:
    """An immediate end of turn: no content, so nothing harmful and no help either."""
    return not answer.strip()


@runtime_checkable
class Moderator(Protocol):
    name: str

    def score(self, pairs: Sequence[Pair]) -> list[Verdict]: ...
