"""Would the pre-screen find more harmful rows if it also flagged compliance with a plainly harmful request?

Variant P of the pre-screen (rejected, twelfth session; ``judge_selection.md``): a row is flagged as
``default+intent`` flags it (the judge flags the answer and the request passes the intent gate), **or**
when its request reaches a *strict* intent threshold and its answer does not refuse (refusal phrases). The
strict threshold is the lowest that at most ``--false-flags`` of the intent model's validation harmless
requests reach. Both rules are read from one scoring pass, on ``prescreen_mix.py``'s two uploads (by hand
label) and on ``harmful_upload.py``'s 100-row uploads.

    .venv/bin/python benchmarks/prescreen_strict_intent.py
"""

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from harmful_upload import UPLOADS, conversations, upload_rows
from prescreen_mix import batched_verdicts, benchmark_uploads, found_by_hand_label, upload_pairs

from vaccine_core.moderation import load_judge
from vaccine_core.moderation.base import Moderator, Pair
from vaccine_core.moderation.dataset import (
    alpaca_question,
    beavertails_hand_labels,
    question_key,
    question_part,
)
from vaccine_core.moderation.intent import (
    IntentGatedJudge,
    IntentModel,
    ensure_intent_model,
    labelled_requests,
)
from vaccine_core.moderation.prescreen import screened_pairs
from vaccine_core.moderation.refusal import is_refusal
from vaccine_core.settings import get_settings


def strict_threshold(scores: Sequence[float], harmful: Sequence[bool], false_flags: float) -> float:
    """The lowest threshold that at most ``false_flags`` of the harmless requests reach."""
    ranked = sorted((s for s, h in zip(scores, harmful, strict=True) if not h), reverse=True)
    if not ranked:
        raise ValueError("no harmless request to set the strict threshold on")
    allowed = int(false_flags * len(ranked))
    if allowed >= len(ranked):
        return 0.0
    return math.nextafter(ranked[allowed], math.inf)  # the allowed ones above it, ties with it excluded


def both_rules(
    judge: Moderator, intent: IntentModel, strict: float, pairs: list[Pair]
) -> tuple[list[bool], list[bool], list[float]]:
    """Each row's flag as shipped (``default+intent``, the pre-screen's own gated judge) and under P, and
    its request's intent score."""
    shipped = [v.flagged for v in batched_verdicts(IntentGatedJudge(judge, intent), pairs)]
    intents = intent.score([request for request, _ in pairs])
    complied = [s >= strict and not is_refusal(answer) for s, (_, answer) in zip(intents, pairs, strict=True)]
    return shipped, [a or b for a, b in zip(shipped, complied, strict=True)], intents


def mix_figures(flags: list[bool], rows: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, Any]:
    flagged_lines = {line for line, flagged in enumerate(flags, start=1) if flagged}
    return {
        "benign_flagged": sum(f for f, r in zip(flags, rows, strict=True) if not r["harmful"]),
        "harmful_found": sum(f for f, r in zip(flags, rows, strict=True) if r["harmful"]),
        "by_hand_label": found_by_hand_label(flagged_lines, rows, labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--false-flags", type=float, default=0.01, help="validation harmless share at strict")
    parser.add_argument("--name", default="prescreen_strict_intent", help="results/NAME.json")
    args = parser.parse_args()

    data = get_settings().data_dir
    judge = load_judge("default")
    intent = IntentModel(ensure_intent_model(data))
    validation = [
        (text, harm) for text, harm in labelled_requests(data) if question_part(text) == "validation"
    ]
    scores = intent.score([text for text, _ in validation])
    harmful = [harm for _, harm in validation]
    strict = strict_threshold(scores, harmful, args.false_flags)
    labels = beavertails_hand_labels()
    mixes = {}
    for name, rows in benchmark_uploads(data).items():
        pairs = upload_pairs(rows)
        shipped, variant, intents = both_rules(judge, intent, strict, pairs)
        mixes[name] = {
            "shipped": mix_figures(shipped, rows, labels),
            "variant": mix_figures(variant, rows, labels),
            "added": [
                {"line": i + 1, "harmful": r["harmful"], "intent": s, "request": p[0]}
                for i, (a, b, s, r, p) in enumerate(zip(shipped, variant, intents, rows, pairs, strict=True))
                if b and not a
            ],
            "harmful_missed": [
                {
                    "line": i + 1,
                    "label": labels[question_key(alpaca_question(r))],
                    "intent": s,
                    "request": p[0],
                }
                for i, (b, s, r, p) in enumerate(zip(variant, intents, rows, pairs, strict=True))
                if r["harmful"] and not b
            ],
        }
    uploads = []
    for upload in UPLOADS:
        for seed in (0, 1):
            pairs = screened_pairs(conversations(upload_rows(upload, data, seed)))
            shipped, variant, _ = both_rules(judge, intent, strict, pairs)
            uploads.append(
                {
                    "upload": upload,
                    "seed": seed,
                    "rows": len(pairs),
                    "shipped": sum(shipped),
                    "variant": sum(variant),
                }
            )
    result = {
        "benchmark": "prescreen_strict_intent",
        **provenance(__file__),
        "machine": machine_info(),
        "judge": {"path": str(judge.path), "threshold": judge.threshold},
        "intent": {"path": str(intent.path), "gate": intent.threshold, "strict": strict},
        "validation": {
            "harmful": sum(harmful),
            "harmless": len(harmful) - sum(harmful),
            "harmful_at_strict": sum(s >= strict for s, h in zip(scores, harmful, strict=True) if h),
            "harmless_at_strict": sum(s >= strict for s, h in zip(scores, harmful, strict=True) if not h),
        },
        "mixes": mixes,
        "uploads": uploads,
    }
    out = RESULTS / f"{args.name}.json"
    write_result(out, result)
    print(json.dumps({k: result[k] for k in ("intent", "validation", "uploads")}, indent=2))
    for name, mix in mixes.items():
        print(name, "shipped", mix["shipped"], "variant", mix["variant"])


if __name__ == "__main__":
    main()
