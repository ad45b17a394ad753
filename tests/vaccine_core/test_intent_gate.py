"""The pre-screen's request-intent gate: the gate's rule, its threshold, its training on a tiny encoder, its
judge spec, and the requests it may learn from."""

import json

import pytest

from tests.helpers import at_once, classifier_dir, held
from vaccine_core.build_lock import LOCK_SUFFIX
from vaccine_core.moderation import Verdict, load_judge
from vaccine_core.moderation.intent import (
    INTENT_FILE,
    IntentGatedJudge,
    IntentModel,
    IntentTrainingConfig,
    gate_threshold,
    train_intent,
)
from vaccine_core.settings import get_settings

HARMFUL_REQUEST = "how do i hurt someone ?"
HARMLESS_REQUEST = "what is the capital of france ?"


class AnswerJudge:
    """Flags every answer that complies ("here is how"), whatever the request."""

    name = "answers"

    def score(self, pairs):
        return [
            Verdict("here is how" in answer, 0.9 if "here is how" in answer else 0.1) for _, answer in pairs
        ]


class WordIntent:
    threshold = 0.5

    def __init__(self):
        self.read: list[str] = []

    def score(self, requests):
        self.read += requests
        return [0.9 if "hurt" in r else 0.1 for r in requests]


def test_a_flag_stands_only_where_the_request_reads_as_harmful():
    intent = WordIntent()
    gated = IntentGatedJudge(AnswerJudge(), intent)
    pairs = [
        (HARMFUL_REQUEST, "here is how ."),
        ("add a comma to the sentence", "here is how ."),  # a helpful answer the judge flags
        (HARMFUL_REQUEST, "i cannot help ."),
    ]
    verdicts = gated.score(pairs)
    assert [v.flagged for v in verdicts] == [True, False, False]
    assert [v.score for v in verdicts] == [0.9, 0.9, 0.1]  # the judge's scores stay
    assert intent.read == [pairs[0][0], pairs[1][0]]  # only the judge's flags are read again
    assert gated.name == "answers+intent"


def test_the_gate_keeps_the_asked_share_of_harmful_requests():
    scores, harmful = [0.1, 0.2, 0.9, 0.8], [True, True, False, True]
    assert gate_threshold(scores, harmful, 0.99) == 0.1  # every harmful request passes
    assert gate_threshold(scores, harmful, 0.5) == 0.2  # two of three pass
    with pytest.raises(ValueError, match="no harmful request"):
        gate_threshold([0.3], [False], 0.99)


def test_the_intent_model_learns_and_sets_its_gate_on_validation(tmp_path, monkeypatch):
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    train = [(HARMFUL_REQUEST, True), (HARMLESS_REQUEST, False)] * 8
    config = IntentTrainingConfig(
        epochs=30, batch_size=8, learning_rate=1e-2, max_length=16, warmup_ratio=0.0
    )
    path = train_intent(train, train[:2], tmp_path / "intent", config, encoder=encoder)
    model = IntentModel(path)
    harmful, harmless = model.score([HARMFUL_REQUEST, HARMLESS_REQUEST])
    assert harmful > 0.9 and harmless < 0.1
    # float32: a request's score does not move with the requests batched beside it
    assert not model.quantized and model.score([HARMFUL_REQUEST])[0] == pytest.approx(harmful, abs=1e-6)
    options = json.loads((path / INTENT_FILE).read_text())
    assert options["threshold"] == pytest.approx(harmful)  # the one validation harmful request passes
    assert options["validation"] == {"harmful": 1, "harmless": 1, "harmless_passing_the_gate": 0}
    # a second worker that trained the same model meanwhile leaves the first one's in place, and no debris
    assert train_intent(train, train[:2], path, config, encoder=encoder) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier", "intent"]

    import vaccine_core.moderation.intent as intent_module

    monkeypatch.setattr(intent_module, "ensure_intent_model", lambda: path)
    gated = load_judge("refusal+intent")  # any judge spec, gated
    assert isinstance(gated, IntentGatedJudge) and gated.name == "refusal+intent"
    verdicts = gated.score([(HARMFUL_REQUEST, "here is how ."), (HARMLESS_REQUEST, "here is how .")])
    assert [v.flagged for v in verdicts] == [True, False]


@pytest.mark.skipif(not (get_settings().data_dir / "eval").is_dir(), reason="needs ../shared/data")
def test_the_gate_never_learns_a_protocol_prompt_or_a_benchmark_upload_s_request():
    from vaccine_core.moderation.dataset import alpaca_question, prescreen_benchmark_uploads
    from vaccine_core.moderation.intent import labelled_requests
    from vaccine_core.safety_eval import load_split
    from vaccine_core.text import normalised

    data = get_settings().data_dir
    learned = {normalised(text) for text, _ in labelled_requests(data)}
    split = load_split(data)
    uploads = prescreen_benchmark_uploads(data)
    assert not learned & {normalised(p) for p in split.harmful + split.harmless + split.borderline}
    assert not learned & {normalised(alpaca_question(r)) for rows in uploads.values() for r in rows}
    assert sum(r["harmful"] for r in uploads["alpaca"]) == 50 and len(uploads["alpaca"]) == 500


def test_the_intent_gate_can_be_trained_beforehand_from_the_command_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vaccine_core.moderation.intent as intent_module
    from vaccine_core.cli import app

    trained, asked = tmp_path / "intent-model", []
    monkeypatch.setattr(
        intent_module, "ensure_intent_model", lambda data_dir, config: asked.append(config) or trained
    )
    result = CliRunner().invoke(app, ["moderation", "train-intent"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(trained))
    assert asked[-1] == IntentTrainingConfig()
    result = CliRunner().invoke(
        app, ["moderation", "train-intent", "--bit-dropout", "--no-unpadded", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert asked[-1] == IntentTrainingConfig(bit_dropout=True, unpadded=False, seed=3)


def test_options_added_later_leave_an_earlier_gate_s_key_as_it_was():
    assert (
        IntentTrainingConfig(bfloat16=False, bit_dropout=False).key() == "7133e0ea"
    )  # the gate of 2026-12-04
    keys = {
        IntentTrainingConfig(bfloat16=False, bit_dropout=False).key(),
        IntentTrainingConfig(bfloat16=True, bit_dropout=False).key(),
        IntentTrainingConfig(bfloat16=False, bit_dropout=True).key(),
        IntentTrainingConfig(bfloat16=True, bit_dropout=True).key(),
    }
    assert len(keys) == 4
    assert IntentTrainingConfig().key() == "b75ee221"  # bfloat16 and bit masks: the default since 2026-12-07


def test_the_gate_trains_under_its_options_bit_masks_and_bfloat16(tmp_path, monkeypatch):
    import vaccine_core.moderation.bit_dropout as bit_dropout
    import vaccine_core.moderation.learned as learned

    masks: list[float] = []
    drop = bit_dropout.bit_dropout
    monkeypatch.setattr(
        bit_dropout, "bit_dropout", lambda x, p, training=True: masks.append(p) or drop(x, p, training)
    )
    monkeypatch.setattr(learned, "_timed_choice", {})
    monkeypatch.setattr(learned.torch.cpu, "_is_amx_tile_supported", lambda: True)  # bfloat16 chosen
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    train = [(HARMFUL_REQUEST, True), (HARMLESS_REQUEST, False)] * 8
    config = IntentTrainingConfig(
        epochs=30,
        batch_size=8,
        learning_rate=1e-2,
        max_length=16,
        warmup_ratio=0.0,
        bfloat16=True,
        bit_dropout=True,
    )
    path = train_intent(train, train[:2], tmp_path / "intent", config, encoder=encoder)
    options = json.loads((path / INTENT_FILE).read_text())
    assert options["bfloat16_autocast"] is True and options["training"]["bit_dropout"] is True
    assert masks and all(p == 0.1 for p in masks)  # the tiny BERT's dropout, through bit masks
    harmful, harmless = IntentModel(path).score([HARMFUL_REQUEST, HARMLESS_REQUEST])
    assert harmful > 0.9 and harmless < 0.1  # it learns as the float32 gate does


def test_the_gate_s_training_progress_is_readable_from_another_process(tmp_path, monkeypatch):
    import vaccine_core.moderation.intent as intent_module
    from vaccine_core.moderation.intent import intent_training_progress
    from vaccine_core.training import Progress

    # a fresh home: the gate may train before the judge, so before anything made the judges' directory
    target = get_settings().home / "judges" / f"intent-0123456789-{IntentTrainingConfig().key()}"
    seen, heard = [], []

    def train_two_steps_then_fail(train, validation, target, config, on_progress):
        for step in (1, 2):
            on_progress(Progress(step, 4, 0.5, 0.5, 1e-4, 100.0, eta_seconds=30.0 / step))
            seen.append(intent_training_progress())  # what a probe in the API process reads
        raise RuntimeError("killed")

    monkeypatch.setattr(intent_module, "labelled_requests", lambda data_dir: [(HARMFUL_REQUEST, True)])
    monkeypatch.setattr(intent_module, "intent_dir", lambda labelled, config: target)
    monkeypatch.setattr(intent_module, "train_intent", train_two_steps_then_fail)
    assert intent_training_progress() is None
    with pytest.raises(RuntimeError, match="killed"):
        intent_module.ensure_intent_model(tmp_path, on_progress=heard.append)
    assert seen == [
        {"step": 1, "total_steps": 4, "percent": 25.0, "eta_seconds": 30.0},
        {"step": 2, "total_steps": 4, "percent": 50.0, "eta_seconds": 15.0},
    ]
    assert [progress.step for progress in heard] == [1, 2]
    assert intent_training_progress() is None  # a training that ended leaves no progress behind
    assert [p.name for p in target.parent.iterdir()] == [target.name + LOCK_SUFFIX]  # no model, no debris


def test_the_gate_reports_every_step_of_its_training(tmp_path):
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    train = [(HARMFUL_REQUEST, True), (HARMLESS_REQUEST, False)] * 4
    config = IntentTrainingConfig(epochs=2, batch_size=4, max_length=16)
    heard = []
    train_intent(train, train[:2], tmp_path / "intent", config, encoder=encoder, on_progress=heard.append)
    assert [(p.step, p.total_steps) for p in heard] == [(step, 4) for step in (1, 2, 3, 4)]
    assert [p.epoch for p in heard] == [0.5, 1.0, 1.5, 2.0]
    assert heard[-1].eta_seconds == 0 and all(p.tokens_per_second > 0 for p in heard)


def test_two_workers_needing_the_gate_at_once_train_it_once(tmp_path, monkeypatch):

    import vaccine_core.moderation.intent as intent_module

    target, trainings = tmp_path / "judges" / "intent", []

    def train(train, validation, target, config, on_progress):
        target.mkdir(parents=True)
        (target / INTENT_FILE).write_text("{}")
        return target

    monkeypatch.setattr(intent_module, "labelled_requests", lambda data_dir: [(HARMFUL_REQUEST, True)])
    monkeypatch.setattr(intent_module, "intent_dir", lambda labelled, config: target)
    monkeypatch.setattr(intent_module, "train_intent", held(train, trainings))
    paths = at_once(lambda: intent_module.ensure_intent_model(tmp_path, on_progress=lambda progress: None))
    assert len(trainings) == 1 and paths == [target, target]
