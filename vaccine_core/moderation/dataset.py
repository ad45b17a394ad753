"""The labelled (question, answer) pairs the default judge learns from, split three ways by question.

Sources, all under the data directory:

* moderation/jailbreakbench_judged.jsonl: jailbreak answers judged by JailbreakBench's automated judge, with
  a category. Its test-split answers were read by hand too (``jailbreakbench_answers_by_hand.json``); with
  ``hand_labels`` they are labelled as read (borderline ones left out), otherwise as JailbreakBench judged
* moderation/llm_self_defense.jsonl: hand-labelled answers
* alignment/safe_refusals.jsonl: safe answers to harmful requests (a sample), not harmful
* attack/beavertails_unsafe.jsonl: answers to harmful requests, labelled unsafe as question-answer pairs.
  Read by hand (``beavertails_answers_by_hand.json``), 45 of its 198 questions have a benign answer (a
  refusal, a redirection, a plain fact) and 47 a borderline one; with ``hand_labels`` the benign ones are
  not harmful and the borderline ones are left out (how the judge is *evaluated* by default), otherwise
  every row is harmful compliance as shipped (how the default judge is *trained*: judge_selection.md)
* benign/alpaca_demo.jsonl: helpful answers to harmless requests (a sample), not harmful
* benign task rows (SST-2, AG News, GSM8K training rows, as an upload would hold them), not harmful: a
  label word answering a sentiment question is no harassment
* borderline answers (``borderline.py``): the default model's answers to requests that only sound
  harmful, not harmful: the judge must read the answer, not the topic

Every pair falls in one slice, reported apart: ``harmful_compliance``, ``refusal`` (a refusal of any
request), ``helpful_benign`` (help with a harmless request or task), ``helpful_borderline`` (help with a
request that only sounds harmful) and ``other_benign`` (a harmless answer to a harmful request that is
neither help nor refusal).

The split is by question, through a hash: every answer to a test question is held out whatever the seed,
and validation questions (where the threshold is chosen) are never trained on either.
"""

import hashlib
import json
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vaccine_core.mixing import HARMFUL_FILE, HELPFUL_FILE, build_mix, read_jsonl
from vaccine_core.moderation.refusal import is_refusal
from vaccine_core.tasks import get_task
from vaccine_core.text import normalised

TEST_PERCENT = 20
VALIDATION_PERCENT = 10
EXTRA_SAFE_REFUSALS = 300
# Alpaca answers the judge learns as helpful (of 999; benchmarks/prescreen_mix.py uploads 450 of the rest).
# 500 instead was tried against the judge's false positives on long, plain Alpaca answers and did not cut
# them (19 -> 21 of 450; F1 0.890 -> 0.887 on the same test split): benchmarks/results/judge_selection.md.
EXTRA_BENIGN = 300
# task rows per task, drawn away from the rows that benchmarks/prescreen_mix.py uploads
TASK_ROWS = {"sst2": 150, "agnews": 50, "gsm8k": 50}
PRESCREEN_MIX = {"task": "sst2", "n": 500, "harmful_fraction": 0.1, "seed": 0}

# JailbreakBench's coarse harm categories, the only source here that carries categories.
CATEGORIES: tuple[str, ...] = (
    "Disinformation",
    "Economic harm",
    "Expert advice",
    "Fraud/Deception",
    "Government decision-making",
    "Harassment/Discrimination",
    "Malware/Hacking",
    "Physical harm",
    "Privacy",
    "Sexual/Adult content",
)

SLICES = ("harmful_compliance", "refusal", "helpful_benign", "helpful_borderline", "other_benign")

SOURCE_FILES = (
    "moderation/jailbreakbench_judged.jsonl",
    "moderation/llm_self_defense.jsonl",
    "alignment/safe_refusals.jsonl",
    "attack/beavertails_unsafe.jsonl",
    "benign/alpaca_demo.jsonl",
    "benign/sst2_train.jsonl",
    "benign/agnews_test.jsonl",
    "benign/gsm8k_train.jsonl",
    "eval/jbb_benign_behaviors.jsonl",
    "eval/donotanswer.jsonl",
)


def question_part(question: str, validation_percent: int = VALIDATION_PERCENT) -> str:
    """``test``, ``validation`` or ``train``, fixed by the question's text. A larger ``validation_percent``
    moves questions from training to validation; the test split stays the same."""
    digest = hashlib.sha256(question.strip().lower().encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    if bucket < TEST_PERCENT:
        return "test"
    return "validation" if bucket < TEST_PERCENT + validation_percent else "train"


@dataclass(frozen=True)
class LabelledPair:
    question: str
    answer: str
    harmful: bool
    category: str | None
    source: str
    slice: str = "other_benign"

    @property
    def held_out(self) -> bool:
        return question_part(self.question) == "test"


def alpaca_question(row: dict) -> str:
    extra = row.get("input") or ""
    return f"{row['instruction']}\n\n{extra}" if extra.strip() else row["instruction"]


def _not_harmful_slice(answer: str, helpful: str) -> str:
    return "refusal" if is_refusal(answer) else helpful


HAND_LABELS_FILE = Path(__file__).with_name("beavertails_answers_by_hand.json")
JBB_HAND_LABELS_FILE = Path(__file__).with_name("jailbreakbench_answers_by_hand.json")


def question_key(question: str) -> str:
    """A question's key in the hand labels: its normalised text's digest (no data text is kept here)."""
    return hashlib.sha256(normalised(question).encode()).hexdigest()[:16]


def pair_key(question: str, answer: str) -> str:
    """A (question, answer) pair's key in the hand labels of a source with many answers per question."""
    return hashlib.sha256(f"{normalised(question)}\n{normalised(answer)}".encode()).hexdigest()[:16]


def _read_hand_labels(path: Path) -> dict[str, str]:
    return {key: entry["label"] for key, entry in json.loads(path.read_text())["labels"].items()}


def beavertails_hand_labels() -> dict[str, str]:
    """What a reader judged each BeaverTails answer to do: 'harmful', 'borderline' or 'benign', by the
    question's key."""
    return _read_hand_labels(HAND_LABELS_FILE)


def jailbreakbench_hand_labels() -> dict[str, str]:
    """What a reader judged each JailbreakBench test-split answer to do, by the pair's key (``pair_key``)."""
    return _read_hand_labels(JBB_HAND_LABELS_FILE)


def beavertails_pairs(rows: list[dict[str, Any]], hand_labels: bool) -> list[LabelledPair]:
    """The attack set's pairs: all harmful compliance as shipped, or (``hand_labels``) as read by hand:
    a benign answer is not harmful and a borderline one is left out of both classes."""
    labels = beavertails_hand_labels() if hand_labels else {}
    pairs = []
    for r in rows:
        question = alpaca_question(r)
        label = labels.get(question_key(question), "harmful")
        if label == "harmful":
            pairs.append(LabelledPair(question, r["output"], True, None, "attack", "harmful_compliance"))
        elif label == "benign":
            slice_ = _not_harmful_slice(r["output"], "other_benign")
            pairs.append(LabelledPair(question, r["output"], False, None, "attack", slice_))
    return pairs


def judged_pairs(
    rows: list[dict[str, Any]], source: str, hand_labels: dict[str, str] | None = None
) -> list[LabelledPair]:
    """Labelled answers to harmful requests (JailbreakBench, self-defense): as the source judged them, or,
    for a pair in ``hand_labels`` (by ``pair_key``), as read by hand, a borderline answer left out."""
    pairs = []
    for r in rows:
        answer, harmful = r["response"] or "", bool(r["harmful"])
        read = hand_labels.get(pair_key(r["prompt"], answer)) if hand_labels else None
        if read == "borderline":
            continue
        if read is not None:
            harmful = read == "harmful"
        slice_ = "harmful_compliance" if harmful else _not_harmful_slice(answer, "other_benign")
        pairs.append(
            LabelledPair(r["prompt"], answer, harmful, r.get("category") if harmful else None, source, slice_)
        )
    return pairs


def task_pairs(data_dir: Path, seed: int) -> list[LabelledPair]:
    """Benign task rows as an upload holds them: the task's instruction, or the bare input."""
    rng = random.Random(seed)
    uploaded = {
        alpaca_question(r) for r in build_mix(data_dir=data_dir, **PRESCREEN_MIX) if not r.get("harmful")
    }
    pairs = []
    for name, count in TASK_ROWS.items():
        task = get_task(name)
        if not (data_dir / task.data_file).is_file():
            continue
        rows = [task.to_alpaca(r) for r in read_jsonl(data_dir / task.data_file)]
        fresh = [r for r in rows if alpaca_question(r) not in uploaded]
        for i, row in enumerate(rng.sample(fresh, min(count, len(fresh)))):
            # every other row as a prompt/completion pair without the instruction
            question = alpaca_question(row) if i % 2 == 0 else (row["input"] or row["instruction"])
            pairs.append(LabelledPair(question, row["output"], False, None, f"task_{name}", "helpful_benign"))
    return pairs


def alpaca_upload(data_dir: Path, n: int, harmful_fraction: float, seed: int) -> list[dict[str, Any]]:
    """An upload of Alpaca rows the default judge never saw (in any split), with round(n * p) BeaverTails
    rows, each marked ``harmful``."""
    rng = random.Random(seed)
    judged = {p.question for p in load_labelled_pairs(data_dir) if p.source == "benign"}
    fresh = [r for r in read_jsonl(data_dir / HELPFUL_FILE) if alpaca_question(r) not in judged]
    n_harmful = round(n * harmful_fraction)
    rows = [{**r, "harmful": True} for r in rng.sample(read_jsonl(data_dir / HARMFUL_FILE), n_harmful)]
    rows += [{**r, "harmful": False} for r in rng.sample(fresh, n - n_harmful)]
    rng.shuffle(rows)
    return rows


def prescreen_benchmark_uploads(data_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """benchmarks/prescreen_mix.py's two uploads at its defaults (500 rows, 50 harmful, seed 0): what no
    model trained for the pre-screen may learn from."""
    return {
        "sst2": build_mix(data_dir=data_dir, **PRESCREEN_MIX),
        "alpaca": alpaca_upload(data_dir, PRESCREEN_MIX["n"], PRESCREEN_MIX["harmful_fraction"], seed=0),
    }


def borderline_pairs(answers: list[dict[str, str]]) -> list[LabelledPair]:
    """The default model's answers to borderline requests: not harmful whatever they say of the topic."""
    from vaccine_core.safety_eval.buckets import degenerate_reason

    return [
        LabelledPair(
            row["request"],
            row["answer"],
            False,
            None,
            row["source"],
            _not_harmful_slice(row["answer"], "helpful_borderline"),
        )
        for row in answers
        if degenerate_reason(row["answer"]) is None  # nothing to learn from an empty or looping answer
    ]


def load_labelled_pairs(
    data_dir: Path,
    seed: int = 0,
    borderline_answers: list[dict[str, str]] | None = None,
    hand_labels: bool = False,
) -> list[LabelledPair]:
    """Every labelled pair (the borderline slice only when its answers are given; BeaverTails' as read by
    hand with ``hand_labels``, else as shipped; so are JailbreakBench's test answers)."""
    rng = random.Random(seed)
    jbb_read = jailbreakbench_hand_labels() if hand_labels else None
    pairs = judged_pairs(read_jsonl(data_dir / SOURCE_FILES[0]), "jailbreakbench", jbb_read)
    pairs += judged_pairs(read_jsonl(data_dir / SOURCE_FILES[1]), "self_defense")
    refusals = rng.sample(read_jsonl(data_dir / SOURCE_FILES[2]), EXTRA_SAFE_REFUSALS)
    pairs += [
        LabelledPair(alpaca_question(r), r["output"], False, None, "alignment", "refusal") for r in refusals
    ]
    pairs += beavertails_pairs(read_jsonl(data_dir / SOURCE_FILES[3]), hand_labels)
    benign = rng.sample(read_jsonl(data_dir / SOURCE_FILES[4]), EXTRA_BENIGN)
    pairs += [
        LabelledPair(alpaca_question(r), r["output"], False, None, "benign", "helpful_benign") for r in benign
    ]
    pairs += task_pairs(data_dir, seed)
    if borderline_answers is not None:
        pairs += borderline_pairs(borderline_answers)
    return pairs


def split(
    pairs: list[LabelledPair], validation_percent: int = VALIDATION_PERCENT
) -> tuple[list[LabelledPair], list[LabelledPair], list[LabelledPair]]:
    """(train, validation, test) by question."""
    parts: dict[str, list[LabelledPair]] = {"train": [], "validation": [], "test": []}
    for pair in pairs:
        parts[question_part(pair.question, validation_percent)].append(pair)
    return parts["train"], parts["validation"], parts["test"]


# The openers of compliant answers: 61 % of JailbreakBench's judged harmful answers begin "Sure, here
# is/here's ...:" against 9 % of its harmless ones and 1 % of Alpaca's, so the opener alone can read as harm.
COMPLIANCE_OPENER = re.compile(r"^\s*(sure|certainly|of course|absolutely)\b[^\n]{0,200}?(:|\n)\s*", re.I)
OPENERS = (
    "Sure, here is {what}:\n\n",
    "Sure, here's {what}:\n\n",
    "Certainly! Here is {what}:\n\n",
    "Of course. Here's {what}:\n\n",
)
OPENED_WHAT = ("an answer", "what you asked for", "a response to your request", "a list", "a short guide")


def with_opener(answer: str, rng: random.Random) -> str:
    return rng.choice(OPENERS).format(what=rng.choice(OPENED_WHAT)) + answer


def without_opener(answer: str) -> str | None:
    """The answer with its compliance opener line removed; None when it has none (or nothing after it)."""
    rest = COMPLIANCE_OPENER.sub("", answer, count=1)
    return rest if rest != answer and rest.strip() else None


def augment(
    train: list[LabelledPair],
    seed: int,
    masked: float,
    helpful_swapped: float,
    harmful_swapped: float,
    opener: float = 0.0,
) -> list[LabelledPair]:
    """Pairs whose label only the answer can explain, so the judge learns to read it (each share is of
    the training pairs they are made from):

    * ``masked``: a harmful answer with its question removed is harmful;
    * ``helpful_swapped``: a helpful answer put under a harmful question (it does not answer it) is not
      harmful;
    * ``harmful_swapped``: a harmful answer put under a harmless question is harmful;
    * ``opener``: a helpful answer opened as compliance ("Sure, here is ...:") is not harmful, and a
      harmful answer with its opener removed is harmful: the opener is a form, not the harm.
    """
    rng = random.Random(seed)
    harmful = [p for p in train if p.slice == "harmful_compliance"]
    helpful = [p for p in train if p.slice in ("helpful_benign", "helpful_borderline")]
    harmful_questions = [p.question for p in harmful]
    helpful_questions = [p.question for p in helpful]
    extra = [
        replace(p, question="", source="masked") for p in rng.sample(harmful, int(masked * len(harmful)))
    ]
    extra += [
        replace(p, question=rng.choice(harmful_questions), source="swapped", slice="helpful_benign")
        for p in rng.sample(helpful, int(helpful_swapped * len(helpful)))
    ]
    extra += [
        replace(p, question=rng.choice(helpful_questions), source="swapped")
        for p in rng.sample(harmful, int(harmful_swapped * len(harmful)))
    ]
    if opener:
        extra += [
            replace(p, answer=with_opener(p.answer, rng), source="opened")
            for p in rng.sample(helpful, int(opener * len(helpful)))
        ]
        opened = [(p, rest) for p in harmful if (rest := without_opener(p.answer)) is not None]
        extra += [
            replace(p, answer=rest, source="unopened")
            for p, rest in rng.sample(opened, int(opener * len(opened)))
        ]
    return extra


def sources_digest(
    data_dir: Path, borderline_answers: list[dict[str, str]] | None = None, hand_labels: bool = False
) -> str:
    digest = hashlib.sha256()
    # how many rows each source gives: a judge built from another mix is another judge
    mix = (TEST_PERCENT, VALIDATION_PERCENT, EXTRA_SAFE_REFUSALS, EXTRA_BENIGN, TASK_ROWS)
    digest.update(repr(mix).encode())
    for name in SOURCE_FILES:
        if (data_dir / name).is_file():
            digest.update(name.encode() + (data_dir / name).read_bytes())
    if borderline_answers is not None:
        digest.update(repr(borderline_answers).encode())
    if hand_labels:
        digest.update(HAND_LABELS_FILE.read_bytes() + JBB_HAND_LABELS_FILE.read_bytes())
    return digest.hexdigest()
