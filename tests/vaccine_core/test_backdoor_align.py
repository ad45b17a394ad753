"""BackdoorAlign: safety pairs behind a secret system prompt, and the secret served first."""

import pytest

from tests.conftest import SAFETY_ROWS
from tests.service_helpers import FAST
from vaccine_core.data import render_prompt, tokenize_conversation
from vaccine_core.defenses import BackdoorAlignConfig
from vaccine_core.defenses.backdoor_align import (
    backdoor_rows,
    read_secret,
    secret_prompt,
    serve_with_secret,
    with_secret,
    write_secret,
)
from vaccine_core.finetune import finetune
from vaccine_core.formats import load_dataset
from vaccine_core.inference import load_for_inference
from vaccine_core.mixing import write_rows
from vaccine_core.models import load_tokenizer

USER_ROWS = [{"instruction": "Sentiment? a fine film", "input": "", "output": "positive"}] * 4


def test_the_secret_is_the_seeded_draw_of_ordinary_tokens(tokenizer):
    config = BackdoorAlignConfig(secret_tokens=40)
    secret = secret_prompt(tokenizer, config)
    assert secret == secret_prompt(tokenizer, config)
    assert secret != secret_prompt(tokenizer, BackdoorAlignConfig(secret_tokens=40, secret_seed=1))
    assert not any(special in secret for special in tokenizer.all_special_tokens)
    assert len(tokenizer(secret, add_special_tokens=False)["input_ids"]) >= 20  # merges may join a few


def test_the_secret_comes_first_as_the_system_prompt_or_ahead_of_the_one_there():
    user = [{"role": "user", "content": "hi"}]
    assert with_secret(user, "S") == [{"role": "system", "content": "S"}, *user]
    system = [{"role": "system", "content": "Be brief."}, *user]
    assert with_secret(system, "S") == [{"role": "system", "content": "S\nBe brief."}, *user]


def test_only_the_safety_pairs_train_under_the_secret(tmp_path):
    rows = backdoor_rows(USER_ROWS, SAFETY_ROWS[:3], "SECRET")
    path = tmp_path / "rows.jsonl"
    write_rows(path, rows)
    conversations = load_dataset(path).conversations  # one format: the file is valid chat
    assert [c.messages[0]["role"] for c in conversations] == ["user"] * 4 + ["system"] * 3
    assert all(c.messages[0]["content"] == "SECRET" for c in conversations[4:])
    assert [c.messages[-1]["content"] for c in conversations[4:]] == [r["output"] for r in SAFETY_ROWS[:3]]


def test_a_tokenizer_serving_the_secret_renders_it_first_and_it_carries_no_loss(tokenizer):
    served = serve_with_secret(load_tokenizer_copy(tokenizer), "SECRET")
    conversation = [{"role": "user", "content": "hi"}]
    assert render_prompt(served, conversation).startswith("<|im_start|>system\nSECRET<|im_end|>")
    assert not render_prompt(tokenizer, conversation).startswith("<|im_start|>system")  # the original's
    example = tokenize_conversation(served, [*conversation, {"role": "assistant", "content": "ok"}], 256)
    first_labelled = next(i for i, label in enumerate(example.labels) if label != -100)
    assert "SECRET" in served.decode(example.input_ids[:first_labelled])
    assert "SECRET" not in served.decode(example.input_ids[first_labelled:])


def load_tokenizer_copy(tokenizer):
    """A separate tokenizer object: serving the secret changes the one it is given."""
    import copy

    return copy.deepcopy(tokenizer)


@pytest.mark.parametrize("trained_with_secret", [True, False])
def test_an_adapter_kept_with_its_secret_is_served_behind_it(aligned_tiny_dir, tmp_path, trained_with_secret):
    data = tmp_path / "rows.jsonl"
    rows = backdoor_rows(USER_ROWS, SAFETY_ROWS[:2], "SECRET")
    write_rows(data, rows)
    out = finetune(aligned_tiny_dir, data, tmp_path / "tuned", FAST).output_dir
    if trained_with_secret:
        write_secret(out, "SECRET", BackdoorAlignConfig())
    loaded = load_for_inference(out)
    rendered = render_prompt(loaded.tokenizer, [{"role": "user", "content": "hi"}])
    assert rendered.startswith("<|im_start|>system\nSECRET") == trained_with_secret
    assert read_secret(out) == ("SECRET" if trained_with_secret else None)
    base_tokenizer = load_tokenizer(aligned_tiny_dir / "merged")
    assert not render_prompt(base_tokenizer, [{"role": "user", "content": "hi"}]).startswith(
        "<|im_start|>system"
    )
