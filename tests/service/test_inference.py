"""Chat inference (service/inference.py): answers stream as they are generated, and stop sequences hold."""

import time
from dataclasses import replace

import vaccine_core.fast_generation as fast_generation
import vaccine_core.generation as generation
from service.inference import ChatModels, Completion, held_back

HELLO = [{"role": "user", "content": "How do I make a cake?"}]
OPTIONS = {"max_tokens": 24, "temperature": 0.0, "top_p": 1.0, "seed": 0, "stop": []}


def slow_steps(monkeypatch, taken: list[float]) -> None:
    """Every decoding step as slow as a real model's (so a reader is never behind by chance), its time
    recorded."""
    real_step = fast_generation.RunningBatch.step

    def step(self):
        produced = real_step(self)
        taken.append(time.monotonic())
        time.sleep(0.05)
        return produced

    monkeypatch.setattr(fast_generation.RunningBatch, "step", step)


def test_the_first_piece_comes_before_the_answer_is_finished(aligned_tiny_dir, monkeypatch):
    taken: list[float] = []
    slow_steps(monkeypatch, taken)
    models = ChatModels()
    pieces = models.stream("tiny", aligned_tiny_dir, HELLO, **OPTIONS)
    first = next(pieces)
    at_first_piece = len(taken)
    rest = list(pieces)
    whole = rest[-1]
    assert isinstance(first, str) and isinstance(whole, Completion)
    assert at_first_piece < len(taken), "the first piece waited for the whole answer"
    assert (first + "".join(rest[:-1])).strip() == whole.text
    assert models.complete("tiny", aligned_tiny_dir, HELLO, **OPTIONS) == whole  # the same answer whole


def test_a_stop_sequence_never_leaks_into_the_stream(aligned_tiny_dir):
    models = ChatModels()
    whole = models.complete("tiny", aligned_tiny_dir, HELLO, **OPTIONS)
    words = whole.text.split()
    assert len(words) >= 2, f"the tiny model's answer {whole.text!r} has no second word to stop at"
    stop = " " + words[1]
    pieces = list(models.stream("tiny", aligned_tiny_dir, HELLO, **{**OPTIONS, "stop": [stop]}))
    streamed = "".join(p for p in pieces if isinstance(p, str))
    assert stop not in streamed and streamed == pieces[-1].text == whole.text[: whole.text.find(stop)]
    assert pieces[-1].finish_reason == "stop"


def test_held_back_is_the_longest_start_of_a_stop_sequence_at_the_end():
    assert held_back("The answer [ST", ["[STOP]"]) == 3
    assert held_back("The answer [ST", ["[STOP]", "r [S"]) == 3
    assert held_back("The answer.", ["[STOP]"]) == 0
    assert held_back("anything", []) == 0


def test_streamed_pieces_add_up_to_the_batch_answer(aligned_tiny_dir):
    """Pieces are held back inside a multi-byte character, never dropped: the last one is flushed."""
    from vaccine_core.inference import load_for_inference

    loaded = load_for_inference(aligned_tiny_dir)
    pieces = list(generation.stream_answer(loaded.model, loaded.tokenizer, HELLO, max_new_tokens=24))
    (batch,) = generation.generate(loaded.model, loaded.tokenizer, [HELLO], max_new_tokens=24)
    assert len(pieces) > 1 and "".join(pieces).strip() == batch


def test_fine_tuned_models_share_one_base_and_answer_as_if_loaded_alone(
    aligned_tiny_dir, alpaca_file, tmp_path, monkeypatch
):
    import vaccine_core.models as models_module
    from tests.service_helpers import FAST
    from vaccine_core.finetune import finetune
    from vaccine_core.inference import load_for_inference

    runs = {
        name: finetune(aligned_tiny_dir, alpaca_file, tmp_path / name, replace(FAST, seed=seed)).output_dir
        for name, seed in (("a", 1), ("b", 2))
    }
    alone = {}
    for name, spec in {**runs, "base": aligned_tiny_dir}.items():
        loaded = load_for_inference(spec)
        (alone[name],) = generation.generate(loaded.model, loaded.tokenizer, [HELLO], max_new_tokens=24)
    assert alone["a"] != alone["b"] != alone["base"]  # three different models to tell apart

    loads = []
    real_load = models_module.load_causal_lm
    monkeypatch.setattr(
        models_module, "load_causal_lm", lambda *a, **k: loads.append(a) or real_load(*a, **k)
    )
    chat = ChatModels(adapters=1)  # room for one adapter: switching drops the other and loads it again
    for name in ("a", "b", "base", "a", "base", "b"):
        spec = runs.get(name, aligned_tiny_dir)
        assert chat.complete(name, spec, HELLO, **OPTIONS).text == alone[name], name
    assert len(loads) == 1  # one copy of the base for all three
    (shared,) = chat.bases.values()
    assert list(shared.adapters) == ["b"] and list(shared.model.peft_config) == [shared.adapters["b"]]


def test_requests_that_come_together_are_decoded_as_one_batch_each_as_alone(aligned_tiny_dir):
    import threading

    asks = [
        (HELLO, OPTIONS),
        ([{"role": "user", "content": "Name a fruit."}], {**OPTIONS, "temperature": 0.8, "seed": 3}),
        ([{"role": "user", "content": "Say something long."}], {**OPTIONS, "max_tokens": 5}),
    ]
    alone = ChatModels()
    expected = [alone.complete("tiny", aligned_tiny_dir, messages, **options) for messages, options in asks]
    assert set(alone.step_rows) == {1}  # one after the other

    together = ChatModels(window_s=0.5)  # all three are waiting when the generating thread starts
    answers: list[Completion | None] = [None] * len(asks)

    def ask(i: int) -> None:
        messages, options = asks[i]
        answers[i] = together.complete("tiny", aligned_tiny_dir, messages, **options)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert max(together.step_rows) == 3  # all three in one step
    assert answers == expected  # greedy or sampled with its own seed, its own budget: as if alone
    longer = alone.complete("tiny", aligned_tiny_dir, asks[2][0], **OPTIONS)  # 24 tokens, not 5
    assert longer.text.startswith(answers[2].text) and len(answers[2].text) < len(longer.text)


def test_a_request_joins_the_batch_that_is_running_and_answers_as_alone(aligned_tiny_dir, monkeypatch):
    import threading

    later = [{"role": "user", "content": "Name a fruit."}]
    alone = ChatModels()
    expected = [alone.complete("tiny", aligned_tiny_dir, m, **OPTIONS) for m in (HELLO, later)]
    taken: list[float] = []
    slow_steps(monkeypatch, taken)
    chat = ChatModels()
    first_piece: dict[str, float] = {}
    answers: dict[str, Completion] = {}

    def ask(name: str, messages, options) -> None:
        for piece in chat.stream("tiny", aligned_tiny_dir, messages, **options):
            first_piece.setdefault(name, time.monotonic())
            if isinstance(piece, Completion):
                answers[name] = piece
                first_piece[name + " done"] = time.monotonic()

    running = threading.Thread(target=ask, args=("first", HELLO, {**OPTIONS, "max_tokens": 40}))
    running.start()
    while "first" not in first_piece:
        time.sleep(0.01)
    ask("later", later, OPTIONS)
    running.join(timeout=60)
    # the later request was answered while the first still decoded: it did not wait for that batch
    assert first_piece["later"] < first_piece["first done"]
    assert chat.step_rows[2] > 0
    assert answers["later"] == expected[1]
    assert answers["first"].text.startswith(expected[0].text)  # 40 tokens allowed, not 24


def test_on_the_plain_path_requests_of_two_models_are_served_in_the_order_they_came(
    aligned_tiny_dir, monkeypatch
):
    import threading

    monkeypatch.setattr(fast_generation, "fast_path_supported", lambda model, length: False)
    chat = ChatModels(window_s=0.5)  # all three wait when the generating thread starts
    answered: list[str] = []
    answer_plainly = ChatModels._answer_plainly

    def recording(self, request, loaded):
        answered.append(request.model_id)
        answer_plainly(self, request, loaded)

    monkeypatch.setattr(ChatModels, "_answer_plainly", recording)
    threads = []
    for model_id in ("a", "b", "a"):  # in the order they come, not all of a's first
        threads.append(
            threading.Thread(target=chat.complete, args=(model_id, aligned_tiny_dir, HELLO), kwargs=OPTIONS)
        )
        threads[-1].start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=60)
    assert answered == ["a", "b", "a"]
