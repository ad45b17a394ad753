"""Harmfulness judges behind one interface, and the data pre-screen built on them."""

from vaccine_core.moderation.base import Moderator, Pair, Verdict, is_empty_answer
from vaccine_core.moderation.refusal import RefusalPhraseJudge, is_refusal
from vaccine_core.moderation.registry import load_judge, shared_judge

__all__ = [
    "Moderator",
    "Pair",
    "RefusalPhraseJudge",
    "Verdict",
    "is_empty_answer",
    "is_refusal",
    "load_judge",
    "shared_judge",
]
