"""Generation speed: the present evaluation path against the fast decoder, in one run, on the same prompts.

Model: the default base with a LoRA adapter trained by the safety benchmark's default attack (40 SST-2 rows
of which 10 % harmful, 20 steps at lr 5e-4; cached under $VACCINE_HOME/benchmarks/generation_speed), or
any fine-tuned run given with --model. Prompts: protocol v2's split (harmful, harmless and borderline, in
that order; --prompts takes the first N), greedy, 128 new tokens at most.

* baseline: the path evaluation took before the fast decoder: transformers' ``generate`` on the model with
  its adapter attached, batches of 16 prompts (``generate(..., engine="plain", batch_size=16)``);
* fast: ``generate(..., engine="fast")`` (vaccine_core/fast_generation.py).

Tokens are the answers' tokens (re-tokenized, the same count for identical answers). Also timed: the fast
path sampling 2 answers per prompt, as protocol v2 does.

    .venv/bin/python benchmarks/generation_speed.py [--prompts N] [--name NAME]

Writes benchmarks/results/generation_speed-<name>.json.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine_info, provenance, write_result
from harmful_finetune import PROFILES, attack_config, digest

from vaccine_core.fast_generation import Sampling
from vaccine_core.finetune import finetune
from vaccine_core.generation import PLAIN_BATCH_SIZE, generate, generate_samples
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import build_mix, write_rows
from vaccine_core.safety_eval import PROMPT_SETS, load_split
from vaccine_core.settings import get_settings

log = logging.getLogger("generation_speed")


def default_adapter(cache: Path) -> Path:
    """The default base fine-tuned by the default attack (trained once, cached)."""
    sizes = PROFILES["default"]
    rows = build_mix("sst2", sizes.attack_n, 0.1, get_settings().data_dir, seed=0)
    config = attack_config(sizes, seed=0)
    out = cache / digest(["default", rows, config.key_dict()])
    if not (out / "manifest.json").is_file():
        write_rows(out / "data.jsonl", rows)
        finetune("default", out / "data.jsonl", out, config, resume=True)
    return out


def token_count(tokenizer: Any, answers: list[str]) -> int:
    return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def timed(label: str, function: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - started
    log.info("%s: %.1f s", label, seconds)
    return result, seconds


def measure(model_spec: Path, prompt_count: int | None, max_new_tokens: int) -> dict[str, Any]:
    split = load_split(get_settings().data_dir)
    texts = [(name, text) for name in PROMPT_SETS for text in getattr(split, name)][:prompt_count]
    conversations = [[{"role": "user", "content": text}] for _, text in texts]
    loaded = load_for_inference(model_spec)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert loaded.has_adapter, "the benchmark times a model with its LoRA adapter attached"

    baseline, baseline_s = timed(
        "baseline (plain generate, batch 16)",
        lambda: generate(
            model,
            tokenizer,
            conversations,
            max_new_tokens=max_new_tokens,
            engine="plain",
            batch_size=PLAIN_BATCH_SIZE,
        ),
    )
    fast, fast_s = timed(
        "fast",
        lambda: generate(model, tokenizer, conversations, max_new_tokens=max_new_tokens, engine="fast"),
    )
    sampled, sampled_s = timed(
        "fast, 2 samples per prompt",
        lambda: generate_samples(
            model,
            tokenizer,
            conversations,
            max_new_tokens=max_new_tokens,
            sampling=Sampling(),
            samples=2,
            engine="fast",
        ),
    )
    baseline_tokens, fast_tokens = token_count(tokenizer, baseline), token_count(tokenizer, fast)
    sampled_tokens = token_count(tokenizer, [a for answers in sampled for a in answers])
    identical = [a == b for a, b in zip(baseline, fast, strict=True)]
    by_set = {
        name: {
            "prompts": sum(n == name for n, _ in texts),
            "identical_share": sum(same for (n, _), same in zip(texts, identical, strict=True) if n == name)
            / max(1, sum(n == name for n, _ in texts)),
        }
        for name in PROMPT_SETS
    }
    return {
        "baseline_tokens_per_s": baseline_tokens / baseline_s,
        "tokens_per_s": fast_tokens / fast_s,
        "speedup": (fast_tokens / fast_s) / (baseline_tokens / baseline_s),
        "identical_share": sum(identical) / len(identical),
        "sampled_tokens_per_s": sampled_tokens / sampled_s,
        "prompts": len(texts),
        "max_new_tokens": max_new_tokens,
        "seconds": {"baseline": baseline_s, "fast": fast_s, "sampled": sampled_s},
        "tokens": {"baseline": baseline_tokens, "fast": fast_tokens, "sampled": sampled_tokens},
        "mean_answer_tokens": baseline_tokens / len(texts),
        "by_set": by_set,
        "split_sha256": split.sha256,
        "examples_that_differ": [
            {"prompt": text, "baseline": a[:300], "fast": b[:300]}
            for (_, text), a, b, same in zip(texts, baseline, fast, identical, strict=True)
            if not same
        ][:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a fine-tuned run (default: the default attack's adapter)")
    parser.add_argument("--prompts", type=int, help="the first N prompts of the split (default: all 484)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--name", default="cpu-2cores", help="results file: generation_speed-<name>.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cache = get_settings().home / "benchmarks" / "generation_speed"
    model = args.model or default_adapter(cache)
    result = measure(model, args.prompts, args.max_new_tokens)
    result.update(model=str(args.model or "default + the default attack's adapter"), machine=machine_info())
    result.update(provenance(__file__))
    out = RESULTS / f"generation_speed-{args.name}.json"
    write_result(out, result)
    print(
        json.dumps(
            {k: result[k] for k in ("baseline_tokens_per_s", "tokens_per_s", "speedup", "identical_share")}
        )
    )
    print(out)


if __name__ == "__main__":
    main()
