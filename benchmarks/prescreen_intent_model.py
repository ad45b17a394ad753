"""Would a learned request-intent model let the pre-screen find harmful rows the judge misses, and drop the
benign rows it flags?

The judge reads a (request, answer) pair and was trained to let the answer carry the decision; an upload's
harmful row is a harmful request *with* its compliance. This experiment learns the request's side alone:
a logistic regression on the bundled MiniLM's mean-pooled request embedding, harmful requests (the
alignment data's 2,483 instructions, BeaverTails', JailbreakBench's prompts) against harmless ones
(Alpaca-style ``harmless_val`` prompts, the judge's Alpaca and task rows, the borderline requests that only
sound harmful). Every request of the two benchmark uploads (prescreen_mix.py: 500 rows, 50 BeaverTails
harmful) and of the safety protocol's split is kept out of training, so the uploads are unseen.

``--fine-tune`` scores with the pre-screen's shipped intent gate instead (vaccine_core/moderation/intent.py:
the whole encoder fine-tuned, one epoch, batch 32, lr 5e-5, 64 tokens, the classes weighted to balance;
trained and cached on first use, and run as the pre-screen runs it) on the same requests.

Thresholds come from the validation part (by question hash, as the judge's) before any upload is scored:

* ``t_f1``: the best F1 on validation requests;
* ``t_recall``: the highest that keeps 99 % of validation harmful requests (a gate on the judge's flags);
* ``t_precise``: the lowest that flags at most 1 % of validation harmless requests.

Rules scored on each upload (harmful rows found of 50, benign rows flagged of 450): the judge alone;
intent >= t_f1 with an answer that is not a refusal; the judge gated by intent >= t_recall; the judge or
(intent >= t_precise and not a refusal).

    .venv/bin/python benchmarks/prescreen_intent_model.py [--judge default] [--fine-tune]

Writes benchmarks/results/prescreen_intent_model[-fine-tuned].json.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from prescreen_intent_gate import Embedder
from prescreen_mix import batched_verdicts, benchmark_uploads, upload_pairs

from vaccine_core.moderation import load_judge
from vaccine_core.moderation.dataset import question_part
from vaccine_core.moderation.intent import IntentModel, ensure_intent_model, labelled_requests
from vaccine_core.moderation.refusal import is_refusal
from vaccine_core.settings import get_settings

WEIGHT_DECAY = 1e-3  # on the mean loss; fixed before any upload was scored


def fit(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Linear:
    """L2-regularised logistic regression, classes weighted to balance."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], 1)
    pos_weight = (y == 0).sum() / (y == 1).sum()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimiser = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = loss_fn(head(x).squeeze(1), y) + WEIGHT_DECAY * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return head


class ProbeIntent:
    """A logistic regression on frozen, mean-pooled MiniLM embeddings."""

    def __init__(self, texts: list[str], labels: list[bool]) -> None:
        self.embed = Embedder()
        self.head = fit(self.embed(texts), torch.tensor(labels, dtype=torch.float32))

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        return torch.sigmoid(self.head(self.embed(texts)).squeeze(1)).tolist()


def thresholds(scores: list[float], labels: list[bool]) -> dict[str, float]:
    harmful = sorted(s for s, y in zip(scores, labels, strict=True) if y)
    harmless = sorted(s for s, y in zip(scores, labels, strict=True) if not y)

    def f1(t: float) -> float:
        tp = sum(s >= t for s in harmful)
        fp = sum(s >= t for s in harmless)
        return 2 * tp / (2 * tp + fp + (len(harmful) - tp)) if tp else 0.0

    return {
        "t_f1": max(sorted(set(scores)), key=f1),
        "t_recall": harmful[int(0.01 * len(harmful))],
        "t_precise": harmless[min(len(harmless) - 1, int(0.99 * len(harmless)) + 1)],
    }


def counts(flags: list[bool], rows: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "harmful_found": sum(f for f, r in zip(flags, rows, strict=True) if r["harmful"]),
        "benign_flagged": sum(f for f, r in zip(flags, rows, strict=True) if not r["harmful"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judge", default="default")
    parser.add_argument("--fine-tune", action="store_true", help="fine-tune the encoder, not a probe")
    args = parser.parse_args()
    data = get_settings().data_dir
    torch.set_num_threads(1)  # beside other work; the figures do not depend on it
    uploads = benchmark_uploads(data)
    texts, labels = map(list, zip(*labelled_requests(data), strict=True))
    parts = [question_part(t) for t in texts]
    started = time.perf_counter()
    if args.fine_tune:
        model = IntentModel(ensure_intent_model(data)).score
    else:
        train = [p == "train" for p in parts]
        model = ProbeIntent(
            [t for t, k in zip(texts, train, strict=True) if k],
            [y for y, k in zip(labels, train, strict=True) if k],
        )
    seconds_to_model = time.perf_counter() - started  # the shipped model's: nothing when it was cached
    scores = model(texts)
    by_part = {
        part: (
            [s for s, p in zip(scores, parts, strict=True) if p == part],
            [y for y, p in zip(labels, parts, strict=True) if p == part],
        )
        for part in ("validation", "test")
    }
    chosen = thresholds(*by_part["validation"])
    test_scores, test_labels = by_part["test"]
    test = {
        name: counts([s >= t for s in test_scores], [{"harmful": y} for y in test_labels])
        | {"harmful": sum(test_labels), "harmless": len(test_labels) - sum(test_labels)}
        for name, t in chosen.items()
    }
    judge = load_judge(args.judge)
    results: dict[str, Any] = {}
    for name, rows in uploads.items():
        pairs = upload_pairs(rows)
        intent = model([q for q, _ in pairs])
        judged = [v.flagged for v in batched_verdicts(judge, pairs)]
        complies = [not is_refusal(answer) for _, answer in pairs]
        rules = {
            "judge": judged,
            "intent_f1_not_refusal": [
                i >= chosen["t_f1"] and c for i, c in zip(intent, complies, strict=True)
            ],
            "judge_gated_by_intent": [
                j and i >= chosen["t_recall"] for j, i in zip(judged, intent, strict=True)
            ],
            "judge_or_precise_intent": [
                j or (i >= chosen["t_precise"] and c)
                for j, i, c in zip(judged, intent, complies, strict=True)
            ],
        }
        harmful_intent = [i for i, r in zip(intent, rows, strict=True) if r["harmful"]]
        benign_intent = sorted(
            (i for i, r in zip(intent, rows, strict=True) if not r["harmful"]), reverse=True
        )
        results[name] = {
            "rules": {rule: counts(flags, rows) for rule, flags in rules.items()},
            "lowest_harmful_intent": round(min(harmful_intent), 4),
            "highest_benign_intents": [round(i, 4) for i in benign_intent[:10]],
            "missed": {
                rule: [pairs[k][0][:120] for k, r in enumerate(rows) if r["harmful"] and not flags[k]]
                for rule, flags in rules.items()
            },
            "benign_flagged_requests": {
                rule: [pairs[k][0][:120] for k, r in enumerate(rows) if not r["harmful"] and flags[k]]
                for rule, flags in rules.items()
            },
        }
        print(name, json.dumps(results[name]["rules"]), flush=True)
    result = {
        "benchmark": "prescreen_intent_model",
        **provenance(__file__),
        "machine": machine_info(),
        "judge": str(getattr(judge, "path", args.judge)),
        "requests": {
            part: {
                "harmful": sum(y for y, p in zip(labels, parts, strict=True) if p == part),
                "harmless": sum(not y for y, p in zip(labels, parts, strict=True) if p == part),
            }
            for part in ("train", "validation", "test")
        },
        "model": (
            json.loads((ensure_intent_model(data) / "intent.json").read_text())
            if args.fine_tune
            else {"probe": "logistic regression", "weight_decay": WEIGHT_DECAY}
        ),
        "seconds_to_model": round(seconds_to_model, 1),
        "thresholds": {k: round(v, 4) for k, v in chosen.items()},
        "test_requests": test,
        "uploads": results,
    }
    name = "prescreen_intent_model" + ("-fine-tuned" if args.fine_tune else "")
    out = RESULTS / f"{name}.json"
    write_result(out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in {"machine", "uploads"}}, indent=2))


if __name__ == "__main__":
    main()
