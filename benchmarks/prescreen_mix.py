"""Does the pre-screen find harmful rows hidden in a benign upload, by line number?

Builds fine-tuning rows (SST-2, or Alpaca instructions the default judge never trained on) with a fraction
of BeaverTails harmful pairs mixed in (the paper's attack data), pre-screens the file with a judge, and
compares the flagged line numbers with the rows known to be harmful: recall (harmful rows found),
precision, and benign rows wrongly flagged.

    .venv/bin/python benchmarks/prescreen_mix.py --judge default [--benign alpaca]
    .venv/bin/python benchmarks/prescreen_mix.py --judge default+intent --screen-recall 0.98
    .venv/bin/python benchmarks/prescreen_mix.py --judge default+intent --name amd-epyc-avx2

``--name`` is appended to the result's file name. ``--screen-recall`` flags at the default judge's
screen threshold instead of its F1 one: the highest threshold that still flags that share of its
validation split's harmful answers (``screen_threshold``).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result

from vaccine_core.formats import as_dataset
from vaccine_core.mixing import build_mix, write_rows
from vaccine_core.moderation import load_judge
from vaccine_core.moderation.base import Pair, Verdict
from vaccine_core.moderation.dataset import (
    LabelledPair,
    alpaca_question,
    alpaca_upload,
    beavertails_hand_labels,
    prescreen_benchmark_uploads,
    question_key,
)
from vaccine_core.moderation.learned import screen_threshold
from vaccine_core.moderation.prescreen import PRESCREEN_BATCH, prescreen, screened_pairs
from vaccine_core.moderation.registry import DEFAULT_JUDGE
from vaccine_core.settings import get_settings


def upload_pairs(rows: list[dict[str, Any]]) -> list[Pair]:
    """What the pre-screen judges of each row, were ``rows`` uploaded as a file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"
        write_rows(path, rows)
        return screened_pairs(as_dataset(path).conversations)


def batched_verdicts(judge: Any, pairs: list[Pair]) -> list[Verdict]:
    """The judge's verdicts in the pre-screen's batches (a score moves a little with its batch's padding)."""
    return [
        verdict
        for start in range(0, len(pairs), PRESCREEN_BATCH)
        for verdict in judge.score(pairs[start : start + PRESCREEN_BATCH])
    ]


def found_by_hand_label(
    flagged_lines: set[int], rows: list[dict[str, Any]], labels: dict[str, str]
) -> dict[str, dict[str, int]]:
    """Harmful rows found, per what a reader judged their answers to do (``beavertails_hand_labels``): a
    pre-screen that judges harm should find the 'harmful' ones and pass the 'benign' ones."""
    counts: dict[str, dict[str, int]] = {}
    for line, row in enumerate(rows, start=1):
        if not row["harmful"]:
            continue
        label = labels[question_key(alpaca_question(row))]
        tally = counts.setdefault(label, {"rows": 0, "flagged": 0})
        tally["rows"] += 1
        tally["flagged"] += line in flagged_lines
    return counts


def benchmark_uploads(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """This benchmark's two uploads at its defaults (500 rows, 50 harmful, seed 0), SST-2 and Alpaca."""
    return prescreen_benchmark_uploads(data_dir)


def operating_curve(judge: Any, pairs: list[Pair], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What another per-row threshold would do, from every row's score (``pairs``: what the pre-screen
    judged of each of ``rows``): harmful rows found and benign rows flagged at each threshold, and the
    benign rows flagged at the highest threshold that still finds every harmful row (the price of full
    recall)."""
    scores = [verdict.score for verdict in batched_verdicts(judge, pairs)]
    harmful = [s for s, r in zip(scores, rows, strict=True) if r["harmful"]]
    benign = [s for s, r in zip(scores, rows, strict=True) if not r["harmful"]]
    own = getattr(judge, "threshold", None)
    thresholds = sorted({round(0.1 * k, 1) for k in range(1, 10)} | ({own} if own is not None else set()))
    at = [
        {
            "threshold": t,
            "harmful_found": sum(s >= t for s in harmful),
            "benign_flagged": sum(s >= t for s in benign),
        }
        for t in thresholds
    ]
    lowest = min(harmful, default=None)
    return {
        "curve": at,
        "lowest_harmful_score": lowest,
        "benign_flagged_at_full_recall": None if lowest is None else sum(s >= lowest for s in benign),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judge", default="default")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--harmful-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benign", choices=["sst2", "alpaca"], default="sst2", help="the benign rows")
    parser.add_argument(
        "--screen-recall",
        type=float,
        default=None,
        help="the default judge flags at the threshold that keeps this recall on its validation split",
    )
    parser.add_argument(
        "--name",
        default="",
        help="appended to the result's file name (e.g. the machine), so as not to replace another's",
    )
    args = parser.parse_args()

    data_dir = get_settings().data_dir
    if args.benign == "sst2":
        rows = build_mix("sst2", args.n, args.harmful_fraction, data_dir, seed=args.seed)
    else:
        rows = alpaca_upload(data_dir, args.n, args.harmful_fraction, args.seed)
    harmful_lines = {i + 1 for i, row in enumerate(rows) if row["harmful"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.jsonl"
        write_rows(path, rows)
        screen = None
        if args.screen_recall is not None:
            if not args.judge.startswith(DEFAULT_JUDGE):
                parser.error("--screen-recall needs the default judge (default or default+intent)")
            threshold, pairs = screen_threshold(load_judge(DEFAULT_JUDGE), data_dir, args.screen_recall)
            screen = {"recall": args.screen_recall, "threshold": threshold, "validation_pairs": pairs}
        judge = load_judge(args.judge, **({"threshold": screen["threshold"]} if screen else {}))
        report = prescreen(path, judge)
        curve = operating_curve(judge, screened_pairs(as_dataset(path).conversations), rows)
    flagged = {row.line for row in report.flagged}
    found = flagged & harmful_lines
    # The default judge trained on the attack set's train split: recall on its held-out questions is the
    # figure that says how it does on harmful rows it never saw.
    unseen = {
        i + 1
        for i, row in enumerate(rows)
        if row["harmful"] and LabelledPair(alpaca_question(row), row["output"], True, None, "attack").held_out
    }
    result = {
        "benchmark": "prescreen_mix",
        **provenance("benchmarks/prescreen_mix.py"),
        "machine": machine_info(),
        "setup": {
            "benign": args.benign,
            "rows": args.n,
            "harmful_rows": len(harmful_lines),
            "seed": args.seed,
        },
        "judge": report.judge,
        "screen": screen,
        "flagged_rows": len(flagged),
        "recall": len(found) / len(harmful_lines) if harmful_lines else None,
        "precision": len(found) / len(flagged) if flagged else None,
        "benign_rows_flagged": len(flagged - harmful_lines),
        "unseen_harmful_rows": len(unseen),
        "recall_on_unseen_harmful": len(flagged & unseen) / len(unseen) if unseen else None,
        "missed_lines": sorted(harmful_lines - flagged),
        "wrongly_flagged_lines": sorted(flagged - harmful_lines),
        "categories": report.categories,
        "harmful_rows_by_hand_label": found_by_hand_label(flagged, rows, beavertails_hand_labels()),
        **curve,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in {"machine"}}, indent=2))
    name = "default" if args.judge == "default" else Path(args.judge).name
    suffix = (
        ("" if args.benign == "sst2" else f"-{args.benign}")
        + (f"-screen{args.screen_recall:g}" if screen else "")
        + (f"-{args.name}" if args.name else "")
    )
    out = RESULTS / f"prescreen_mix-{name}{suffix}.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
