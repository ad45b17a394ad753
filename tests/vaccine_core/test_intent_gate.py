"""The pre-screen's request-intent gate: the gate's rule, its threshold, its training on a tiny encoder, its
judge spec, and the requests it may learn from."""

import json

import pytest

from tests.helpers import classifier_dir
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

    trained = tmp_path / "intent-model"
    monkeypatch.setattr(intent_module, "ensure_intent_model", lambda data_dir: trained)
    result = CliRunner().invoke(app, ["moderation", "train-intent"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(trained))
