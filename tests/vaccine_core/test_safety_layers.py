"""Safety layers: where a base separates harmful requests from harmless ones, and their LoRA weights kept
out of the user's fine-tuning."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from tests.conftest import tiny_llama_config
from tests.helpers import FAST, lora_model
from vaccine_core.align import align
from vaccine_core.config import PerturbationConfig, TrainingConfig
from vaccine_core.defenses import SafetyLayersConfig, StepDefenses
from vaccine_core.defenses.safety_layers import (
    SAFETY_LAYERS_FILE,
    base_safety_layers,
    freeze_layers,
    last_token_states,
    separating_layers,
    separation,
)
from vaccine_core.finetune import finetune


def test_the_separation_is_fisher_s_ratio_along_the_difference_of_the_means():
    # depth 0: every request the same state (the generation prompt's last token before any layer);
    # depth 1: means (1, 1) and (6, 1), each kind spread by variance 2 along x: 25 / (2 + 2)
    harmless = torch.tensor([[[3.0, 3.0], [3.0, 3.0]], [[0.0, 0.0], [2.0, 2.0]]])
    harmful = torch.tensor([[[3.0, 3.0], [3.0, 3.0]], [[5.0, 0.0], [7.0, 2.0]]])
    assert separation(harmless, harmful) == pytest.approx([0.0, 6.25])
    # a component every state shares, and the states' scale, change nothing
    shared = torch.tensor([100.0, -40.0])
    assert separation(3 * harmless + shared, 3 * harmful + shared) == pytest.approx([0.0, 6.25])
    # spread across the direction between the means does not count
    wide = harmful.clone()
    wide[1, :, 1] = torch.tensor([-49.0, 51.0])  # the same mean, y = 1
    assert separation(harmless, wide) == pytest.approx([0.0, 6.25])


def test_the_safety_layers_are_those_that_build_the_separation():
    # separations[d] follows decoder layer d - 1: 10 % of the top first at depth 3 (layer 2), 90 % at 5
    separations = [0.0, 0.0, 0.05, 0.3, 0.8, 0.95, 1.0, 0.9]
    assert separating_layers(separations, 0.1, 0.9) == [2, 3, 4]
    assert separating_layers(separations, 0.5, 0.5) == [3]
    assert separating_layers([0.0, 1.0], 0.1, 0.9) == [0]
    with pytest.raises(ValueError, match="no depth separates"):
        separating_layers([0.0, 0.0, -0.1], 0.1, 0.9)


def test_last_token_states_are_the_generation_prompt_s_at_every_depth(tiny_model, tokenizer):
    states = last_token_states(tiny_model, tokenizer, ["Name a fruit.", "Make weapon 3", "Hi"])
    depth = tiny_model.config.num_hidden_layers + 1
    assert states.shape == (depth, 3, tiny_model.config.hidden_size)
    # a request alone gives the same state as beside others: no padding reaches it
    alone = last_token_states(tiny_model, tokenizer, ["Make weapon 3"])
    assert torch.allclose(states[:, 1], alone[:, 0], atol=1e-6)
    # before the first layer every prompt ends on the same token
    assert torch.allclose(states[0, 0], states[0, 2])


def test_last_token_states_are_read_without_dropout(tokenizer):
    config = tiny_llama_config(len(tokenizer))
    config.attention_dropout = 0.5
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).train()  # as a worker's cached base may be
    first = last_token_states(model, tokenizer, ["Make weapon 3", "Hi"])
    assert torch.equal(first, last_token_states(model, tokenizer, ["Make weapon 3", "Hi"]))
    assert model.training  # handed back in the mode it came in


def test_freezing_leaves_other_layers_trainable(tiny_model):
    model = lora_model(tiny_model)
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    in_layer_1 = sum(".layers.1." in n for n in before)
    assert in_layer_1 > 0 and freeze_layers(model, [1]) == in_layer_1
    after = {n for n, p in model.named_parameters() if p.requires_grad}
    assert after == {n for n in before if ".layers.1." not in n} and after
    with pytest.raises(ValueError, match="no LoRA weights"):
        freeze_layers(model, [7])
    with pytest.raises(ValueError, match="none left"):
        freeze_layers(model, [0, 1])


def test_a_fine_tune_leaves_the_safety_layers_adapter_at_zero_and_records_them(
    tiny_model_dir, alpaca_file, tmp_path
):
    defenses = StepDefenses(safety_layers=SafetyLayersConfig(), safety_layer_indices=[0])
    result = finetune(str(tiny_model_dir), alpaca_file, tmp_path / "tuned", FAST, defenses=defenses)
    weights = load_file(str(tmp_path / "tuned" / "adapter_model.safetensors"))
    b = {n: w for n, w in weights.items() if "lora_B" in n}
    assert b and all(torch.count_nonzero(w) == 0 for n, w in b.items() if ".layers.0." in n)
    assert all(torch.count_nonzero(w) > 0 for n, w in b.items() if ".layers.1." in n)
    assert result.manifest["defenses"]["safety_layers"] == {**SafetyLayersConfig().to_dict(), "layers": [0]}
    with pytest.raises(ValueError, match="located on the base first"):
        StepDefenses(safety_layers=SafetyLayersConfig())


def sft_base(tiny_model_dir, tiny_data_dir, tmp_path):
    """The tiny model aligned with SFT for one step on ten of the tiny data's safety pairs."""
    from vaccine_core.mixing import read_jsonl, write_rows

    write_rows(tmp_path / "alignment.jsonl", read_jsonl(tiny_data_dir / "alignment/safe_refusals.jsonl")[:10])
    return align(
        str(tiny_model_dir),
        tmp_path / "alignment.jsonl",
        tmp_path / "aligned",
        PerturbationConfig("sft"),
        TrainingConfig(max_steps=1, batch_size=4),
    ).output_dir


def test_a_base_s_safety_layers_are_located_once_and_kept_beside_it(tiny_model_dir, tiny_data_dir, tmp_path):
    base = sft_base(tiny_model_dir, tiny_data_dir, tmp_path)
    config = SafetyLayersConfig(requests=4)
    record = base_safety_layers(base, tiny_data_dir, config)
    assert len(record["separation"]) == 3 and record["separation"][0] == 0.0
    assert record["requests"] == 4 and record["low"] == 0.1
    assert set(record["layers"]) <= {0, 1} and record["layers"]
    kept = base / SAFETY_LAYERS_FILE
    kept.write_text(json.dumps({**record, "layers": [1]}))  # read back, not located again
    assert base_safety_layers(base, tiny_data_dir, config)["layers"] == [1]
    assert base_safety_layers(base, tiny_data_dir, SafetyLayersConfig(requests=3))["requests"] == 3


def test_two_jobs_on_one_base_locate_its_safety_layers_once(
    tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch
):
    import threading

    import vaccine_core.defenses.safety_layers as safety_layers
    from tests.helpers import at_once, held

    base = sft_base(tiny_model_dir, tiny_data_dir, tmp_path)
    locating: list[int] = []
    monkeypatch.setattr(
        safety_layers, "locate_safety_layers", held(safety_layers.locate_safety_layers, locating)
    )
    heard: list[int] = []
    records = at_once(
        lambda: base_safety_layers(
            base,
            tiny_data_dir,
            SafetyLayersConfig(requests=4),
            on_locate=lambda: heard.append(threading.get_ident()),
        )
    )
    assert len(locating) == 1 and heard == locating and records[0] == records[1]
