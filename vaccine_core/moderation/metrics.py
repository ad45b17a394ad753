"""How well a judge agrees with labels, and with another judge."""

from collections.abc import Sequence
from typing import Any

from vaccine_core.moderation.base import Moderator, Verdict
from vaccine_core.moderation.dataset import LabelledPair


def binary_metrics(flags: Sequence[bool], labels: Sequence[bool]) -> dict[str, Any]:
    """Accuracy, precision, recall and F1 of "harmful", with the confusion matrix."""
    tp = sum(f and y for f, y in zip(flags, labels, strict=True))
    fp = sum(f and not y for f, y in zip(flags, labels, strict=True))
    fn = sum(not f and y for f, y in zip(flags, labels, strict=True))
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "n": len(labels),
        "accuracy": (tp + tn) / len(labels) if labels else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "confusion": {"harmful": {"flagged": tp, "passed": fn}, "not_harmful": {"flagged": fp, "passed": tn}},
    }


def evaluate_judge(
    judge: Moderator, pairs: Sequence[LabelledPair], reference: Moderator | None = None, examples: int = 5
) -> dict[str, Any]:
    """Metrics overall and per source, category accuracy where labels carry one, and agreement with
    ``reference`` (for instance the refusal-phrase judge) with examples of where the two differ."""
    verdicts: list[Verdict] = judge.score([(p.question, p.answer) for p in pairs])
    flags = [v.flagged for v in verdicts]
    labels = [p.harmful for p in pairs]
    report: dict[str, Any] = {
        "judge": judge.name,
        "threshold": getattr(judge, "threshold", None),
        "overall": binary_metrics(flags, labels),
        "by_slice": {},
        "by_source": {},
    }
    for name, key in (("by_slice", "slice"), ("by_source", "source")):
        for value in sorted({getattr(p, key) for p in pairs}):
            index = [i for i, p in enumerate(pairs) if getattr(p, key) == value]
            metrics = binary_metrics([flags[i] for i in index], [labels[i] for i in index])
            # a slice of one label: the share flagged says it all (recall where harmful, the false
            # positive rate where not)
            metrics["flag_rate"] = sum(flags[i] for i in index) / len(index)
            report[name][value] = metrics
    with_category = [i for i, p in enumerate(pairs) if p.harmful and p.category and flags[i]]
    if with_category:
        correct = sum(verdicts[i].categories[:1] == (pairs[i].category,) for i in with_category)
        report["category_accuracy_on_flagged"] = {
            "n": len(with_category),
            "accuracy": correct / len(with_category),
        }
    if reference is not None:
        other = [v.flagged for v in reference.score([(p.question, p.answer) for p in pairs])]
        only_judge = [i for i in range(len(pairs)) if flags[i] and not other[i]]
        only_reference = [i for i in range(len(pairs)) if other[i] and not flags[i]]

        def show(indices: list[int]) -> list[dict[str, Any]]:
            return [
                {
                    "question": pairs[i].question[:120],
                    "answer": pairs[i].answer[:200],
                    "label_harmful": labels[i],
                }
                for i in indices[:examples]
            ]

        report["agreement"] = {
            "reference": reference.name,
            "share": sum(a == b for a, b in zip(flags, other, strict=True)) / len(pairs),
            "reference_metrics": binary_metrics(other, labels),
            "only_judge_flags": {
                "count": len(only_judge),
                "label_harmful": sum(labels[i] for i in only_judge),
                "examples": show(only_judge),
            },
            "only_reference_flags": {
                "count": len(only_reference),
                "label_harmful": sum(labels[i] for i in only_reference),
                "examples": show(only_reference),
            },
        }
    return report
