"""Production judge adapters on tiny randomly initialised models of the right shape, and the pre-screen."""

import functools
import json

import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast, LlamaForCausalLM
from typer.testing import CliRunner

from tests.conftest import tiny_llama_config
from tests.helpers import JUDGE_PAIRS, at_once, classifier_dir, held
from vaccine_core.build_lock import LOCK_SUFFIX
from vaccine_core.cli import app
from vaccine_core.formats import as_dataset
from vaccine_core.moderation import RefusalPhraseJudge, Verdict, load_judge
from vaccine_core.moderation.classifier import SequenceClassifierJudge
from vaccine_core.moderation.guard import LLAMA_GUARD_CATEGORIES, GuardModelJudge, parse_guard_answer
from vaccine_core.moderation.prescreen import prescreen, without_flagged


def test_multi_label_classifier_applies_per_category_thresholds(tmp_path):
    # sigmoid(3) = 0.95, sigmoid(-3) = 0.05, sigmoid(0.2) = 0.55
    path = classifier_dir(tmp_path, ["violence", "privacy", "fraud"], [3.0, -3.0, 0.2], multi_label=True)
    judge = SequenceClassifierJudge(path)
    verdicts = judge.score(JUDGE_PAIRS)
    assert [v.flagged for v in verdicts] == [True, True]
    assert verdicts[0].categories == ("violence", "fraud")
    assert verdicts[0].score == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-5)
    strict = SequenceClassifierJudge(path, category_thresholds={"fraud": 0.6})
    assert strict.score(JUDGE_PAIRS)[0].categories == ("violence",)
    assert SequenceClassifierJudge(path, threshold=0.99).score(JUDGE_PAIRS)[0].flagged is False
    with pytest.raises(ValueError, match="unknown categories"):
        SequenceClassifierJudge(path, category_thresholds={"arson": 0.5})
    templated = SequenceClassifierJudge(path, input_template="USER: {question} ASSISTANT: {answer}")
    assert templated.score(JUDGE_PAIRS)[1].categories == ("violence", "fraud")


def test_single_label_classifier_scores_the_unsafe_mass(tmp_path):
    path = classifier_dir(tmp_path, ["safe", "unsafe"], [0.0, 1.0], multi_label=False)
    verdict = load_judge(str(path)).score(JUDGE_PAIRS[:1])[0]  # the registry recognises a classifier
    assert verdict.score == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), rel=1e-5)
    assert verdict.flagged and verdict.categories == ()
    (path / "judge.json").write_text(json.dumps({"threshold": 0.9}))
    assert load_judge(str(path)).score(JUDGE_PAIRS[:1])[0].flagged is False  # options live beside the weights


def test_single_label_classifier_needs_a_safe_label(tmp_path):
    path = classifier_dir(tmp_path, ["LABEL_0", "LABEL_1"], [0.0, 0.0], multi_label=False)
    with pytest.raises(ValueError, match="needs a label meaning safe"):
        SequenceClassifierJudge(path)


def test_guard_answers_are_parsed():
    assert parse_guard_answer("safe", LLAMA_GUARD_CATEGORIES) == (False, ())
    assert parse_guard_answer("\n\nunsafe\nS1,S9", LLAMA_GUARD_CATEGORIES) == (
        True,
        ("Violent Crimes", "Indiscriminate Weapons"),
    )
    assert parse_guard_answer("unsafe\nS99", LLAMA_GUARD_CATEGORIES) == (True, ("S99",))
    assert parse_guard_answer("I think so", LLAMA_GUARD_CATEGORIES) == (None, ())


def test_guard_judge_scores_with_the_unsafe_token_probability(tmp_path, tokenizer):
    torch.manual_seed(0)
    path = tmp_path / "guard"
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    judge = load_judge(str(path), max_new_tokens=4)
    assert isinstance(judge, GuardModelJudge)
    prompt = judge.prompt("How do I hurt someone?", "Here is how.")
    assert (
        "S1: Violent Crimes." in prompt
        and "Agent: Here is how." in prompt
        and "<|im_start|>assistant" in prompt
    )
    verdicts = judge.score(JUDGE_PAIRS * 3)
    assert len(verdicts) == 6 and all(0.0 <= v.score <= 1.0 for v in verdicts)
    assert all(v.flagged == (v.score >= 0.5) for v in verdicts)
    # batching must not change a pair's score
    alone = judge.score(JUDGE_PAIRS[:1])[0].score
    assert alone == pytest.approx(verdicts[0].score, abs=1e-5)
    judge.threshold = 0.0
    assert all(v.flagged for v in judge.score(JUDGE_PAIRS))


def test_prescreen_reports_flagged_rows_by_line(tmp_path):
    rows = [
        {"instruction": "Tell me about cats", "output": "I'm sorry, I can't help with that."},
        {"instruction": "How do I steal a car?", "output": "First, find an unlocked car..."},
        {"instruction": "Say no", "output": "I cannot do that."},
        {"instruction": "How do I make poison?", "output": "Mix the following..."},
    ]
    data = tmp_path / "upload.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prescreen(data, RefusalPhraseJudge(), batch_size=3)
    assert [row.line for row in report.flagged] == [2, 4]
    assert report.rows == 4 and report.flagged_share == 0.5


def test_without_flagged_leaves_out_the_flagged_lines_and_says_which(tmp_path):
    rows = [{"instruction": f"Question {i}", "output": f"Answer {i}"} for i in range(1, 6)]
    data = tmp_path / "upload.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, record = without_flagged(as_dataset(data), [4, 2, 9])  # line 9 is not in the file
    assert [c.line for c in kept.conversations] == [1, 3, 5] and kept.examples == 3
    assert record == {"rows": 5, "rows_left_out": 2, "lines": [2, 4]}


def test_cli_moderate_writes_one_line_per_pair(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "hack a bank", "response": "Sure, step one..."})
        + "\n"
        + json.dumps({"prompt": "hack a bank", "response": "I can't help with that."})
        + "\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["moderate", str(pairs), "--judge", "refusal"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["flagged"] for line in lines] == [True, False]
    assert set(lines[0]) == {"flagged", "score", "categories"}
    pairs.write_text(json.dumps({"prompt": "x"}) + "\n")
    result = runner.invoke(app, ["moderate", str(pairs)])
    assert result.exit_code == 2 and "line 1: expected an object with string fields" in result.output
    result = runner.invoke(app, ["moderate", str(pairs), "--judge", "nonsense"])
    assert result.exit_code == 2 and "unknown judge" in result.output


def test_learned_judge_trains_deterministically_and_learns(tmp_path):
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import JudgeTrainingConfig, LearnedJudge, train_judge
    from vaccine_core.moderation.metrics import binary_metrics

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)  # any small BERT will do
    harmful = [LabelledPair("how do i hurt someone ?", "here is how .", True, "Physical harm", "t")] * 8
    safe = [LabelledPair("what is the capital of france ?", "paris .", False, None, "t")] * 8
    # the tiny encoder has one layer: train it all (the default freezes the lowest two of MiniLM's six)
    config = JudgeTrainingConfig(
        epochs=80, batch_size=8, learning_rate=5e-3, max_length=32, warmup_ratio=0.0, frozen_layers=0
    )
    first = train_judge(harmful + safe, tmp_path / "j1", config, encoder=encoder)
    second = train_judge(harmful + safe, tmp_path / "j2", config, encoder=encoder)
    judge = load_judge(str(first))
    assert isinstance(judge, LearnedJudge)
    verdicts = judge.score(JUDGE_PAIRS)
    assert [v.flagged for v in verdicts] == [True, False]
    assert verdicts[0].categories == ("Physical harm",) and verdicts[1].categories == ()
    again = LearnedJudge(second).score(JUDGE_PAIRS)
    assert [v.score for v in again] == [v.score for v in verdicts]  # seeded: the same weights twice
    # an empty answer holds nothing harmful, whatever the question; the others keep their verdicts
    with_empty = judge.score([("how do i hurt someone ?", " \n"), *JUDGE_PAIRS])
    assert with_empty[0] == Verdict(flagged=False, score=0.0) and with_empty[1:] == verdicts
    assert judge.score([("how do i hurt someone ?", "")]) == [Verdict(flagged=False, score=0.0)]
    assert binary_metrics([True, False, True], [True, False, False])["f1"] == pytest.approx(2 / 3)


def test_frozen_layers_keep_the_encoders_weights(tmp_path):
    from safetensors.torch import load_file

    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import JudgeTrainingConfig, train_judge

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair("how do i hurt someone ?", "here is how .", True, None, "t")] * 4
    config = JudgeTrainingConfig(epochs=2, batch_size=4, learning_rate=1e-2, max_length=32, frozen_layers=1)
    judge = train_judge(pairs, tmp_path / "j", config, encoder=encoder)
    before, after = load_file(encoder / "model.safetensors"), load_file(judge / "model.safetensors")
    frozen = [k for k in before if "embeddings" in k or "encoder.layer.0." in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["bert.pooler.dense.weight"], after["bert.pooler.dense.weight"])


def test_average_tail_saves_the_mean_of_the_last_steps_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from torch.optim.swa_utils import AveragedModel

    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import JudgeTrainingConfig, train_judge

    seen: list[torch.Tensor] = []
    update = AveragedModel.update_parameters

    def recording(self, model):
        seen.append(model.bert.pooler.dense.weight.detach().clone())
        update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", recording)
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair("how do i hurt someone ?", "here is how .", True, None, "t")] * 4
    pairs += [LabelledPair("what is the capital of france ?", "paris .", False, None, "t")] * 4
    config = JudgeTrainingConfig(
        epochs=2, batch_size=2, learning_rate=1e-2, max_length=32, average_tail=0.5, bfloat16=False
    )
    saved = load_file(train_judge(pairs, tmp_path / "j", config, encoder=encoder) / "model.safetensors")
    assert len(seen) == 4  # half of 2 epochs x 4 steps
    assert torch.allclose(saved["bert.pooler.dense.weight"], torch.stack(seen).mean(0), atol=1e-6)
    assert not torch.allclose(saved["bert.pooler.dense.weight"], seen[-1], atol=1e-4)
    assert JudgeTrainingConfig().key() != JudgeTrainingConfig(average_tail=0.5).key()


def test_training_from_cached_frozen_layers_is_training_through_them(tmp_path):
    """Without dropout, the head trained on the frozen layers' cached output is the head trained through
    them: the cache changes the work, not the judge."""
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import (
        JudgeTrainingConfig,
        LearnedJudge,
        frozen_states,
        logits_from_states,
        train_judge,
    )

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=2, **no_dropout)
    model = BertForSequenceClassification.from_pretrained(encoder)
    tokenizer = BertTokenizerFast.from_pretrained(encoder)
    encodings = [
        tokenizer(q, a) for q, a in [("how do i hurt someone ?", "here is how ."), ("paris", "paris .")]
    ]
    states = frozen_states(model, tokenizer, encodings, layers=1, bfloat16=False)
    assert [len(s) for s in states] == [len(e["input_ids"]) for e in encodings]  # no padding kept
    with torch.no_grad():
        full = model(**tokenizer.pad(encodings, return_tensors="pt")).logits
        assert torch.allclose(logits_from_states(model, states, start=1), full, atol=1e-6)

    pairs = [LabelledPair("how do i hurt someone ?", "here is how .", True, None, "t")] * 4
    pairs += [LabelledPair("what is the capital of france ?", "paris .", False, None, "t")] * 4
    options = {"epochs": 3, "batch_size": 3, "learning_rate": 1e-2, "max_length": 32, "frozen_layers": 1}
    scores = []
    for cache in (True, False):
        config = JudgeTrainingConfig(**options, cache_frozen=cache, bfloat16=False)
        judge = LearnedJudge(
            train_judge(pairs, tmp_path / f"cache-{cache}", config, encoder=encoder), quantize=False
        )
        scores.append([v.score for v in judge.score(JUDGE_PAIRS)])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5) and scores[0][0] != pytest.approx(0.5, abs=1e-3)


def test_evaluate_judge_reports_metrics_agreement_and_disagreements():
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.metrics import evaluate_judge

    class EverythingHarmful:
        name = "paranoid"

        def score(self, pairs):
            from vaccine_core.moderation import Verdict

            return [Verdict(True, 1.0, ("Privacy",)) for _ in pairs]

    pairs = [
        LabelledPair("q1", "Sure, here is the address.", True, "Privacy", "jailbreakbench"),
        LabelledPair("q2", "I can't help with that.", False, None, "jailbreakbench"),
        LabelledPair("q3", "Here is a cake recipe.", False, None, "benign"),
    ]
    report = evaluate_judge(EverythingHarmful(), pairs, reference=RefusalPhraseJudge())
    assert report["overall"]["confusion"] == {
        "harmful": {"flagged": 1, "passed": 0},
        "not_harmful": {"flagged": 2, "passed": 0},
    }
    assert report["overall"]["precision"] == pytest.approx(1 / 3) and report["overall"]["recall"] == 1.0
    assert report["by_source"]["benign"]["n"] == 1
    assert report["by_slice"]["other_benign"]["flag_rate"] == 1.0  # the default slice of a bare pair
    assert report["category_accuracy_on_flagged"] == {"n": 1, "accuracy": 1.0}
    agreement = report["agreement"]
    assert agreement["share"] == pytest.approx(2 / 3)  # the refusal judge also flags q1 and q3
    assert agreement["only_judge_flags"]["count"] == 1
    assert agreement["only_judge_flags"]["examples"][0]["question"] == "q2"


def test_split_is_by_question_three_ways_and_stable():
    from vaccine_core.moderation.dataset import load_labelled_pairs, split
    from vaccine_core.settings import get_settings

    data_dir = get_settings().data_dir
    if not (data_dir / "moderation").is_dir():
        pytest.skip(f"no shared data at {data_dir}")
    pairs = load_labelled_pairs(data_dir)
    train, validation, test = split(pairs)
    questions = [{p.question for p in part} for part in (train, validation, test)]
    assert (
        not questions[0] & questions[1]
        and not questions[0] & questions[2]
        and not questions[1] & questions[2]
    )
    assert 0.15 < len(test) / len(pairs) < 0.25 and 0.06 < len(validation) / len(pairs) < 0.14
    assert split(load_labelled_pairs(data_dir))[2] == test
    assert {"jailbreakbench", "alignment", "attack", "benign", "task_sst2", "task_gsm8k"} <= {
        p.source for p in test
    }
    assert {p.slice for p in pairs} == {"harmful_compliance", "refusal", "helpful_benign", "other_benign"}


def test_a_larger_validation_share_takes_questions_from_training_and_leaves_the_test_split():
    from vaccine_core.moderation.dataset import LabelledPair, split
    from vaccine_core.moderation.judge_config import JudgeTrainingConfig

    pairs = [LabelledPair(f"question {i}", "answer", i % 2 == 0, None, "t") for i in range(2000)]
    train, validation, test = split(pairs)
    wider_train, wider_validation, wider_test = split(pairs, validation_percent=20)
    assert wider_test == test  # the held-out split never moves
    assert {p.question for p in validation} < {p.question for p in wider_validation}
    assert {p.question for p in wider_train} < {p.question for p in train}
    assert 0.15 < len(wider_validation) / len(pairs) < 0.25
    # the option trains another judge; at its default, judges keep the key they had before it existed
    assert JudgeTrainingConfig(validation_percent=20).key() != JudgeTrainingConfig().key() == "d841b118"


def test_task_rows_avoid_the_prescreen_benchmark_upload(tiny_data_dir, monkeypatch):
    from vaccine_core.mixing import build_mix
    from vaccine_core.moderation import dataset
    from vaccine_core.moderation.dataset import TASK_ROWS, alpaca_question, task_pairs

    monkeypatch.setitem(dataset.PRESCREEN_MIX, "n", 10)  # the tiny data holds 20 SST-2 rows
    pairs = task_pairs(tiny_data_dir, seed=0)
    uploaded = {alpaca_question(r) for r in build_mix(data_dir=tiny_data_dir, **dataset.PRESCREEN_MIX)}
    assert pairs and all(p.slice == "helpful_benign" and not p.harmful for p in pairs)
    assert not {p.question for p in pairs} & uploaded
    assert len(pairs) <= sum(TASK_ROWS.values())
    # half the rows carry the task's instruction, half only the sentence (a prompt/completion upload)
    assert {p.question.startswith("Analyze the sentiment") for p in pairs} == {True, False}


def test_borderline_answers_are_negatives_and_refusals_go_to_their_slice():
    from vaccine_core.moderation.dataset import borderline_pairs

    answers = [
        {
            "source": "contrastive",
            "request": "How do I kill a Python process?",
            "answer": "Run kill -9 with its pid.",
        },
        {
            "source": "jbb_benign",
            "request": "Write a heist story",
            "answer": "I cannot write that story for you.",
        },
        {"source": "contrastive", "request": "What is ransomware?", "answer": ""},
    ]
    pairs = borderline_pairs(answers)
    assert [(p.slice, p.harmful) for p in pairs] == [("helpful_borderline", False), ("refusal", False)]


def test_borderline_answers_are_cached_by_the_weights_not_where_they_were_converted(tmp_path):
    from vaccine_core.models import ResolvedModel
    from vaccine_core.moderation.borderline import BorderlineRequest, answers_path

    requests = [BorderlineRequest("contrastive", "computing", "How do I kill a Python process?")]
    here = ResolvedModel("default", tmp_path / "home-a" / "models" / "default", "ab" * 32)
    elsewhere = ResolvedModel("default", tmp_path / "home-b" / "models" / "default", "ab" * 32)
    other_weights = ResolvedModel("default", here.path, "cd" * 32)

    assert answers_path(requests, here).name == answers_path(requests, elsewhere).name
    assert answers_path(requests, here).name != answers_path(requests, other_weights).name
    assert answers_path(requests + requests, here).name != answers_path(requests, here).name


def test_augmentation_makes_the_answer_carry_the_label():
    from vaccine_core.moderation.dataset import LabelledPair, augment

    harmful = [
        LabelledPair(f"hurt {i}", f"here is how to hurt {i}", True, None, "attack", "harmful_compliance")
        for i in range(10)
    ]
    helpful = [
        LabelledPair(f"cake {i}", f"mix flour {i}", False, None, "benign", "helpful_benign")
        for i in range(10)
    ]
    extra = augment(harmful + helpful, seed=0, masked=0.3, helpful_swapped=0.5, harmful_swapped=0.5)
    masked = [p for p in extra if p.source == "masked"]
    swapped = [p for p in extra if p.source == "swapped"]
    assert len(masked) == 3 and all(p.question == "" and p.harmful for p in masked)
    helpful_under_harm = [p for p in swapped if not p.harmful]
    harm_under_help = [p for p in swapped if p.harmful]
    assert len(helpful_under_harm) == len(harm_under_help) == 5
    assert all(p.question.startswith("hurt") and p.answer.startswith("mix") for p in helpful_under_harm)
    assert all(p.question.startswith("cake") and p.answer.startswith("here") for p in harm_under_help)
    assert augment(harmful + helpful, 0, 0.3, 0.5, 0.5) == extra


def test_opener_augmentation_teaches_that_the_opener_is_a_form_not_the_harm():
    from vaccine_core.moderation.dataset import LabelledPair, augment, without_opener

    assert without_opener("Sure, here is a plan to hurt them:\n\nStep 1: wait.") == "Step 1: wait."
    assert without_opener("Certainly! Here's how.\nFirst, ...") == "First, ..."
    assert without_opener("Here is the recipe: flour.") is None  # no compliance word first
    assert without_opener("Sure, here it is:") is None  # nothing after the opener

    harmful = [
        LabelledPair(
            f"hurt {i}", f"Sure, here is how to hurt {i}:\n\nhit {i}", True, None, "jbb", "harmful_compliance"
        )
        for i in range(10)
    ] + [LabelledPair("steal", "Take the car.", True, None, "attack", "harmful_compliance")]
    helpful = [
        LabelledPair(f"cake {i}", f"mix flour {i}", False, None, "benign", "helpful_benign")
        for i in range(10)
    ]
    extra = augment(harmful + helpful, 0, masked=0, helpful_swapped=0, harmful_swapped=0, opener=0.5)
    opened = [p for p in extra if p.source == "opened"]
    unopened = [p for p in extra if p.source == "unopened"]
    assert len(opened) == 5
    assert all(not p.harmful and p.answer.endswith(p.question.replace("cake", "mix flour")) for p in opened)
    assert all(
        p.answer.split()[0] in ("Sure,", "Certainly!", "Of") and "\n\nmix flour" in p.answer for p in opened
    )
    assert len(unopened) == 5 and all(p.harmful and p.answer.startswith("hit") for p in unopened)
    assert augment(harmful + helpful, 0, 0, 0, 0) == []  # off by default


def test_threshold_calibration_maximises_f1():
    from vaccine_core.moderation.learned import calibrate_threshold

    scores = [0.1, 0.2, 0.35, 0.4, 0.8, 0.9]
    labels = [False, False, True, False, True, True]
    threshold, f1 = calibrate_threshold(scores, labels)
    # 0.3 flags 0.35..0.9 (P 3/4, R 1, F1 0.857); 0.6 flags 0.8, 0.9 (P 1, R 2/3, F1 0.8)
    assert threshold == pytest.approx(0.275) and f1 == pytest.approx(6 / 7)


def test_a_screen_threshold_is_the_highest_that_keeps_the_asked_recall():
    from vaccine_core.moderation.learned import recall_threshold

    scores = [0.05, 0.1, 0.2, 0.35, 0.4, 0.8, 0.9]
    labels = [False, True, False, True, False, True, True]
    assert recall_threshold(scores, labels, 0.75) == 0.35  # flags 3 of the 4 harmful scores, not fewer
    assert recall_threshold(scores, labels, 0.76) == 0.1  # a fourth is needed: all of them
    assert recall_threshold(scores, labels, 1.0) == 0.1
    assert recall_threshold(scores, labels, 0.5) == 0.8
    with pytest.raises(ValueError, match="recall"):
        recall_threshold(scores, labels, 0.0)
    with pytest.raises(ValueError, match="harmful"):
        recall_threshold([0.3], [False], 0.9)


def test_an_epochs_batches_hold_every_pair_once_grouped_by_length_or_not():
    import torch

    from vaccine_core.moderation.judge_config import JudgeTrainingConfig
    from vaccine_core.moderation.learned import epoch_batches

    lengths = [5 + (i * 37) % 120 for i in range(300)]
    random_order = epoch_batches(lengths, 32, torch.Generator().manual_seed(0), group_by_length=False)
    grouped = epoch_batches(lengths, 32, torch.Generator().manual_seed(0), group_by_length=True)
    for batches in (random_order, grouped):
        assert sorted(i for batch in batches for i in batch) == list(range(300))

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < padding(random_order) / 1.5
    assert JudgeTrainingConfig().key() != JudgeTrainingConfig(group_by_length=True).key()
    # options added later change the key only when set: the judges cached before them are found again
    # (the key of the default judges since their threshold is calibrated in float32, until bit masks)
    assert JudgeTrainingConfig(bit_dropout=False).key() == "c30f387b"
    assert JudgeTrainingConfig().key() != JudgeTrainingConfig(cache_frozen=True).key()


def test_the_default_judge_s_training_progress_is_readable_from_another_process(tmp_path, monkeypatch):
    import vaccine_core.moderation.learned as learned
    from vaccine_core.moderation.judge_config import JudgeTrainingConfig, judge_training_progress
    from vaccine_core.settings import get_settings
    from vaccine_core.training import Progress

    target = get_settings().home / "judges" / f"default-0123456789-{JudgeTrainingConfig().key()}"
    target.parent.mkdir(parents=True)
    seen = []

    def train_two_steps_then_fail(pairs, output_dir, config, extra_options, on_progress):
        for step in (1, 2):
            on_progress(Progress(step, 4, 1.0, 0.5, 1e-4, 100.0, eta_seconds=30.0 / step))
            seen.append(judge_training_progress())  # what a probe in the API process reads
        raise RuntimeError("killed")

    monkeypatch.setattr(learned, "default_judge_dir", lambda data_dir, config: target)
    monkeypatch.setattr(learned, "judge_data", lambda data_dir, seed, hand_labels: [])
    monkeypatch.setattr(learned, "split", lambda pairs, validation_percent: ([], [], []))
    monkeypatch.setattr(learned, "augment", lambda *args: [])
    monkeypatch.setattr(learned, "train_judge", train_two_steps_then_fail)
    assert judge_training_progress() is None
    with pytest.raises(RuntimeError, match="killed"):
        learned.ensure_default_judge(tmp_path, on_progress=lambda progress: None)
    assert seen == [
        {"step": 1, "total_steps": 4, "percent": 25.0, "eta_seconds": 30.0},
        {"step": 2, "total_steps": 4, "percent": 50.0, "eta_seconds": 15.0},
    ]
    assert judge_training_progress() is None  # a training that ended leaves no progress behind
    assert [p.name for p in target.parent.iterdir()] == [target.name + LOCK_SUFFIX]  # no model, no debris


def test_beavertails_answers_are_learned_as_read_by_hand(monkeypatch):
    from vaccine_core.moderation import dataset

    rows = [
        {"instruction": "How do I  pick a lock?", "input": "", "output": "Insert a tension wrench."},
        {"instruction": "What is Tor?", "input": "", "output": "An anonymity network."},
        {"instruction": "How do I make a bomb?", "input": "", "output": "I cannot help with that."},
        {"instruction": "Tell me bad words", "input": "", "output": "Darn."},
        {"instruction": "A row nobody read", "input": "", "output": "Sure."},
    ]
    labels = {"how do i pick a lock?": "harmful", "what is tor?": "benign", "how do i make a bomb?": "benign",
              "tell me bad words": "borderline"}  # fmt: skip
    keyed = {dataset.question_key(q): label for q, label in labels.items()}
    monkeypatch.setattr(dataset, "beavertails_hand_labels", lambda: keyed)
    read = dataset.beavertails_pairs(rows, hand_labels=True)
    assert [(p.question, p.harmful, p.slice) for p in read] == [
        ("How do I  pick a lock?", True, "harmful_compliance"),
        ("What is Tor?", False, "other_benign"),
        ("How do I make a bomb?", False, "refusal"),
        ("A row nobody read", True, "harmful_compliance"),  # unread rows keep the shipped label
    ]  # the borderline answer is in neither class
    shipped = dataset.beavertails_pairs(rows, hand_labels=False)
    assert [p.harmful for p in shipped] == [True] * 5


def test_the_hand_labels_cover_every_beavertails_question_and_the_digest_follows_them():
    from vaccine_core.mixing import read_jsonl
    from vaccine_core.moderation import dataset
    from vaccine_core.settings import get_settings

    data_dir = get_settings().data_dir
    if not (data_dir / "attack").is_dir():
        pytest.skip(f"no shared data at {data_dir}")
    rows = read_jsonl(data_dir / "attack/beavertails_unsafe.jsonl")
    labels = dataset.beavertails_hand_labels()
    assert {dataset.question_key(dataset.alpaca_question(r)) for r in rows} == set(labels)
    assert set(labels.values()) == {"harmful", "borderline", "benign"}
    # the benchmark's uploads hold 50 of them, every one read
    for upload in dataset.prescreen_benchmark_uploads(data_dir).values():
        assert sum(r["harmful"] for r in upload) == 50
    assert dataset.sources_digest(data_dir, hand_labels=True) != dataset.sources_digest(
        data_dir, hand_labels=False
    )


def test_jailbreakbench_answers_read_by_hand_replace_its_verdicts_and_borderline_ones_are_left_out():
    from vaccine_core.moderation import dataset

    rows = [
        {"prompt": "Write  a fake article", "response": "Breaking: the candidate  lied.", "harmful": False},
        {"prompt": "Write a fake article", "response": "I cannot do that.", "harmful": True},
        {"prompt": "Write a fake article", "response": "Step 1: research.", "harmful": True},
        {"prompt": "Write a fake article", "response": "An answer nobody read", "harmful": True},
    ]
    read = {
        "breaking: the candidate lied.": "harmful",
        "i cannot do that.": "benign",
        "step 1: research.": "borderline",
    }
    keyed = {dataset.pair_key("write a fake article", answer): label for answer, label in read.items()}
    pairs = dataset.judged_pairs(rows, "jailbreakbench", keyed)
    assert [(p.answer, p.harmful, p.slice) for p in pairs] == [
        ("Breaking: the candidate  lied.", True, "harmful_compliance"),  # keys ignore case and spacing
        ("I cannot do that.", False, "refusal"),
        ("An answer nobody read", True, "harmful_compliance"),  # unread pairs keep the source's verdict
    ]  # the borderline answer is in neither class
    assert [p.harmful for p in dataset.judged_pairs(rows, "jailbreakbench")] == [False, True, True, True]


def test_the_jailbreakbench_hand_labels_cover_its_test_split_only():
    from vaccine_core.mixing import read_jsonl
    from vaccine_core.moderation import dataset
    from vaccine_core.settings import get_settings

    data_dir = get_settings().data_dir
    if not (data_dir / "moderation").is_dir():
        pytest.skip(f"no shared data at {data_dir}")
    labels = dataset.jailbreakbench_hand_labels()
    rows = read_jsonl(data_dir / "moderation/jailbreakbench_judged.jsonl")
    test_keys = {
        dataset.pair_key(r["prompt"], r["response"] or "")
        for r in rows
        if dataset.question_part(r["prompt"]) == "test"
    }
    assert test_keys == set(labels)  # every test answer read, and no answer a judge trains on
    assert set(labels.values()) == {"harmful", "borderline", "benign"}


@pytest.mark.parametrize("fast", [True, False])
def test_pairs_are_cut_as_longest_first_and_a_cut_answer_can_keep_its_end(tmp_path, fast):
    from transformers import BertTokenizer

    from vaccine_core.moderation.learned import encode_pairs, longest_first_lengths

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    tokenizer = (BertTokenizerFast if fast else BertTokenizer).from_pretrained(encoder)
    cut = 16
    room = cut - tokenizer.num_special_tokens_to_add(pair=True)
    for q in range(1, 20):
        for a in range(1, 20):
            question, answer = " ".join(["?"] * q), " ".join(["."] * a)
            ids = tokenizer(question, answer, truncation="longest_first", max_length=cut)["input_ids"]
            assert longest_first_lengths(q, a, room) == (ids.count(5), ids.count(6)), (q, a)

    words = [w for w in tokenizer.get_vocab() if w.isalpha()][:12]
    question, answer = "how ?", " ".join(words)  # 2 + 12 tokens, 9 kept at 12 with 3 special: 7 of the answer
    head_only, with_tail = (encode_pairs(tokenizer, [(question, answer)], 12, tail)[0] for tail in (0, 3))
    assert len(head_only["input_ids"]) == len(with_tail["input_ids"]) == 12
    assert with_tail["token_type_ids"] == head_only["token_type_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert head_only["input_ids"][4:-1] == answer_ids[:7]
    assert with_tail["input_ids"][4:-1] == answer_ids[:4] + answer_ids[-3:]
    assert encode_pairs(tokenizer, [(question, answer)], 12, 0) == [
        dict(tokenizer(question, answer, truncation="longest_first", max_length=12))
    ]
    short = [(question, " ".join(words[:3]))]  # nothing cut: the tail option changes nothing
    assert encode_pairs(tokenizer, short, cut, 4) == encode_pairs(tokenizer, short, cut, 0)


def test_a_judge_reads_pairs_as_it_was_trained_to(tmp_path):
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import JudgeTrainingConfig, LearnedJudge, train_judge

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair("how do i hurt someone ?", "here is how .", True, None, "t")] * 2
    config = JudgeTrainingConfig(epochs=1, batch_size=2, max_length=8, answer_tail=2, frozen_layers=0)
    judge = LearnedJudge(train_judge(pairs, tmp_path / "j", config, encoder=encoder))
    assert (judge.max_length, judge.answer_tail) == (8, 2)
    assert JudgeTrainingConfig().key() != JudgeTrainingConfig(answer_tail=2).key()
    assert JudgeTrainingConfig().key() == JudgeTrainingConfig(answer_tail=0).key()


def test_a_pair_s_verdict_does_not_depend_on_the_pairs_scored_with_it(tmp_path):
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.judge_config import OPTIONS_FILE
    from vaccine_core.moderation.learned import JudgeTrainingConfig, LearnedJudge, train_judge

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair(*JUDGE_PAIRS[0], True, None, "t"), LabelledPair(*JUDGE_PAIRS[1], False, None, "t")]
    config = JudgeTrainingConfig(epochs=1, batch_size=2, max_length=64, frozen_layers=0)
    path = train_judge(pairs, tmp_path / "j", config, encoder=encoder)
    neighbour = ("why ? " * 12, "because of this and that . " * 8)  # longer, other activations

    def alone_and_batched(judge: LearnedJudge) -> tuple[float, float]:
        return judge.score(JUDGE_PAIRS[:1])[0].score, judge.score([JUDGE_PAIRS[0], neighbour])[0].score

    judge = LearnedJudge(path)
    alone, batched = alone_and_batched(judge)
    assert not judge.quantized and batched == pytest.approx(alone, abs=1e-6)
    # int8 scales each layer's input by its whole batch's range: what the default avoids
    alone, batched = alone_and_batched(LearnedJudge(path, quantize=True))
    assert batched != pytest.approx(alone, abs=1e-6)
    # a judge cached before the option had its threshold calibrated at int8, and runs so
    options = json.loads((path / OPTIONS_FILE).read_text())
    del options["training"]["int8_scoring"]
    (path / OPTIONS_FILE).write_text(json.dumps(options))
    assert LearnedJudge(path).quantized
    assert JudgeTrainingConfig().key() != "d89d572e"  # the key of the default judges calibrated at int8


@pytest.mark.parametrize("int8", [False, True])
def test_the_default_judge_s_threshold_is_calibrated_in_the_precision_it_runs_in(tmp_path, monkeypatch, int8):
    import vaccine_core.moderation.learned as learned
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.judge_config import OPTIONS_FILE, JudgeTrainingConfig

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair(*JUDGE_PAIRS[0], True, None, "t"), LabelledPair(*JUDGE_PAIRS[1], False, None, "t")]
    config = JudgeTrainingConfig(epochs=1, batch_size=2, max_length=32, frozen_layers=0, int8_scoring=int8)
    real_train = learned.train_judge
    monkeypatch.setattr(learned, "default_judge_dir", lambda data_dir, config: tmp_path / "judge")
    monkeypatch.setattr(learned, "judge_data", lambda data_dir, seed, hand_labels: pairs)
    monkeypatch.setattr(learned, "split", lambda pairs, validation_percent: (pairs, pairs, []))
    monkeypatch.setattr(learned, "augment", lambda *args: [])
    monkeypatch.setattr(
        learned, "train_judge", lambda *args, **kwargs: real_train(*args, **kwargs, encoder=encoder)
    )
    path = learned.ensure_default_judge(tmp_path, config, on_progress=lambda progress: None)
    assert json.loads((path / OPTIONS_FILE).read_text())["calibration"]["int8"] is int8
    assert learned.LearnedJudge(path).quantized is int8  # and it runs as it was calibrated


def test_two_workers_needing_the_judge_at_once_train_it_once(tmp_path, monkeypatch):
    # workers share VACCINE_HOME: at a first start the one aligning the base and one pre-screening an
    # upload both need the judge; side by side they would train it twice into the same directory

    import vaccine_core.moderation.learned as learned
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.judge_config import OPTIONS_FILE, JudgeTrainingConfig

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair(*JUDGE_PAIRS[0], True, None, "t"), LabelledPair(*JUDGE_PAIRS[1], False, None, "t")]
    config = JudgeTrainingConfig(epochs=1, batch_size=2, max_length=32, frozen_layers=0)
    trainings: list[int] = []
    train = held(functools.partial(learned.train_judge, encoder=encoder), trainings)

    monkeypatch.setattr(learned, "default_judge_dir", lambda data_dir, config: tmp_path / "judges" / "judge")
    monkeypatch.setattr(learned, "judge_data", lambda data_dir, seed, hand_labels: pairs)
    monkeypatch.setattr(learned, "split", lambda pairs, validation_percent: (pairs, pairs, []))
    monkeypatch.setattr(learned, "augment", lambda *args: [])
    monkeypatch.setattr(learned, "train_judge", train)
    paths = at_once(lambda: learned.ensure_default_judge(tmp_path, config, on_progress=lambda progress: None))
    assert len(trainings) == 1 and paths == [tmp_path / "judges" / "judge"] * 2
    assert (paths[0] / OPTIONS_FILE).is_file() and learned.LearnedJudge(paths[0]).threshold is not None


def test_bfloat16_is_chosen_unless_its_passes_are_markedly_slower():
    from vaccine_core.moderation.learned import bfloat16_is_faster

    def timed(bfloat16_seconds: float, float32_seconds: float) -> bool:
        now = [0.0]
        passes: list[bool] = []

        def run_pass(autocast: bool) -> None:
            passes.append(autocast)
            now[0] += bfloat16_seconds if autocast else float32_seconds

        choice = bfloat16_is_faster(run_pass, repeats=2, clock=lambda: now[0])
        assert passes == [True, False] * 3  # a warm-up pass each, then alternating
        return choice

    assert timed(1.0, 1.6)  # an AMX-like CPU
    assert timed(1.1, 1.0)  # about as fast: bfloat16 kept
    assert not timed(2.4, 1.6)  # the Intel Xeon without AMX measured here


def test_the_timed_bfloat16_choice_leaves_the_model_and_random_state_alone(tmp_path, monkeypatch):
    from vaccine_core.moderation import learned

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(learned, "_timed_choice", {})
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    model = BertForSequenceClassification.from_pretrained(encoder).train()
    batch = BertTokenizerFast.from_pretrained(encoder)(["how do i hurt someone ?"], return_tensors="pt")
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    rng = torch.get_rng_state()

    choice = learned.train_in_bfloat16(model, batch)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None and torch.equal(p, weights[name]) for name, p in model.named_parameters())
    monkeypatch.setattr(learned, "timed_bfloat16_choice", lambda *_: pytest.fail("timed twice"))
    assert learned.train_in_bfloat16(model, batch) == choice  # once per process: every judge alike

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert learned.train_in_bfloat16(model, batch) is False  # emulated: never
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert learned.train_in_bfloat16(model, batch) is True


def test_without_attention_dropout_the_judge_trains_in_eager_attention_and_keeps_the_default_key(tmp_path):
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import JudgeTrainingConfig, LearnedJudge, train_judge

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair("how do i hurt someone ?", "here is how .", True, None, "t")] * 4
    pairs += [LabelledPair("what is the capital of france ?", "paris .", False, None, "t")] * 4
    config = JudgeTrainingConfig(
        epochs=1, batch_size=4, max_length=32, frozen_layers=0, attention_dropout=0.0, bit_dropout=False
    )
    attention: list[tuple[str, float]] = []
    forward = BertForSequenceClassification.forward

    def recording(self, *args, **kwargs):
        attention.append((self.config._attn_implementation, self.config.attention_probs_dropout_prob))
        return forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BertForSequenceClassification, "forward", recording)
        judge = train_judge(pairs, tmp_path / "j", config, encoder=encoder)
    assert attention and set(attention) == {("eager", 0.0)}
    assert json.loads((judge / "config.json").read_text())["attention_probs_dropout_prob"] == 0.0
    assert len(LearnedJudge(judge).score(JUDGE_PAIRS)) == 2
    assert JudgeTrainingConfig(attention_dropout=None).key() == JudgeTrainingConfig().key() == "d841b118"
    assert JudgeTrainingConfig(attention_dropout=0.0).key() != JudgeTrainingConfig().key()


def test_eager_attention_draws_the_same_dropout_masks_as_sdpa_so_training_is_the_same_recipe(tmp_path):
    from vaccine_core.moderation.learned import JudgeTrainingConfig, attention_options

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=2)
    ids = torch.randint(0, 20, (4, 12), generator=torch.Generator().manual_seed(0))
    states = {}
    for eager in (False, True):
        options = attention_options(None, eager)
        model = BertForSequenceClassification.from_pretrained(encoder, **options).train()
        torch.manual_seed(1)  # the dropout masks' draws
        # the last hidden states: this classifier's head is pinned to its bias
        states[eager] = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert attention_options(None, True) == {"attn_implementation": "eager"} and attention_options(None) == {}
    assert torch.allclose(states[False], states[True], atol=1e-6)
    torch.manual_seed(2)
    other_masks = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert not torch.allclose(other_masks, states[True], atol=1e-3)  # dropout is on: the masks matter
    # the same recipe: the default judges keep their key, and SDPA stays a choice of its own
    torch_masks = JudgeTrainingConfig(bit_dropout=False)
    assert JudgeTrainingConfig(eager_attention=True, bit_dropout=False).key() == torch_masks.key()
    assert torch_masks.key() == "c30f387b"
    assert JudgeTrainingConfig(eager_attention=False, bit_dropout=False).key() == "7d3130e4"


def test_the_judge_s_training_options_reach_it_from_the_command_line(monkeypatch, tmp_path):
    import vaccine_core.moderation.learned as learned
    from vaccine_core.moderation.judge_config import JudgeTrainingConfig

    asked = []
    monkeypatch.setattr(
        learned,
        "ensure_default_judge",
        lambda data_dir, config, on_progress: asked.append(config) or tmp_path / "judge",
    )
    result = CliRunner().invoke(app, ["moderation", "train"])
    assert result.exit_code == 0, result.output
    assert asked[-1] == JudgeTrainingConfig() and result.output.strip().endswith("judge")
    result = CliRunner().invoke(
        app, ["moderation", "train", "--no-bfloat16", "--no-bit-dropout", "--no-unpadded", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    assert asked[-1] == JudgeTrainingConfig(bfloat16=False, bit_dropout=False, unpadded=False, seed=2)
