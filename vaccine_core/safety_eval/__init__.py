"""Safety evaluation protocol v2: a fixed prompt split, greedy and sampled answers, answer buckets that
count a mute model apart, and paired bootstrap intervals."""

from vaccine_core.safety_eval.bootstrap import Interval, bootstrap_mean, paired_gap
from vaccine_core.safety_eval.buckets import MIN_WORDS, Bucket, bucket, degenerate_reason
from vaccine_core.safety_eval.protocol import (
    DECODINGS,
    PROMPT_SETS,
    JudgedAnswer,
    ProtocolConfig,
    answer_count,
    generate_answers,
    judge_answers,
    protocol_identity,
    summarise,
)
from vaccine_core.safety_eval.split import ProtocolPrompts, load_split

__all__ = [
    "DECODINGS",
    "MIN_WORDS",
    "PROMPT_SETS",
    "Bucket",
    "Interval",
    "JudgedAnswer",
    "ProtocolConfig",
    "ProtocolPrompts",
    "answer_count",
    "bootstrap_mean",
    "bucket",
    "degenerate_reason",
    "generate_answers",
    "judge_answers",
    "load_split",
    "paired_gap",
    "protocol_identity",
    "summarise",
]
