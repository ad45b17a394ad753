"""How much of the judge's held-out F1 depends on whose labels it is scored against.

The test split is scored once by a judge (as the service runs it; ``--int8`` for the default judge's
int8 CPU path), then
compared with three label sets: as shipped (BeaverTails' attack rows all harmful, JailbreakBench as its
automated judge decided), BeaverTails' answers read by hand, and both sources read by hand (borderline
answers left out, ``vaccine_core/moderation/*_answers_by_hand.json``). Each F1 comes with a 95 % bootstrap
interval that resamples questions, not pairs: JailbreakBench holds about 15 answers to each of its 21 test
questions, and answers to one question are not independent. Also printed: how JailbreakBench's verdicts
and the hand labels agree on its test answers, and how many flags move when the split is scored in two
halves or one pair at a time instead of whole (int8 activations are quantised per batch).

    .venv/bin/python benchmarks/judge_labels.py [--judge default] [--int8]

Writes benchmarks/results/judge_labels.json (judge_labels-int8.json with --int8).
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.mixing import read_jsonl
from vaccine_core.moderation import load_judge
from vaccine_core.moderation.dataset import (
    SOURCE_FILES,
    LabelledPair,
    jailbreakbench_hand_labels,
    pair_key,
    question_part,
    split,
)
from vaccine_core.moderation.learned import calibrated_threshold, judge_data
from vaccine_core.settings import get_settings

RESAMPLES = 2000


def f1_by_question(pairs: list[LabelledPair], flags: dict[tuple[str, str], bool], seed: int = 0) -> dict:
    """F1, precision and recall over ``pairs`` and F1's 95 % interval from resampling questions."""
    questions = sorted({p.question for p in pairs})
    # per question: [true positives, false positives, false negatives]
    counts = np.zeros((len(questions), 3))
    index = {q: i for i, q in enumerate(questions)}
    for p in pairs:
        flagged = flags[(p.question, p.answer)]
        counts[index[p.question]] += (
            p.harmful and flagged,
            not p.harmful and flagged,
            p.harmful and not flagged,
        )

    def f1(total: np.ndarray) -> float:
        return float(2 * total[0] / (2 * total[0] + total[1] + total[2]))

    rng = np.random.default_rng(seed)
    draws = [f1(counts[rng.integers(0, len(questions), len(questions))].sum(0)) for _ in range(RESAMPLES)]
    tp, fp, fn = counts.sum(0)
    return {
        "pairs": len(pairs),
        "questions": len(questions),
        "f1": round(f1(counts.sum(0)), 4),
        "f1_interval": [round(float(x), 4) for x in np.percentile(draws, [2.5, 97.5])],
        "precision": round(float(tp / (tp + fp)), 4),
        "recall": round(float(tp / (tp + fn)), 4),
    }


def scored(judge: Any, pairs: list[LabelledPair]) -> dict[tuple[str, str], bool]:
    """Each pair's flag, the pairs scored together as ``vaccine moderation evaluate`` scores a split."""
    keys = [(p.question, p.answer) for p in pairs]
    return dict(zip(keys, (v.flagged for v in judge.score(keys)), strict=True))


def verdict_agreement(data_dir: Path) -> dict[str, int]:
    """JailbreakBench's verdict against the hand label, over its test answers (pairs, duplicates too)."""
    labels = jailbreakbench_hand_labels()
    rows = [r for r in read_jsonl(data_dir / SOURCE_FILES[0]) if question_part(r["prompt"]) == "test"]
    verdict = {True: "harmful", False: "not harmful"}
    counts = Counter(
        f"{verdict[bool(r['harmful'])]} -> {labels[pair_key(r['prompt'], r['response'] or '')]}" for r in rows
    )
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--judge", default="default")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="Score with int8 dynamic quantisation, the threshold calibrated on validation at int8.",
    )
    args = parser.parse_args()
    data_dir = get_settings().data_dir
    shipped = split(judge_data(data_dir, hand_labels=False))[2]
    read = split(judge_data(data_dir, hand_labels=True))[2]
    beavertails_read = [p for p in read if p.source != "jailbreakbench"] + [
        p for p in shipped if p.source == "jailbreakbench"
    ]
    judge = load_judge(args.judge, **({"quantize": True} if args.int8 else {}))
    if args.int8:  # the threshold the int8_scoring option would have calibrated
        judge.threshold, _ = calibrated_threshold(judge, split(judge_data(data_dir))[1])
    sets = {"as_shipped": shipped, "beavertails_read_by_hand": beavertails_read, "both_read_by_hand": read}
    flags = {name: scored(judge, pairs) for name, pairs in sets.items()}
    label_sets = {name: f1_by_question(pairs, flags[name]) for name, pairs in sets.items()}
    # int8 activations are quantised per batch, so a pair's verdict can move with the pairs batched
    # beside it: the same split scored in two halves, and one pair at a time, instead of whole
    whole = flags["both_read_by_hand"]
    batchings = {
        "halves": scored(judge, read[: len(read) // 2]) | scored(judge, read[len(read) // 2 :]),
        "one_at_a_time": {k: v for p in read for k, v in scored(judge, [p]).items()},
    }
    result = {
        "judge": str(getattr(judge, "path", args.judge)),
        "threshold": getattr(judge, "threshold", None),
        "quantized": getattr(judge, "quantized", False),
        "label_sets": label_sets,
        "jailbreakbench_verdict_to_hand_label": verdict_agreement(data_dir),
        "flags_moved_by_batching": {
            name: f"{sum(whole[k] != batched[k] for k in whole)}/{len(whole)}"
            for name, batched in batchings.items()
        },
        "resamples": RESAMPLES,
        "machine": machine_info(),
        **provenance(__file__),
    }
    out = RESULTS / f"judge_labels{'-int8' if args.int8 else ''}.json"
    write_result(out, result)
    shown = ("label_sets", "jailbreakbench_verdict_to_hand_label", "flags_moved_by_batching")
    print(json.dumps({k: result[k] for k in shown}, indent=2))


if __name__ == "__main__":
    main()
