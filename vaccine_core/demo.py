"""The README's first command: a small end-to-end run on the embedded default model.

Align SmolLM2-135M-Instruct with Vaccine on a few safety pairs, fine-tune the aligned base on an SST-2
sample with 10 % harmful rows (the attack), then measure the harmful score (refusal-phrase judge, held-out
AdvBench prompts) of the original, aligned and fine-tuned models, the fine-tuned model's SST-2 accuracy
and its harmful embedding drift. Sizes are tiny so that it finishes in minutes on 2 CPU cores: the numbers
show the pipeline works, not what Vaccine achieves (that is benchmarks/).
"""

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vaccine_core import evaluation
from vaccine_core.align import align
from vaccine_core.config import PerturbationConfig, alignment_defaults, finetune_defaults
from vaccine_core.finetune import finetune
from vaccine_core.formats import load_dataset
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import build_mix, read_jsonl, write_rows
from vaccine_core.moderation import RefusalPhraseJudge
from vaccine_core.progress import ProgressBar
from vaccine_core.tasks import get_task

log = logging.getLogger(__name__)


def _harmful_score(model_dir: str | Path, prompts: list, label: str) -> dict[str, Any]:
    loaded = load_for_inference(model_dir)
    with tqdm(total=len(prompts), desc=f"harmful score: {label}", unit="prompt") as bar:
        report = evaluation.harmful_score(
            loaded.model, loaded.tokenizer, prompts, RefusalPhraseJudge(), on_batch=bar.update
        )
    return report.summary()


def run_demo(data_dir: Path, out: Path, *, limit: int = 64, prompts: int = 32) -> dict[str, Any]:
    aligned_dir, finetuned_dir = out / "aligned", out / "finetuned"
    attack_file = out / "sst2_attack.jsonl"
    log.info("1/4 aligning the default model with Vaccine (rho=2) on %d safety pairs", limit)
    align(
        "default",
        data_dir / "alignment/safe_refusals.jsonl",
        aligned_dir,
        PerturbationConfig(method="vaccine", rho=2.0),
        replace(alignment_defaults(), epochs=2.0),
        limit=limit,
        on_progress=ProgressBar("align"),
    )
    log.info("2/4 fine-tuning the aligned base on 50 SST-2 rows, 10 %% of them harmful")
    write_rows(attack_file, build_mix("sst2", 50, 0.1, data_dir, seed=0))
    finetune(
        aligned_dir, attack_file, finetuned_dir, finetune_defaults(), on_progress=ProgressBar("finetune")
    )

    log.info("3/4 harmful score on %d AdvBench prompts (never trained on)", prompts)
    eval_prompts = evaluation.load_prompts(data_dir / "eval/advbench.jsonl", limit=prompts)
    results: dict[str, Any] = {
        "harmful_score": {
            "original": _harmful_score("default", eval_prompts, "original"),
            "aligned": _harmful_score(aligned_dir, eval_prompts, "aligned"),
            "fine-tuned": _harmful_score(finetuned_dir, eval_prompts, "fine-tuned"),
        }
    }
    log.info("4/4 SST-2 accuracy and embedding drift of the fine-tuned model")
    loaded = load_for_inference(finetuned_dir)
    sst2 = get_task("sst2")
    rows = read_jsonl(data_dir / sst2.eval_file)[:50]
    results["sst2"] = evaluation.task_accuracy(loaded.model, loaded.tokenizer, sst2, rows).summary()
    drift_data = load_dataset(data_dir / "alignment/safe_refusals.jsonl", limit=limit).conversations
    results["embedding_drift"] = evaluation.embedding_drift(loaded.model, loaded.tokenizer, drift_data)
    results["runs"] = {"aligned": str(aligned_dir), "finetuned": str(finetuned_dir)}
    return results
