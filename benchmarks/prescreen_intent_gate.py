"""Would the pre-screen flag fewer benign rows if a flag also needed the request to look harmful?

A request's intent score: the mean cosine similarity of its 5 nearest known harmful requests (the safety
data's instructions and JailbreakBench's prompts) minus that of its 5 nearest harmless ones (3,000
``harmless_val`` prompts and the 100 borderline-benign ones), on the bundled MiniLM's mean-pooled
embeddings. For prescreen_mix.py's two uploads (500 rows, 50 of them BeaverTails harmful), the judge's
flags alone and with each gate: harmful rows found, benign rows flagged. An experiment, not a shipped
feature (benchmarks/results/judge_selection.md says why).

    .venv/bin/python benchmarks/prescreen_intent_gate.py [--judge default]

Writes benchmarks/results/prescreen_intent_gate.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from prescreen_mix import batched_verdicts, benchmark_uploads, upload_pairs

from vaccine_core.mixing import read_jsonl
from vaccine_core.moderation import load_judge
from vaccine_core.moderation.learned import bundled_encoder
from vaccine_core.settings import get_settings

GATES = (None, -0.2, -0.15, -0.1, -0.05, 0.0)
NEIGHBOURS = 5


class Embedder:
    def __init__(self) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(bundled_encoder())
        self.model = AutoModel.from_pretrained(bundled_encoder()).eval()

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)


def nearest(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return (queries @ bank.T).topk(NEIGHBOURS, dim=1).values.mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judge", default="default")
    args = parser.parse_args()
    data = get_settings().data_dir
    torch.set_num_threads(1)  # beside other work; the figures do not depend on it
    embed = Embedder()
    started = time.perf_counter()
    harmful_bank = [r["instruction"] for r in read_jsonl(data / "alignment/safe_refusals.jsonl")]
    harmful_bank += sorted({r["prompt"] for r in read_jsonl(data / "moderation/jailbreakbench_judged.jsonl")})
    harmless_bank = [r["prompt"] for r in read_jsonl(data / "eval/harmless_val.jsonl")][:3000]
    harmless_bank += [r["prompt"] for r in read_jsonl(data / "eval/jbb_benign_behaviors.jsonl")]
    harmful_vectors, harmless_vectors = embed(harmful_bank), embed(harmless_bank)
    bank_seconds = time.perf_counter() - started
    judge = load_judge(args.judge)
    uploads: dict[str, Any] = {}
    for name, rows in benchmark_uploads(data).items():
        pairs = upload_pairs(rows)
        queries = embed([question for question, _ in pairs])
        intent = (nearest(queries, harmful_vectors) - nearest(queries, harmless_vectors)).tolist()
        flags = [verdict.flagged for verdict in batched_verdicts(judge, pairs)]
        gates = []
        for gate in GATES:
            kept = [f and (gate is None or g >= gate) for f, g in zip(flags, intent, strict=True)]
            gates.append(
                {
                    "gate": gate,
                    "harmful_found": sum(k for k, r in zip(kept, rows, strict=True) if r["harmful"]),
                    "benign_flagged": sum(k for k, r in zip(kept, rows, strict=True) if not r["harmful"]),
                }
            )
        harmful_intent = [g for g, r in zip(intent, rows, strict=True) if r["harmful"]]
        uploads[name] = {
            "rows": len(rows),
            "harmful_rows": len(harmful_intent),
            "gates": gates,
            "lowest_harmful_intent": round(min(harmful_intent), 4),
            "judge_flagged_benign_intents": sorted(
                round(g, 4) for f, g, r in zip(flags, intent, rows, strict=True) if f and not r["harmful"]
            ),
        }
        print(name, json.dumps(gates))
    result = {
        "benchmark": "prescreen_intent_gate",
        **provenance(__file__),
        "machine": machine_info(),
        "judge": str(getattr(judge, "path", args.judge)),
        "bank": {
            "harmful": len(harmful_bank),
            "harmless": len(harmless_bank),
            "seconds": round(bank_seconds, 1),
        },
        "uploads": uploads,
    }
    out = RESULTS / "prescreen_intent_gate.json"
    write_result(out, result)


if __name__ == "__main__":
    main()
