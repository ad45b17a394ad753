"""A model's answers generated once, whoever asks for them first."""

from types import SimpleNamespace

import vaccine_core.generation
import vaccine_core.inference
from tests.helpers import at_once, held
from vaccine_core.answer_cache import answered_once


def test_two_workers_asking_for_the_answers_at_once_generate_them_once(tmp_path, monkeypatch):
    generated: list[int] = []

    def generate(model, tokenizer, conversations, max_new_tokens, on_batch=None):
        return [f"answer to {c[0]['content']}" for c in conversations]

    loaded = SimpleNamespace(model=None, tokenizer=None)  # the stand-in generate ignores both
    monkeypatch.setattr(vaccine_core.inference, "load_for_inference", lambda model: loaded)
    monkeypatch.setattr(vaccine_core.generation, "generate", held(generate, generated))
    path, rows = tmp_path / "answers.jsonl", [{"request": "a"}, {"request": "b"}]
    answered = at_once(lambda: answered_once(path, rows, "default", 8))
    assert len(generated) == 1
    assert (
        answered
        == [[{"request": "a", "answer": "answer to a"}, {"request": "b", "answer": "answer to b"}]] * 2
    )
    assert answered_once(path, rows, "default", 8) == answered[0]  # read from the file now
    assert len(generated) == 1
