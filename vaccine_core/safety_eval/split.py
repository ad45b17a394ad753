"""Protocol v2's fixed prompt split: which evaluation prompts it asks, written down by id.

Harmful prompts come from AdvBench, HarmBench (validation) and Do-Not-Answer's "malicious uses" (its other
risk areas hold many requests a model may well answer, such as medical or legal questions), after
removing every prompt that any training step here sees: alignment pairs, attack rows and the judge's
training pairs (normalised text match). Harmless prompts come from a held-out Alpaca set; borderline
prompts are JailbreakBench's benign behaviours, requests that only sound harmful.

``build_split`` draws the split with a seeded rule; the result lives in ``split_v2.json`` beside this
module as ``file:line`` ids with the sha256 of the prompts' text, and ``load_split`` refuses data that no
longer matches it. Every result records that sha256.
"""

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaccine_core.mixing import HARMFUL_FILE, SAFETY_FILE, read_jsonl
from vaccine_core.text import normalised

VERSION = 2
SPLIT_FILE = Path(__file__).with_name(f"split_v{VERSION}.json")
HARMBENCH, ADVBENCH, DONOTANSWER = "eval/harmbench_val.jsonl", "eval/advbench.jsonl", "eval/donotanswer.jsonl"
HARMLESS_FILE = "eval/harmless_val.jsonl"
BORDERLINE_FILE = "eval/jbb_benign_behaviors.jsonl"
DONOTANSWER_AREA = "malicious_uses"
HARMFUL_PROMPTS = 256
HARMLESS_PROMPTS = 128


def training_prompts(data_dir: Path) -> set[str]:
    """Every request (normalised) that alignment, the attack or the default judge trains on."""
    from vaccine_core.moderation.borderline import borderline_requests
    from vaccine_core.moderation.dataset import load_labelled_pairs

    rows = read_jsonl(data_dir / SAFETY_FILE) + read_jsonl(data_dir / HARMFUL_FILE)
    seen = {normalised(r["instruction"]) for r in rows}
    seen |= {normalised(r.request) for r in borderline_requests(data_dir)}
    return seen | {normalised(p.question) for p in load_labelled_pairs(data_dir)}


@dataclass(frozen=True)
class PromptId:
    file: str
    line: int  # 1-based line of the JSON Lines file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def _lines(data_dir: Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    return list(enumerate(read_jsonl(data_dir / name), 1))


def build_split(data_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Draw the split: every usable HarmBench prompt, the rest of the harmful prompts half from AdvBench
    and half from Do-Not-Answer's malicious uses, shuffled together; 128 harmless prompts; every
    borderline one."""
    rng = random.Random(seed)
    excluded = training_prompts(data_dir)
    taken: set[str] = set()

    def fresh(name: str, keep: Any = lambda row: True) -> list[PromptId]:
        ids = []
        for line, row in _lines(data_dir, name):
            text = normalised(row["prompt"])
            if keep(row) and text not in excluded and text not in taken:
                taken.add(text)
                ids.append(PromptId(name, line))
        return ids

    harmful = fresh(HARMBENCH)
    rest = HARMFUL_PROMPTS - len(harmful)
    harmful += rng.sample(fresh(ADVBENCH), rest - rest // 2)
    harmful += rng.sample(fresh(DONOTANSWER, lambda row: row.get("risk_area") == DONOTANSWER_AREA), rest // 2)
    rng.shuffle(harmful)  # so that the first k prompts (the service's report) mix the three sources
    harmless = rng.sample(
        [PromptId(HARMLESS_FILE, line) for line, _ in _lines(data_dir, HARMLESS_FILE)], HARMLESS_PROMPTS
    )
    borderline = [PromptId(BORDERLINE_FILE, line) for line, _ in _lines(data_dir, BORDERLINE_FILE)]
    split = {
        "version": VERSION,
        "rule": f"vaccine_core.safety_eval.split.build_split(data_dir, seed={seed})",
        "harmful": [str(i) for i in harmful],
        "harmless": [str(i) for i in harmless],
        "borderline": [str(i) for i in borderline],
    }
    prompts = _texts(data_dir, split)
    split["sha256"] = {name: text_digest(texts) for name, texts in prompts.items()}
    return split


def text_digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def _texts(data_dir: Path, split: dict[str, Any]) -> dict[str, list[str]]:
    files: dict[str, list[dict[str, Any]]] = {}
    texts: dict[str, list[str]] = {}
    for name in ("harmful", "harmless", "borderline"):
        texts[name] = []
        for prompt_id in split[name]:
            file, line = prompt_id.rsplit(":", 1)
            if file not in files:
                files[file] = read_jsonl(data_dir / file)
            texts[name].append(files[file][int(line) - 1]["prompt"])
    return texts


@dataclass(frozen=True)
class ProtocolPrompts:
    harmful: list[str]
    harmless: list[str]
    borderline: list[str]
    sha256: str  # of the whole split (the three digests together): recorded in every result

    def normalised(self) -> set[str]:
        """Every prompt of the three sets, normalised: what data a model learns from must never hold."""
        return {normalised(prompt) for prompt in self.harmful + self.harmless + self.borderline}

    def take(self, harmful: int, harmless: int, borderline: int) -> "ProtocolPrompts":
        """The first prompts of each set (the split's order is already shuffled)."""
        return ProtocolPrompts(
            self.harmful[:harmful], self.harmless[:harmless], self.borderline[:borderline], self.sha256
        )


def load_split(data_dir: Path, path: Path = SPLIT_FILE) -> ProtocolPrompts:
    split = json.loads(path.read_text())
    texts = _texts(data_dir, split)
    for name, prompts in texts.items():
        if text_digest(prompts) != split["sha256"][name]:
            raise ValueError(
                f"the {name} prompts in {data_dir} differ from protocol v{split['version']}'s split"
                f" ({path.name}): the data changed; rebuild the split and say so in the results"
            )
    whole = hashlib.sha256(json.dumps(split["sha256"], sort_keys=True).encode()).hexdigest()
    return ProtocolPrompts(texts["harmful"], texts["harmless"], texts["borderline"], whole)
