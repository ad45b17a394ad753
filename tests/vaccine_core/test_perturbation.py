import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
)

from tests.conftest import tiny_llama_config
from tests.helpers import batch_of, lora_model, one_step
from vaccine_core.config import PerturbationConfig
from vaccine_core.perturbation import (
    PerturbedStep,
    attention_hooks,
    embedding_gradients,
    find_attention_modules,
    global_norm,
    vaccine_perturbation,
)

SMALL = {"vocab_size": 64}
ARCHITECTURES = {
    "llama": LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        **SMALL,
    ),
    "qwen2": Qwen2Config(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        **SMALL,
    ),
    "mistral": MistralConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        **SMALL,
    ),
    "gemma": GemmaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        **SMALL,
    ),
    "opt": OPTConfig(
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        **SMALL,
    ),
    "gpt2": GPT2Config(n_embd=16, n_layer=3, n_head=2, n_positions=64, **SMALL),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_finds_one_attention_module_per_layer_on_the_forward_path(name):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(ARCHITECTURES[name]).eval()
    modules = find_attention_modules(model)
    assert len(modules) == 3
    assert all("attention" in type(m).__name__.lower() for m in modules)
    ids = torch.randint(0, 64, (2, 7))
    clean = model(input_ids=ids).logits
    shapes = []

    def shift(index, hidden):
        shapes.append(tuple(hidden.shape))
        return hidden + 1.0 if index == 2 else None

    with attention_hooks(modules, shift):
        shifted = model(input_ids=ids).logits
    assert shapes == [(2, 7, 16)] * 3  # [batch, tokens, hidden]: the attention output itself
    assert not torch.allclose(clean, shifted)  # the last layer's attention output feeds the logits
    assert torch.equal(model(input_ids=ids).logits, clean)  # and the hook is gone


def reference_gradients(model, modules, batch):
    """dL/de_l the way the reference code records it: a backward hook on each attention module."""
    grads = {}
    handles = [
        m.register_full_backward_hook(lambda mod, _gi, go, i=i: grads.__setitem__(i, go[0].detach().clone()))
        for i, m in enumerate(modules)
    ]
    model.zero_grad()
    model(**batch).loss.backward()
    for h in handles:
        h.remove()
    model.zero_grad()
    return [grads[i] for i in range(len(modules))]


def test_embedding_gradients_match_the_reference_recording(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    batch = batch_of(tokenizer)
    modules = find_attention_modules(model)
    _, ours = embedding_gradients(model, modules, batch)
    theirs = reference_gradients(model, modules, batch)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    # pass 1 takes gradients w.r.t. hidden states only: no weight received one
    assert all(p.grad is None for p in model.parameters())


def test_embedding_gradient_matches_finite_differences(tokenizer):
    torch.manual_seed(0)
    # float64, though RMSNorm and the attention softmax still round through float32: hence a step of 1e-2,
    # where truncation error is ~1e-5 relative and float32 rounding does not yet dominate
    config = tiny_llama_config(len(tokenizer))
    config._attn_implementation = "eager"
    tiny = LlamaForCausalLM(config).double()
    model = lora_model(tiny, dropout=0.0)
    batch = batch_of(tokenizer)
    modules = find_attention_modules(model)
    _, grads = embedding_gradients(model, modules, batch)
    torch.manual_seed(1)
    for layer in range(len(modules)):
        # along the gradient the directional derivative is largest, well above float32 rounding noise
        direction = grads[layer] / grads[layer].norm()
        h = 1e-2

        def loss_at(t, layer=layer, direction=direction):
            # the loss in float64 from the logits (transformers computes its own loss in float32)
            with (
                torch.no_grad(),
                attention_hooks(modules, lambda i, x: x + t * direction if i == layer else None),
            ):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return float(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
                )
            )

        numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
        analytic = float((grads[layer] * direction).sum())
        assert numeric == pytest.approx(analytic, rel=1e-3)


def test_perturbation_has_global_norm_rho_along_the_gradient(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    batch = batch_of(tokenizer)
    modules = find_attention_modules(model)
    _, grads = embedding_gradients(model, modules, batch)
    originals = [g.clone() for g in grads]
    eps = vaccine_perturbation(grads, rho=0.7)
    assert float(global_norm(eps)) == pytest.approx(0.7, rel=1e-5)
    flat_eps = torch.cat([e.flatten() for e in eps])
    flat_grad = torch.cat([g.flatten() for g in originals])
    assert float(torch.nn.functional.cosine_similarity(flat_eps, flat_grad, dim=0)) == pytest.approx(
        1.0, abs=1e-6
    )
    # one norm over all layers: each layer keeps its share, the layers are not normalised separately
    ratio = [float(e.norm() / g.norm()) for e, g in zip(eps, originals, strict=True)]
    assert ratio[0] == pytest.approx(ratio[1], rel=1e-5)


def test_small_perturbation_raises_the_loss(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    batch = batch_of(tokenizer)
    modules = find_attention_modules(model)
    clean, grads = embedding_gradients(model, modules, batch)
    eps = vaccine_perturbation(grads, rho=1e-2)
    with torch.no_grad(), attention_hooks(modules, lambda i, x: x + eps[i]):
        perturbed = model(**batch).loss
    with torch.no_grad(), attention_hooks(modules, lambda i, x: x - eps[i]):
        opposite = model(**batch).loss
    assert float(perturbed) > float(clean) > float(opposite)


def test_rho_zero_vaccine_step_equals_an_sft_step_with_dropout(tiny_model, tokenizer):
    batch = batch_of(tokenizer)
    sft = lora_model(copy.deepcopy(tiny_model), dropout=0.3)
    vaccine = lora_model(copy.deepcopy(tiny_model), dropout=0.3)
    loss_sft = one_step(sft, batch, PerturbationConfig("sft"))
    loss_vaccine = one_step(vaccine, batch, PerturbationConfig("vaccine", rho=0.0))
    assert loss_sft == loss_vaccine
    for (name, a), (_, b) in zip(sft.named_parameters(), vaccine.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # ...and with rho > 0 the step differs
    other = lora_model(copy.deepcopy(tiny_model), dropout=0.3)
    one_step(other, batch, PerturbationConfig("vaccine", rho=1.0))
    assert not all(torch.equal(a, b) for a, b in zip(sft.parameters(), other.parameters(), strict=True))


def test_no_hook_remains_after_a_step(tiny_model, tokenizer):
    batch = batch_of(tokenizer)
    for method in ("vaccine", "random", "sft"):
        model = lora_model(copy.deepcopy(tiny_model), dropout=0.0)
        one_step(model, batch, PerturbationConfig(method, rho=2.0))
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules()), method
        twin = copy.deepcopy(model)  # deepcopy carries hooks too, so compare with a hook-free rebuild
        for m in twin.modules():
            m._forward_hooks.clear()
        model.eval(), twin.eval()
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, twin(**batch).logits)


def test_tau_reuses_a_direction_scaled_to_rho_on_real_tokens(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    step = PerturbedStep(model, PerturbationConfig("vaccine", rho=0.5, tau=3))
    first, second = (
        batch_of(tokenizer),
        batch_of(tokenizer, pairs=[("Hi", "Hello"), ("Bye", "See you soon.")]),
    )
    model.train()
    step.backward(first)
    directions = [d.clone() for d in step.directions]
    step.backward(second)
    step.backward(second)
    assert all(torch.equal(a, b) for a, b in zip(directions, step.directions, strict=True))  # not recomputed
    carried = step._carried_perturbation(second["attention_mask"])
    real_tokens = int(second["attention_mask"].sum())
    assert float(global_norm(carried)) * real_tokens**0.5 == pytest.approx(0.5, rel=1e-5)
    step.backward(second)  # call 3: a refresh, on this batch
    assert not all(torch.equal(a, b) for a, b in zip(directions, step.directions, strict=True))


def test_a_carried_direction_on_padded_positions_changes_no_gradient(tiny_model, tokenizer):
    """The reused direction is added to every position, padding included, as one broadcast add; the
    gradients are those of adding it to the real tokens alone."""
    model = lora_model(tiny_model, dropout=0.0)
    step = PerturbedStep(model, PerturbationConfig("vaccine", rho=0.5, tau=3))
    model.train()
    step.backward(batch_of(tokenizer))  # the refresh that sets the direction
    batch = batch_of(tokenizer, pairs=[("Hi", "Hello"), ("Bye", "See you soon.")])
    assert (batch["attention_mask"] == 0).any()
    model.zero_grad()
    step.backward(batch)  # a reuse step
    broadcast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    real = batch["attention_mask"].unsqueeze(-1).float()
    carried = step._carried_perturbation(batch["attention_mask"])
    with attention_hooks(step.modules, lambda i, hidden: hidden + real * carried[i]):
        model(**batch).loss.backward()
    for name, grad in broadcast.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in broadcast.values())


def test_random_noise_has_variance_rho_and_changes_the_loss(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    step = PerturbedStep(model, PerturbationConfig("random", rho=4.0))
    noise = step.add_noise(0, torch.zeros(200, 500))
    assert float(noise.var()) == pytest.approx(4.0, rel=0.03)
    batch = batch_of(tokenizer)
    with torch.no_grad():
        clean = float(model(**batch).loss)
    assert float(step.backward(batch)) != pytest.approx(clean, rel=1e-3)


def test_vaccine_step_is_the_same_under_activation_checkpointing(tiny_model, tokenizer):
    batch = batch_of(tokenizer)
    plain = lora_model(copy.deepcopy(tiny_model), dropout=0.0)
    checkpointed = lora_model(copy.deepcopy(tiny_model), dropout=0.0)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert PerturbedStep(checkpointed, PerturbationConfig("vaccine")).recomputes_forward()
    for model in (plain, checkpointed):
        model.train()
        PerturbedStep(model, PerturbationConfig("vaccine", rho=1.0)).backward(batch)
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)
