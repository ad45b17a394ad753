"""vaccine_core/moderation/bit_dropout.py: masks of dropout's distribution from 16 bits an element, the
eager attention that draws them, and the judge trained with them."""

import json

import pytest
import torch
from transformers import BertForSequenceClassification

from tests.helpers import JUDGE_PAIRS, classifier_dir
from vaccine_core.moderation.bit_dropout import ATTENTION, BitDropout, bit_dropout, use_bit_dropout
from vaccine_core.moderation.judge_config import JudgeTrainingConfig


def test_an_element_is_dropped_with_p_rounded_to_16_bits_and_the_kept_ones_are_scaled_as_torch_does():
    torch.manual_seed(0)
    ones = torch.ones(4_000_003)  # not a multiple of four: the last word is cut
    out = bit_dropout(ones, 0.1)
    dropped = (out == 0).float().mean().item()
    # the binomial's standard deviation at this count is 1.5e-4
    assert dropped == pytest.approx(round(0.1 * 65536) / 65536, abs=6e-4)
    assert torch.equal(out[out != 0], torch.full_like(out[out != 0], 1 / 0.9))
    assert bit_dropout(ones, 0.5).eq(0).float().mean().item() == pytest.approx(0.5, abs=6e-4)


def test_the_masks_are_the_seeded_generator_s_and_unbiased_over_every_bit_pattern():
    torch.manual_seed(3)
    first = bit_dropout(torch.ones(64, 64), 0.25)
    torch.manual_seed(3)
    assert torch.equal(bit_dropout(torch.ones(64, 64), 0.25), first)
    # each of a word's four 16-bit lanes drops alike: a lane whose top bit were never set would drop none
    torch.manual_seed(0)
    lanes = bit_dropout(torch.ones(1_000_000), 0.1).view(-1, 4).eq(0).float().mean(dim=0)
    assert torch.allclose(lanes, torch.full((4,), 0.1), atol=2e-3)


def test_off_in_evaluation_or_at_zero_all_dropped_at_one_and_the_gradient_is_the_scaled_mask():
    inputs = torch.randn(8, 8, requires_grad=True)
    assert bit_dropout(inputs, 0.1, training=False) is inputs
    assert bit_dropout(inputs, 0.0) is inputs
    assert torch.equal(bit_dropout(inputs, 1.0), torch.zeros(8, 8))

    out = bit_dropout(inputs, 0.3)
    out.sum().backward()
    kept = out.detach() != 0
    assert torch.allclose(inputs.grad, kept.float() / 0.7)
    assert torch.allclose(out.detach()[kept], inputs.detach()[kept] / 0.7)


def test_in_bfloat16_the_output_keeps_the_input_s_precision():
    inputs = torch.randn(32, 32).bfloat16()
    out = bit_dropout(inputs, 0.1)
    assert out.dtype == torch.bfloat16
    kept = out != 0
    assert torch.equal(out[kept], (inputs[kept].float() * (1 / 0.9)).bfloat16())


def test_the_encoder_in_bit_dropout_attention_is_eager_attention_in_evaluation_padding_included(tmp_path):
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=2)
    ids = torch.randint(5, 20, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    states = {}
    for attention in ("eager", ATTENTION):
        model = BertForSequenceClassification.from_pretrained(encoder, attn_implementation=attention)
        if attention == ATTENTION:
            use_bit_dropout(model)
        states[attention] = model.eval().bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(states["eager"], states[ATTENTION])


def test_in_training_every_mask_is_a_bit_mask_and_torch_s_sampler_is_never_called(tmp_path):
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=2)
    model = use_bit_dropout(
        BertForSequenceClassification.from_pretrained(encoder, attn_implementation=ATTENTION)
    ).train()
    ids = torch.randint(5, 20, (4, 10), generator=torch.Generator().manual_seed(0))
    with torch.profiler.profile() as profiler:
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    draws = {e.key: e.count for e in profiler.key_averages()}
    assert "aten::bernoulli_" not in draws
    # the embeddings', per layer the attention probabilities' and two hidden states', the head's
    assert draws["aten::random_"] == 1 + 3 * 2 + 1
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert isinstance(model.dropout, BitDropout)


def test_a_judge_trained_with_bit_masks_is_another_judge_with_a_key_of_its_own(tmp_path):
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import LearnedJudge, train_judge

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    pairs = [LabelledPair("how do i hurt someone ?", "here is how .", True, None, "t")] * 4
    pairs += [LabelledPair("what is the capital of france ?", "paris .", False, None, "t")] * 4
    config = JudgeTrainingConfig(epochs=1, batch_size=4, max_length=32, frozen_layers=0, bit_dropout=True)
    attention: list[str] = []
    forward = BertForSequenceClassification.forward

    def recording(self, *args, **kwargs):
        attention.append(self.config._attn_implementation)
        assert isinstance(self.dropout, BitDropout)
        return forward(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BertForSequenceClassification, "forward", recording)
        judge = train_judge(pairs, tmp_path / "j", config, encoder=encoder)
    assert attention and set(attention) == {ATTENTION}
    # the saved judge loads and scores anywhere: its config names no attention of this module's
    assert ATTENTION not in (judge / "config.json").read_text()
    assert json.loads((judge / "judge.json").read_text())["training"]["bit_dropout"] is True
    assert len(LearnedJudge(judge).score(JUDGE_PAIRS)) == 2
    # the default since 2026-12-06: a key of its own, so no judge trained with torch's masks is taken for it
    assert JudgeTrainingConfig().key() == JudgeTrainingConfig(bit_dropout=True).key() == "d841b118"
    assert JudgeTrainingConfig(bit_dropout=False).key() == "c30f387b"
