"""The judge's padding counted whole and by runs (benchmarks/judge_unpadded.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from judge_unpadded import WHOLE, padding_counts

from vaccine_core.moderation.judge_config import JudgeTrainingConfig


def test_runs_pad_fewer_tokens_in_more_passes_and_at_no_cost_none():
    lengths = [5, 40, 7, 90, 12, 128, 33, 64, 9, 100] * 7
    config = JudgeTrainingConfig(batch_size=8, epochs=2)
    counts = padding_counts(lengths, config, [0, 20, 1000])
    assert counts["real_tokens"] == 2 * sum(lengths)
    assert counts["runs-0"]["padded_tokens"] == counts["real_tokens"]  # a run for every length
    # more cost a run, fewer passes and more padding, never more than the whole batches'
    passes = [counts[name]["encoder_passes"] for name in ("runs-0", "runs-20", "runs-1000", WHOLE)]
    padded = [counts[name]["padded_tokens"] for name in ("runs-0", "runs-20", "runs-1000", WHOLE)]
    assert passes == sorted(passes, reverse=True) and passes[-1] == 2 * -(-len(lengths) // 8)
    assert padded == sorted(padded) and padded[-2] <= padded[-1]
    assert counts[WHOLE]["padded_to_real"] > 1
