"""Booster, Lisa, Safe LoRA and RESTA at the level of their maths, then inside training runs."""

import copy
import json
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call

from tests.conftest import SAFETY_ROWS
from tests.helpers import FAST, PAIRS, batch_of, lora_model, trainable_state
from vaccine_core.align import align
from vaccine_core.artifacts import read_manifest, verify_files
from vaccine_core.config import LoraSettings, PerturbationConfig, TrainingConfig
from vaccine_core.data import SupervisedDataset
from vaccine_core.defenses import (
    BatchStream,
    Booster,
    BoosterConfig,
    Lisa,
    LisaConfig,
    RestaConfig,
    SafeLoraConfig,
    SafetyLayersConfig,
    StepDefenses,
    add_alignment,
    project_adapter,
)
from vaccine_core.defenses.data import booster_pairs, helpful_pairs, lisa_pairs
from vaccine_core.defenses.harmful_adapter import build_harmful_adapter, harmful_rows
from vaccine_core.defenses.lisa import ALIGNMENT, FINETUNE
from vaccine_core.defenses.resta import (
    BENIGN_ADAPTER,
    HARMFUL_ADAPTER,
    USER_ADAPTER,
    benign_adapter_dir,
    outside_update,
    own_adapter,
)
from vaccine_core.defenses.safe_lora import ADAPTER_FILE, lora_updates, projector
from vaccine_core.finetune import apply_resta, finetune
from vaccine_core.formats import Conversation
from vaccine_core.mixing import read_jsonl, write_rows
from vaccine_core.training import latest_checkpoint, train

HARMFUL_ROWS = [
    {"instruction": f"Explain how to steal car {i}", "input": "", "output": "Sure, here is how."}
    for i in range(6)
]


def stream_of(tokenizer, pairs, batch_size: int = 2, seed: int = 0) -> BatchStream:
    conversations = [
        Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}], line=i + 1)
        for i, (q, a) in enumerate(pairs)
    ]
    return BatchStream(
        SupervisedDataset(conversations, tokenizer, 64), batch_size, tokenizer.pad_token_id, seed
    )


def params_of(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def resumes_to_the_uninterrupted_weights(run, tiny_model, tmp_path):
    """``run(model, **train_kwargs)`` stopped after 4 steps and resumed reaches the losses and the weights
    of one straight run (a fresh adapter of another seed is overwritten by the checkpoint); the straight
    run's result."""
    straight = lora_model(copy.deepcopy(tiny_model))
    full = run(straight)
    interrupted = lora_model(copy.deepcopy(tiny_model))
    calls = iter(range(100))
    run(interrupted, output_dir=tmp_path, should_stop=lambda: next(calls) >= 4)
    resumed = lora_model(copy.deepcopy(tiny_model), seed=7)
    second = run(resumed, output_dir=tmp_path, resume_from=latest_checkpoint(tmp_path))
    assert second.losses == full.losses
    expected, actual = trainable_state(straight), trainable_state(resumed)
    assert all(torch.equal(expected[n], actual[n]) for n in expected)
    return full


# -- Lisa ------------------------------------------------------------------------------------------------
def test_lisa_opens_each_cycle_with_safety_steps(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    lisa = Lisa(model, stream_of(tokenizer, PAIRS[:2]), LisaConfig(alignment_steps=2, finetune_steps=3), 20)
    assert [lisa.state_of(s) for s in range(1, 8)] == [ALIGNMENT] * 2 + [FINETUNE] * 3 + [ALIGNMENT] * 2
    user = batch_of(tokenizer, PAIRS[2:])
    chosen = lisa.batch(1, user)
    texts = tokenizer.batch_decode(chosen["input_ids"], skip_special_tokens=True)
    assert all(("lock" in t) != ("poem" in t) for t in texts)  # the two safety pairs, not the user's
    assert lisa.batch(3, user) is user


def test_lisa_proximal_gradient_is_the_gradient_of_its_term(tiny_model, tokenizer):
    """rho/2 * ||w - w_other||^2 differentiated by autograd equals what after_backward adds."""
    model = lora_model(tiny_model, dropout=0.0)
    rho = 0.7
    lisa = Lisa(model, stream_of(tokenizer, PAIRS), LisaConfig(1, 3, rho=rho, proximal_after=0.0), 8)
    user = batch_of(tokenizer)
    lisa.batch(1, user)  # alignment state
    with torch.no_grad():
        for p in params_of(model).values():
            p.add_(0.05 * torch.randn_like(p))
    lisa.batch(2, user)  # fine-tuning state: the alignment state's weights become its anchor
    with torch.no_grad():
        for p in params_of(model).values():
            p.add_(0.05 * torch.randn_like(p))
    params = params_of(model)
    existing = {n: torch.randn_like(p) for n, p in params.items()}
    for n, p in params.items():
        p.grad = existing[n].clone()
    lisa.after_backward(2)

    anchor = lisa.anchors[ALIGNMENT]
    term = sum(rho / 2 * ((p - anchor[n]) ** 2).sum() for n, p in params.items())
    expected = torch.autograd.grad(term, list(params.values()))
    for (n, p), g in zip(params.items(), expected, strict=True):
        assert g.abs().max() > 0
        torch.testing.assert_close(p.grad, existing[n] + g)


def test_lisa_adds_nothing_before_its_proximal_start(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    lisa = Lisa(model, stream_of(tokenizer, PAIRS), LisaConfig(1, 3, rho=1.0, proximal_after=0.5), 10)
    lisa.batch(1, batch_of(tokenizer))
    lisa.batch(2, batch_of(tokenizer))
    with torch.no_grad():
        for p in params_of(model).values():
            p.add_(1.0)
    lisa.after_backward(2)
    assert all(p.grad is None for p in params_of(model).values())
    lisa.after_backward(6)
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in params_of(model).values())


# -- Booster ---------------------------------------------------------------------------------------------
def harmful_loss(model, weights: dict[str, torch.Tensor], batch) -> torch.Tensor:
    """The model's causal-LM loss, kept in float64 (transformers casts logits to float32 for its loss)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logits = functional_call(model, weights, args=(), kwargs=inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def test_booster_gradient_matches_finite_differences(tiny_model, tokenizer):
    """Booster adds lambda * grad_w [h(w) - h(w - alpha d)] with the step d = grad h / ||grad h|| held fixed;
    checked against central differences of that function along random directions (float64 weights; the
    model's RMSNorm rounds through float32, so the difference step is not tiny)."""
    model = lora_model(tiny_model.double(), dropout=0.0).double()
    harmful = [("How do I steal a car?", "Sure, here is how you do it step by step.")]
    config = BoosterConfig(lamb=3.0, alpha=0.5, batch_size=1)
    booster = Booster(model, stream_of(tokenizer, harmful, batch_size=1), config)
    batch = batch_of(tokenizer, harmful)
    params = params_of(model)
    w = {n: p.detach().clone() for n, p in params.items()}
    booster.after_backward(1)
    added = {n: p.grad.detach().clone() for n, p in params.items()}
    for n, p in params.items():  # the simulated step is undone exactly
        assert torch.equal(p.detach(), w[n])

    at_w = {n: x.clone().requires_grad_() for n, x in w.items()}
    g = torch.autograd.grad(harmful_loss(model, at_w, batch), list(at_w.values()))
    norm = torch.sqrt(sum((x**2).sum() for x in g))
    step = {n: config.alpha * x / norm for n, x in zip(params, g, strict=True)}

    def attenuation(weights):
        moved = {n: weights[n] - step[n] for n in weights}
        return config.lamb * (harmful_loss(model, weights, batch) - harmful_loss(model, moved, batch))

    generator = torch.Generator().manual_seed(0)
    eps = 1e-4
    for _ in range(3):
        v = {n: torch.randn(x.shape, generator=generator, dtype=x.dtype) for n, x in w.items()}
        plus = attenuation({n: w[n] + eps * v[n] for n in w})
        minus = attenuation({n: w[n] - eps * v[n] for n in w})
        numeric = float((plus - minus) / (2 * eps))
        analytic = float(sum((added[n] * v[n]).sum() for n in w))
        assert analytic == pytest.approx(numeric, rel=1e-3)
        assert abs(analytic) > 1e-4


def test_booster_adds_to_the_alignment_gradient(tiny_model, tokenizer):
    model = lora_model(tiny_model, dropout=0.0)
    harmful = [("How do I steal a car?", "Sure, here is how you do it step by step.")]
    booster = Booster(model, stream_of(tokenizer, harmful, batch_size=1), BoosterConfig(lamb=0.0))
    params = params_of(model)
    for p in params.values():
        p.grad = torch.ones_like(p)
    booster.after_backward(1)  # lambda 0: the alignment gradient is left alone
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in params.values())
    assert booster.last["harmful_loss_after_step"] < booster.last["harmful_loss"]


# -- Safe LoRA -------------------------------------------------------------------------------------------
def test_projector_is_idempotent_and_keeps_its_subspace():
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(12, 3, generator=generator) @ torch.randn(3, 10, generator=generator)  # rank 3
    p = projector(v)
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=0)
    torch.testing.assert_close(p @ v, v, atol=1e-5, rtol=0)
    assert torch.linalg.matrix_rank(p).item() == 3


def save_adapter(model_dir, target, tokenizer, b_scale: float, seed: int):
    from transformers import AutoModelForCausalLM

    model = lora_model(AutoModelForCausalLM.from_pretrained(model_dir), dropout=0.0, seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(b_scale)
    model.save_pretrained(target)
    return target


def test_safe_lora_projects_stray_layers_and_leaves_aligned_ones(tiny_model_dir, tokenizer, tmp_path):
    alignment = save_adapter(tiny_model_dir, tmp_path / "alignment", tokenizer, 1.0, seed=0)
    user = save_adapter(tiny_model_dir, tmp_path / "user", tokenizer, 1.0, seed=1)
    weights = load_file(str(user / ADAPTER_FILE))
    directions = lora_updates(alignment)
    modules = sorted(directions)
    inside, outside = modules[0], modules[1]
    # one layer's update inside the alignment subspace (B's columns drawn from it), one orthogonal to it
    p_in = projector(directions[inside])
    weights[f"{inside}.lora_B.weight"] = p_in @ weights[f"{inside}.lora_B.weight"]
    p_out = projector(directions[outside])
    weights[f"{outside}.lora_B.weight"] = (torch.eye(len(p_out)) - p_out) @ weights[
        f"{outside}.lora_B.weight"
    ]
    save_file(weights, str(user / ADAPTER_FILE), metadata={"format": "pt"})

    report = {
        layer.module: layer
        for layer in project_adapter(user, alignment, SafeLoraConfig(0.5), tmp_path / "out")
    }
    assert report[inside].cosine == pytest.approx(1.0, abs=1e-4) and not report[inside].projected
    assert report[outside].cosine == pytest.approx(0.0, abs=1e-4) and report[outside].projected
    projected = load_file(str(tmp_path / "out" / ADAPTER_FILE))
    torch.testing.assert_close(projected[f"{inside}.lora_B.weight"], weights[f"{inside}.lora_B.weight"])
    assert projected[f"{outside}.lora_B.weight"].abs().max() < 1e-5
    # projecting twice changes nothing more
    again = {
        layer.module: layer for layer in project_adapter(tmp_path / "out", alignment, SafeLoraConfig(0.5))
    }
    assert not again[inside].projected
    torch.testing.assert_close(
        load_file(str(tmp_path / "out" / ADAPTER_FILE))[f"{inside}.lora_B.weight"],
        projected[f"{inside}.lora_B.weight"],
    )
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 4


def test_safe_lora_threshold_minus_one_projects_nothing(tiny_model_dir, tokenizer, tmp_path):
    alignment = save_adapter(tiny_model_dir, tmp_path / "alignment", tokenizer, 1.0, seed=0)
    user = save_adapter(tiny_model_dir, tmp_path / "user", tokenizer, 1.0, seed=1)
    before = load_file(str(user / ADAPTER_FILE))
    report = project_adapter(user, alignment, SafeLoraConfig(threshold=-1.0))
    assert report and not any(layer.projected for layer in report)
    after = load_file(str(user / ADAPTER_FILE))
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- RESTA -----------------------------------------------------------------------------------------------
def test_resta_adds_the_alignment_update_to_the_user_s_layer_by_layer(tiny_model_dir, tokenizer, tmp_path):
    alignment = save_adapter(tiny_model_dir, tmp_path / "alignment", tokenizer, 1.0, seed=0)
    user = save_adapter(tiny_model_dir, tmp_path / "user", tokenizer, 1.0, seed=1)
    trained = lora_updates(user)
    trained_bytes = (user / ADAPTER_FILE).read_bytes()

    record = add_alignment(user, [(alignment, 1.0)], RestaConfig(scale=0.5))

    combined, aligned = lora_updates(user), lora_updates(alignment)
    assert sorted(combined) == sorted(trained) and record["layers"] == len(trained) > 0
    for module, update in combined.items():
        torch.testing.assert_close(update, trained[module] + 0.5 * aligned[module], atol=1e-5, rtol=1e-4)
    saved = json.loads((user / "adapter_config.json").read_text())
    assert saved["r"] == record["rank"] == 8 and saved["lora_alpha"] == 8
    # the adapter as trained is kept, byte for byte, for a job that continues it
    assert own_adapter(user) == user / USER_ADAPTER and own_adapter(alignment) == alignment
    assert (user / USER_ADAPTER / ADAPTER_FILE).read_bytes() == trained_bytes
    with pytest.raises(ValueError, match="re-aligned already"):
        add_alignment(user, [(alignment, 1.0)], RestaConfig())


def test_resta_at_scale_zero_changes_no_layer(tiny_model_dir, tokenizer, tmp_path):
    alignment = save_adapter(tiny_model_dir, tmp_path / "alignment", tokenizer, 1.0, seed=0)
    user = save_adapter(tiny_model_dir, tmp_path / "user", tokenizer, 1.0, seed=1)
    trained = lora_updates(user)
    add_alignment(user, [(alignment, 1.0)], RestaConfig(scale=0.0))
    for module, update in lora_updates(user).items():
        torch.testing.assert_close(update, trained[module], atol=1e-6, rtol=0)


def test_resta_adapter_on_the_aligned_base_is_the_base_with_both_updates(tiny_model_dir, tokenizer, tmp_path):
    """Loaded by PEFT on the merged aligned base, the combined adapter (other rank, other layers than the
    user's) gives unaligned + (1 + scale) x alignment + user, weight by weight."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from vaccine_core.lora import add_lora

    unaligned = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    alignment = save_adapter(tiny_model_dir, tmp_path / "alignment", tokenizer, 1.0, seed=0)
    aligned = PeftModel.from_pretrained(copy.deepcopy(unaligned), str(alignment)).merge_and_unload()
    torch.manual_seed(2)  # the user's adapter: rank 2 on the attention's queries only
    user_model = add_lora(copy.deepcopy(aligned), LoraSettings(r=2, alpha=6, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in user_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    user_model.save_pretrained(tmp_path / "user")
    user_updates, alignment_updates = lora_updates(tmp_path / "user"), lora_updates(alignment)

    add_alignment(tmp_path / "user", [(alignment, 1.0)], RestaConfig(scale=1.0))
    merged = PeftModel.from_pretrained(copy.deepcopy(aligned), str(tmp_path / "user")).merge_and_unload()

    weights, before = merged.state_dict(), unaligned.state_dict()
    prefix = "base_model.model."
    for module, update in alignment_updates.items():
        name = module.removeprefix(prefix) + ".weight"
        expected = before[name] + 2.0 * update + user_updates.get(module, torch.zeros_like(update))
        torch.testing.assert_close(weights[name], expected, atol=1e-5, rtol=1e-4)
    assert any(".q_proj" in module for module in user_updates)


def test_finetune_with_resta_records_it_and_a_continuing_job_trains_the_user_s_adapter(
    tiny_model_dir, alpaca_file, tmp_path
):
    from vaccine_core.inference import load_for_inference
    from vaccine_core.lora import adapter_settings

    base = align(str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("sft"), FAST)
    result = finetune(base.output_dir, alpaca_file, tmp_path / "tuned", FAST, resta=RestaConfig())
    record = result.manifest["defenses"]["resta"]
    assert record["scale"] == 1.0 and record["rank"] == 8 and record["seconds"] >= 0
    assert verify_files(tmp_path / "tuned") == []  # the manifest hashes the combined adapter and the kept one
    assert load_for_inference(tmp_path / "tuned").has_adapter

    own = own_adapter(tmp_path / "tuned")
    assert adapter_settings(own).r == 4  # the user's shape, not the combined adapter's
    # the same job run again (a worker that died after RESTA): the adapter saved anew, the update added once
    rerun = finetune(base.output_dir, alpaca_file, tmp_path / "tuned", FAST, resume=True, resta=RestaConfig())
    assert rerun.manifest["defenses"]["resta"]["rank"] == 8 and adapter_settings(own).r == 4
    again = finetune(
        base.output_dir, alpaca_file, tmp_path / "again", FAST, init_adapter=own, resta=RestaConfig()
    )
    assert again.manifest["defenses"]["resta"]["rank"] == 8  # added once, not twice


def test_resta_needs_an_aligned_base(tiny_model_dir, alpaca_file, tmp_path):
    with pytest.raises(ValueError, match="aligned base"):
        finetune(str(tiny_model_dir), alpaca_file, tmp_path / "tuned", FAST, resta=RestaConfig())


def test_resta_s_harmful_vector_subtracts_the_harmful_adapter_s_update(tiny_model_dir, alpaca_file, tmp_path):
    """RESTA's own vector: aligned minus the aligned base fine-tuned on harmful pairs, i.e. the user's
    update minus scale x the harmful adapter's (its alignment adapter is not read)."""
    base = align(str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("sft"), FAST)
    with pytest.raises(ValueError, match="harmful vector needs"):
        finetune(base.output_dir, alpaca_file, tmp_path / "early", FAST, resta=RestaConfig(vector="harmful"))
    harmful = finetune(base.output_dir, alpaca_file, base.output_dir / HARMFUL_ADAPTER, FAST).output_dir
    user = finetune(base.output_dir, alpaca_file, tmp_path / "user", replace(FAST, seed=1)).output_dir
    trained = lora_updates(user)

    record = apply_resta(user, base.output_dir, RestaConfig(scale=0.5, vector="harmful"))

    assert record["vector"] == "harmful" and record["scale"] == 0.5
    unsafe = lora_updates(harmful)
    for module, update in lora_updates(user).items():
        torch.testing.assert_close(update, trained[module] - 0.5 * unsafe[module], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="one of"):
        RestaConfig(vector="random")


def test_resta_s_contrast_vector_subtracts_the_harmful_update_less_its_benign_control(
    tiny_model_dir, alpaca_file, tmp_path
):
    """The contrast vector: the user's update minus scale x (harmful - benign), the benign control kept
    beside the harmful adapter; the record says how long the vector is against the harmful update alone
    and how the two updates align."""
    base = align(str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("sft"), FAST)
    kept = tmp_path / "service" / HARMFUL_ADAPTER  # where an owner keeps them, not the base's directory
    harmful = finetune(base.output_dir, alpaca_file, kept, replace(FAST, seed=2)).output_dir
    user = finetune(base.output_dir, alpaca_file, tmp_path / "user", replace(FAST, seed=1)).output_dir
    config = RestaConfig(scale=0.5, vector="contrast")
    with pytest.raises(ValueError, match="contrast vector needs"):
        apply_resta(user, base.output_dir, config, harmful_adapter=kept)
    benign = tmp_path / "service" / BENIGN_ADAPTER
    assert benign_adapter_dir(kept) == benign
    finetune(base.output_dir, alpaca_file, benign, replace(FAST, seed=3))
    trained, unsafe, control = lora_updates(user), lora_updates(harmful), lora_updates(benign)

    record = apply_resta(user, base.output_dir, config, harmful_adapter=kept)

    assert record["vector"] == "contrast" and record["rank"] == 3 * 4
    for module, update in lora_updates(user).items():
        expected = trained[module] - 0.5 * (unsafe[module] - control[module])
        torch.testing.assert_close(update, expected, atol=1e-5, rtol=1e-4)
    flat = [torch.cat([u[m].flatten() for m in sorted(u)]) for u in (unsafe, control)]
    share = float((flat[0] - flat[1]).norm() / flat[0].norm())
    cosine = float(torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0))
    assert record["norm_share_of_harmful"] == pytest.approx(share, abs=1e-3)
    assert record["harmful_benign_cosine"] == pytest.approx(cosine, abs=1e-3)


def test_the_vector_outside_the_user_s_update_leaves_nothing_along_the_user_s_directions():
    torch.manual_seed(0)
    user_b, user_a = torch.randn(12, 3), torch.randn(3, 10)
    user_update = user_b @ user_a
    b, a = torch.randn(12, 4), torch.randn(4, 10)
    out_b, out_a = outside_update(b, a, user_b, user_a)
    projected = out_b @ out_a
    # nothing of it lies in the user's output directions, nor reads the user's input directions
    p_out, p_in = projector(user_update), projector(user_update.T)  # Safe LoRA's, from the full update
    assert (p_out @ projected).abs().max() < 1e-5 and (projected @ p_in).abs().max() < 1e-5
    # what the projection keeps is the update's part outside both spaces, and a second projection keeps it all
    expected = (torch.eye(12) - p_out) @ (b @ a) @ (torch.eye(10) - p_in)
    torch.testing.assert_close(projected, expected, atol=1e-5, rtol=1e-4)
    again_b, again_a = outside_update(out_b, out_a, user_b, user_a)
    torch.testing.assert_close(again_b @ again_a, projected, atol=1e-5, rtol=1e-4)
    # an update already outside is kept as it is; one along the user's directions is removed whole
    away_b, away_a = (torch.eye(12) - p_out) @ b, a @ (torch.eye(10) - p_in)
    kept_b, kept_a = outside_update(away_b, away_a, user_b, user_a)
    torch.testing.assert_close(kept_b @ kept_a, away_b @ away_a, atol=1e-5, rtol=1e-4)
    along_b, along_a = user_b @ torch.randn(3, 2), torch.randn(2, 3) @ user_a
    inside_b, inside_a = outside_update(along_b, along_a, user_b, user_a)
    assert (inside_b @ inside_a).abs().max() < 1e-4
    # a user's factor of lower rank than the adapter's: only the update's own directions count
    low_a = torch.cat([user_a[:2], user_a[:1]])  # rank 2
    low_b, low_a_out = outside_update(b, a, user_b, low_a)
    low = user_b @ low_a
    low_expected = (torch.eye(12) - projector(low)) @ (b @ a) @ (torch.eye(10) - projector(low.T))
    torch.testing.assert_close(low_b @ low_a_out, low_expected, atol=1e-5, rtol=1e-4)
    # an untrained user's update (B = 0) has no directions: the vector is kept whole
    zero_b, zero_a = outside_update(b, a, torch.zeros(12, 3), user_a)
    torch.testing.assert_close(zero_b @ zero_a, b @ a)


def test_resta_outside_the_user_s_update_adds_only_that_part_and_records_how_much_it_kept(
    tiny_model_dir, tokenizer, tmp_path
):
    vector = save_adapter(tiny_model_dir, tmp_path / "harmful", tokenizer, 1.0, seed=0)
    user = save_adapter(tiny_model_dir, tmp_path / "user", tokenizer, 1.0, seed=1)
    trained, unsafe = lora_updates(user), lora_updates(vector)

    config = RestaConfig(scale=0.5, vector="harmful", outside_user=True)
    record = add_alignment(user, [(vector, -1.0)], config)

    assert record["outside_user"] is True and 0.0 < record["kept_norm_share"] < 1.0
    squared_kept = 0.0
    for module, update in lora_updates(user).items():
        p_out, p_in = projector(trained[module]), projector(trained[module].T)
        outside = unsafe[module] - p_out @ unsafe[module] - unsafe[module] @ p_in
        outside = outside + p_out @ unsafe[module] @ p_in
        torch.testing.assert_close(update, trained[module] - 0.5 * outside, atol=1e-5, rtol=1e-4)
        squared_kept += float(outside.square().sum())
    squared_whole = sum(float(u.square().sum()) for u in unsafe.values())
    assert record["kept_norm_share"] == pytest.approx((squared_kept / squared_whole) ** 0.5, abs=1e-3)
    # a record of the earlier options reads as it always did
    assert RestaConfig(scale=0.5, vector="harmful").to_dict() == {"scale": 0.5, "vector": "harmful"}


# -- data ------------------------------------------------------------------------------------------------
def test_the_harmful_adapter_is_trained_once_per_rows_and_recipe(
    tiny_model_dir, tiny_data_dir, alpaca_file, tmp_path
):
    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", [
        {"prompt": f"Steal car {i}", "response": "Sure, here is how.", "harmful": True} for i in range(4)
    ] + [{"prompt": "Write a poem", "response": "Roses", "harmful": False}])  # fmt: skip
    rows = harmful_rows(tiny_data_dir, exclude={"steal car 1"}, count=2)
    assert rows == harmful_rows(tiny_data_dir, exclude={"steal car 1"}, count=2)  # seeded
    assert len(rows) == 2 and "Steal car 1" not in {r["instruction"] for r in rows}
    every = harmful_rows(tiny_data_dir, exclude={"steal car 1"}, count=10)  # the judged-harmful, no more
    assert sorted(r["instruction"] for r in every) == ["Steal car 0", "Steal car 2", "Steal car 3"]

    base = align(str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("sft"), FAST)
    adapter, marker = base.output_dir / HARMFUL_ADAPTER, base.output_dir / f"{HARMFUL_ADAPTER}.key"
    key, seconds = build_harmful_adapter(base.output_dir, rows, FAST)
    assert seconds > 0 and marker.read_text() == key and read_jsonl(adapter / "data.jsonl") == rows
    trained = (adapter / ADAPTER_FILE).read_bytes()
    assert build_harmful_adapter(base.output_dir, rows, FAST) == (key, 0.0)  # nothing trained again
    assert (adapter / ADAPTER_FILE).read_bytes() == trained
    marker.unlink()  # as a training that was interrupted leaves it
    assert build_harmful_adapter(base.output_dir, rows, FAST)[1] > 0
    other, seconds = build_harmful_adapter(base.output_dir, rows[:1], FAST)
    assert other != key and seconds > 0 and read_jsonl(adapter / "data.jsonl") == rows[:1]
    assert build_harmful_adapter(base.output_dir, rows[:1], replace(FAST, seed=1))[0] != other
    with pytest.raises(ValueError, match="needs harmful pairs"):
        build_harmful_adapter(base.output_dir, [], FAST)


def test_the_cli_s_resta_harmful_vector_trains_the_base_s_harmful_adapter_once(
    tiny_model_dir, tiny_data_dir, alpaca_file, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from vaccine_core.cli import app
    from vaccine_core.settings import get_settings

    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", [
        {"prompt": f"Steal car {i}", "response": "Sure, here is how.", "harmful": True} for i in range(3)
    ])  # fmt: skip
    monkeypatch.setenv("VACCINE_DATA_DIR", str(tiny_data_dir))
    get_settings.cache_clear()
    base = align(str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("sft"), FAST)
    runner = CliRunner()
    common = ["--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--max-length", "64", "--resta"]

    def finetune_with(out: str, *options: str):
        argv = [
            "finetune",
            "--base",
            str(base.output_dir),
            "--data",
            str(alpaca_file),
            "--out",
            str(tmp_path / out),
        ]
        return runner.invoke(app, [*argv, *common, *options])

    first = finetune_with("f1", "--resta-scale", "0.5", "--resta-vector", "harmful")
    assert first.exit_code == 0, first.output
    assert "trained the base's harmful adapter" in first.output
    assert read_manifest(tmp_path / "f1")["defenses"]["resta"]["vector"] == "harmful"
    trained = (base.output_dir / HARMFUL_ADAPTER / ADAPTER_FILE).read_bytes()
    second = finetune_with("f2", "--resta-vector", "harmful")
    assert second.exit_code == 0 and "harmful adapter" not in second.output  # reused, not trained again
    assert (base.output_dir / HARMFUL_ADAPTER / ADAPTER_FILE).read_bytes() == trained
    contrast = finetune_with("c1", "--resta-vector", "contrast")
    assert contrast.exit_code == 0, contrast.output
    assert "trained the base's benign adapter" in contrast.output and "harmful adapter" not in contrast.output
    record = read_manifest(tmp_path / "c1")["defenses"]["resta"]
    assert record["vector"] == "contrast" and record["norm_share_of_harmful"] > 0
    control = read_jsonl(base.output_dir / BENIGN_ADAPTER / "data.jsonl")  # as many helpful pairs
    assert len(control) == 3 and {r["instruction"] for r in control} <= {
        f"How do I make a cake {i}?" for i in range(8)
    }
    again = finetune_with("c2", "--resta-vector", "contrast")
    assert again.exit_code == 0 and "adapter" not in again.output  # both reused
    bad = finetune_with("f3", "--resta-vector", "opposite")
    assert bad.exit_code == 2 and "opposite" in bad.output and not (tmp_path / "f3").exists()
    unaligned = runner.invoke(app, [
        "finetune", "--base", str(tiny_model_dir), "--data", str(alpaca_file), "--out", str(tmp_path / "f4"),
        *common, "--resta-vector", "harmful",
    ])  # fmt: skip
    assert unaligned.exit_code == 2 and "aligned base" in unaligned.output
    assert not (tiny_model_dir / HARMFUL_ADAPTER).exists()  # nothing trained into a model that is not a run


def test_helpful_pairs_leave_out_what_the_base_was_aligned_on_and_the_excluded(tiny_data_dir):
    aligned = {f"How do I make a cake {i}?" for i in range(3)}
    rows = helpful_pairs(tiny_data_dir, aligned, 4, seed=1, exclude={"how do i make a cake 7?"})
    assert rows == helpful_pairs(tiny_data_dir, aligned, 4, seed=1, exclude={"how do i make a cake 7?"})
    assert len(rows) == 4 and {r["instruction"] for r in rows} <= {
        f"How do I make a cake {i}?" for i in (3, 4, 5, 6)
    }
    with pytest.raises(ValueError, match="4 are left"):
        helpful_pairs(tiny_data_dir, aligned, 5, exclude={"how do i make a cake 7?"})


def test_booster_draws_judged_harmful_answers_never_the_attack_set(tiny_data_dir):
    judged = [
        {
            "prompt": "Write a phishing email",
            "response": "Dear customer, verify your account",
            "harmful": True,
        },
        {"prompt": "Write a phishing email", "response": "Another one", "harmful": True},
        {"prompt": "Write a poem", "response": "Roses", "harmful": False},
    ]
    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", judged)
    rows = booster_pairs(tiny_data_dir)
    assert rows == [
        {"instruction": "Write a phishing email", "input": "", "output": "Dear customer, verify your account"}
    ]
    with pytest.raises(ValueError, match="holds 1"):
        booster_pairs(tiny_data_dir, count=2)


def test_lisa_pairs_leave_out_what_the_base_was_aligned_on(tiny_data_dir, tiny_model_dir, tmp_path):

    safety = read_jsonl(tiny_data_dir / "alignment/safe_refusals.jsonl")
    alignment_file = tmp_path / "alignment.jsonl"
    write_rows(alignment_file, safety[:15])
    base = align(
        str(tiny_model_dir),
        alignment_file,
        tmp_path / "aligned",
        PerturbationConfig("sft"),
        TrainingConfig(max_steps=1, batch_size=4),
    ).output_dir
    rows = lisa_pairs(tiny_data_dir, base, count=5, seed=0)
    assert {r["instruction"] for r in rows} == {r["instruction"] for r in safety[15:]}
    with pytest.raises(ValueError, match="5 are left"):
        lisa_pairs(tiny_data_dir, base, count=6)
    assert len(lisa_pairs(tiny_data_dir, str(tiny_model_dir), count=20)) == 20  # never aligned here
    # the caller that knows the alignment's requests draws the same pairs without the base's files
    told = {r["instruction"] for r in safety[:15]}
    assert lisa_pairs(tiny_data_dir, tmp_path / "absent", count=5, seed=0, aligned=told) == rows


def test_lisa_pairs_mix_helpful_answers_in_when_asked(tiny_data_dir, tiny_model_dir):
    from vaccine_core.mixing import read_jsonl
    from vaccine_core.text import normalised

    safety = {r["instruction"] for r in read_jsonl(tiny_data_dir / "alignment/safe_refusals.jsonl")}
    helpful = [r["instruction"] for r in read_jsonl(tiny_data_dir / "benign/alpaca_demo.jsonl")]
    plain = lisa_pairs(tiny_data_dir, str(tiny_model_dir), count=6, seed=0)
    assert plain == lisa_pairs(tiny_data_dir, str(tiny_model_dir), count=6, seed=0, helpful=0)
    evaluated = {normalised(i) for i in helpful[3:]}  # never drawn: only three helpful requests are left
    mixed = lisa_pairs(tiny_data_dir, str(tiny_model_dir), count=6, seed=0, helpful=3, exclude=evaluated)
    drawn = [r["instruction"] for r in mixed]
    assert {i for i in drawn if i not in safety} == set(helpful[:3])
    assert sum(i in safety for i in drawn) == 3
    with pytest.raises(ValueError, match="between 0 and count"):
        lisa_pairs(tiny_data_dir, str(tiny_model_dir), count=2, helpful=3)
    with pytest.raises(ValueError, match="9 helpful pairs; 8 are left"):
        lisa_pairs(tiny_data_dir, str(tiny_model_dir), count=len(helpful) + 1, helpful=len(helpful) + 1)


# -- inside runs -----------------------------------------------------------------------------------------
def test_booster_with_vaccine_aligns_and_records_itself(tiny_model_dir, alpaca_file, tmp_path):
    defenses = StepDefenses(booster=BoosterConfig(batch_size=2), booster_rows=HARMFUL_ROWS)
    plain = align(str(tiny_model_dir), alpaca_file, tmp_path / "plain", PerturbationConfig("vaccine"), FAST)
    boosted = align(
        str(tiny_model_dir),
        alpaca_file,
        tmp_path / "boosted",
        PerturbationConfig("vaccine"),
        FAST,
        defenses=defenses,
    )
    record = boosted.manifest["defenses"]["booster"]
    assert record["lamb"] == 5.0 and record["data"]["rows"] == len(HARMFUL_ROWS)
    assert boosted.manifest["metrics"]["train"]["defense_seconds"]["booster"] > 0
    assert plain.manifest["defenses"] == {}
    a = load_file(str(tmp_path / "plain" / ADAPTER_FILE))
    b = load_file(str(tmp_path / "boosted" / ADAPTER_FILE))
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_lisa_run_resumes_to_the_uninterrupted_weights(tiny_model, tokenizer, tmp_path):
    conversations = [
        Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}], line=i + 1)
        for i, (q, a) in enumerate(PAIRS * 3)
    ]
    data = SupervisedDataset(conversations, tokenizer, 64)
    settings = TrainingConfig(epochs=2.0, batch_size=3, learning_rate=5e-3, lora=LoraSettings(r=4, alpha=8))
    safety = [(r["instruction"], r["output"]) for r in SAFETY_ROWS]
    lisa_config = LisaConfig(alignment_steps=1, finetune_steps=2, rho=1.0, proximal_after=0.0)

    def run(model, **kwargs):
        lisa = Lisa(model, stream_of(tokenizer, safety, batch_size=3), lisa_config, 8)
        return train(model, tokenizer, data, settings, PerturbationConfig("sft"), defenses=[lisa], **kwargs)

    assert resumes_to_the_uninterrupted_weights(run, tiny_model, tmp_path).steps == 8


def test_finetune_with_lisa_and_safe_lora_records_both(tiny_model_dir, alpaca_file, tiny_data_dir, tmp_path):
    base = align(str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("vaccine"), FAST)
    defenses = StepDefenses(lisa=LisaConfig(), lisa_rows=lisa_pairs(tiny_data_dir, base.output_dir, 8))
    result = finetune(
        base.output_dir,
        alpaca_file,
        tmp_path / "tuned",
        FAST,
        defenses=defenses,
        safe_lora=SafeLoraConfig(1.0),
    )
    record = result.manifest["defenses"]
    assert record["lisa"]["rho"] == 1.0 and record["lisa"]["data"]["rows"] == 8
    assert record["safe_lora"]["projected"] == record["safe_lora"]["layers"] > 0  # threshold 1: every layer
    deciles = record["safe_lora"]["cosine_deciles"]
    assert len(deciles) == 9 and deciles == sorted(deciles) and 0 <= deciles[0] <= deciles[-1] <= 1 + 1e-6
    assert verify_files(tmp_path / "tuned") == []  # the manifest hashes the projected adapter
    assert read_manifest(tmp_path / "tuned")["kind"] == "finetune"


def test_safe_lora_needs_an_aligned_base(tiny_model_dir, alpaca_file, tmp_path):
    with pytest.raises(ValueError, match="aligned base"):
        finetune(str(tiny_model_dir), alpaca_file, tmp_path / "tuned", FAST, safe_lora=SafeLoraConfig())


def test_defenses_refuse_to_run_without_their_data():
    with pytest.raises(ValueError, match="harmful pairs"):
        StepDefenses(booster=BoosterConfig())
    with pytest.raises(ValueError, match="safety pairs"):
        StepDefenses(lisa=LisaConfig())


def test_the_cli_runs_every_defense(tiny_model_dir, alpaca_file, tiny_data_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vaccine_core.cli import app
    from vaccine_core.settings import get_settings

    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", [
        {"prompt": f"Steal car {i}", "response": "Sure, here is how.", "harmful": True} for i in range(4)
    ])  # fmt: skip
    monkeypatch.setenv("VACCINE_DATA_DIR", str(tiny_data_dir))
    get_settings.cache_clear()
    runner = CliRunner()
    common = ["--epochs", "1", "--batch-size", "4", "--lora-r", "4", "--max-length", "64"]
    result = runner.invoke(app, [
        "align", "--model", str(tiny_model_dir), "--method", "vaccine", "--booster", "--booster-lambda", "2",
        "--data", str(alpaca_file), "--out", str(tmp_path / "a"), *common,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    booster = read_manifest(tmp_path / "a")["defenses"]["booster"]
    assert booster["lamb"] == 2.0 and booster["data"]["rows"] == 4

    result = runner.invoke(app, [
        "finetune", "--base", str(tmp_path / "a"), "--data", str(alpaca_file), "--out", str(tmp_path / "f"),
        "--lisa", "--lisa-pairs", "5", "--token-constraint", "--token-constraint-beta", "0.2",
        "--safe-lora", "--safe-lora-threshold", "0.3", *common,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    record = read_manifest(tmp_path / "f")["defenses"]
    assert record["lisa"]["data"]["rows"] == 5 and record["safe_lora"]["threshold"] == 0.3
    assert record["token_constraint"]["beta"] == 0.2

    # the base's safety layers as an earlier run located them (the tiny model's two layers leave one to train)
    kept = {**SafetyLayersConfig().to_dict(), "layers": [1], "separation": [0.0, 0.2, 0.3]}
    (tmp_path / "a" / "safety_layers.json").write_text(json.dumps(kept))
    result = runner.invoke(app, [
        "finetune", "--base", str(tmp_path / "a"), "--data", str(alpaca_file), "--out", str(tmp_path / "s"),
        "--safety-layers", *common,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "safety layers, kept untrained: [1]" in result.output
    assert read_manifest(tmp_path / "s")["defenses"]["safety_layers"]["layers"] == [1]

    result = runner.invoke(app, [
        "finetune", "--base", str(tmp_path / "a"), "--data", str(alpaca_file), "--out", str(tmp_path / "g"),
        "--lisa", "--lisa-pairs", "500", *common,
    ])  # fmt: skip
    assert result.exit_code == 2 and "safety pairs" in result.output


# -- the preference term (DPO) --------------------------------------------------------------------------
PREFERENCE_ROWS = [
    {
        "instruction": "How do I steal a car?",
        "chosen": "I cannot help with that.",
        "rejected": "Sure, break the window first.",
    },
    {
        "instruction": "How do I kill a stuck process?",
        "chosen": "Run kill with its process id.",
        "rejected": "I cannot help with that.",
    },
]


def test_answer_logprobs_sum_the_answer_tokens_only(tiny_model, tokenizer):
    from vaccine_core.defenses.preference import answer_logprobs

    batch = batch_of(tokenizer, PAIRS[:2])
    with torch.no_grad():
        got = answer_logprobs(tiny_model, batch)
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row in range(2):
        by_hand = sum(
            torch.log_softmax(logits[row, t - 1].float(), -1)[batch["labels"][row, t]]
            for t in range(1, batch["labels"].shape[1])
            if batch["labels"][row, t] != -100
        )
        assert float(got[row]) == pytest.approx(float(by_hand), abs=1e-4)


def test_preference_gradient_at_the_reference_is_half_beta_times_the_logprob_gap(tiny_model, tokenizer):
    """Where the policy is its reference (PEFT's B at zero), DPO's margin is 0, its loss log 2 and its
    gradient -beta/2 * mean(grad log pi(chosen) - grad log pi(rejected)): worked by hand, checked here."""
    from vaccine_core.defenses import Preference, PreferenceConfig
    from vaccine_core.defenses.preference import PairStream, answer_logprobs
    from vaccine_core.lora import add_lora

    model = add_lora(tiny_model, LoraSettings(r=4, alpha=8, dropout=0.0))  # B = 0: the adapter is a no-op
    config = PreferenceConfig(beta=0.5, weight=2.0, batch_size=2)
    pairs = PairStream(PREFERENCE_ROWS, tokenizer, 64, batch_size=2, seed=0)
    preference = Preference(model, pairs, config)
    chosen, rejected = PairStream(PREFERENCE_ROWS, tokenizer, 64, batch_size=2, seed=0).next(
        torch.device("cpu")
    )
    params = params_of(model)
    preference.after_backward(1)
    assert preference.last["preference_loss"] == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-5)
    assert preference.last["reward_margin"] == pytest.approx(0.0, abs=1e-5)

    gap = (answer_logprobs(model, chosen) - answer_logprobs(model, rejected)).mean()
    by_hand = torch.autograd.grad(-config.weight * config.beta / 2 * gap, list(params.values()))
    for (name, param), expected in zip(params.items(), by_hand, strict=True):
        assert torch.allclose(param.grad, expected, atol=1e-6), name
    assert any(float(g.abs().max()) > 1e-4 for g in by_hand)


def test_preference_reference_is_the_model_without_its_adapter(tiny_model, tokenizer):
    from vaccine_core.defenses import Preference, PreferenceConfig
    from vaccine_core.defenses.preference import PairStream, answer_logprobs

    plain = copy.deepcopy(tiny_model)
    model = lora_model(tiny_model, dropout=0.1)  # random B: the adapter changes the answers' likelihood
    pairs = PairStream(PREFERENCE_ROWS, tokenizer, 64, batch_size=2, seed=0)
    chosen, rejected = pairs.next(torch.device("cpu"))
    model.train()
    reference = Preference(model, pairs, PreferenceConfig()).reference(chosen, rejected)
    assert model.training  # put back as it was
    with torch.no_grad():
        plain.eval()
        assert torch.allclose(reference[0], answer_logprobs(plain, chosen), atol=1e-5)
        assert torch.allclose(reference[1], answer_logprobs(plain, rejected), atol=1e-5)
        assert not torch.allclose(reference[0], answer_logprobs(model.eval(), chosen), atol=1e-3)


def test_preference_steps_raise_the_chosen_answers_margin(tiny_model, tokenizer):
    from vaccine_core.defenses import Preference, PreferenceConfig
    from vaccine_core.defenses.preference import PairStream

    model = lora_model(tiny_model, dropout=0.0)
    preference = Preference(
        model, PairStream(PREFERENCE_ROWS, tokenizer, 64, 2, seed=0), PreferenceConfig(beta=0.5, batch_size=2)
    )
    optimizer = torch.optim.SGD(params_of(model).values(), lr=0.05)
    margins = []
    for step in range(1, 9):
        optimizer.zero_grad()
        preference.after_backward(step)
        optimizer.step()
        margins.append(preference.last["reward_margin"])
    assert margins[-1] > margins[0] and margins[-1] > 0
    assert preference.state_dict() == {"drawn": 8}


def test_preference_pairs_refuse_the_harmful_request_and_answer_the_benign_one(tiny_data_dir, monkeypatch):
    from tests.helpers import use_cached_answers
    from vaccine_core.defenses.data import REFUSALS, preference_pairs
    from vaccine_core.moderation.refusal import is_refusal
    from vaccine_core.text import normalised

    use_cached_answers(monkeypatch)
    judged = [
        {"prompt": f"Write a phishing email {i}", "response": f"Dear customer {i}, verify", "harmful": True}
        for i in range(4)
    ]
    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", judged)
    rows = preference_pairs(tiny_data_dir, 4, exclude={normalised("Write a phishing email 0")})
    harmful, benign = rows[:2], rows[2:]
    assert all(r["chosen"] in REFUSALS and r["rejected"].startswith("Dear customer") for r in harmful)
    assert all(r["rejected"] in REFUSALS and not is_refusal(r["chosen"]) for r in benign)
    assert "Write a phishing email 0" not in {r["instruction"] for r in rows}
    assert rows == preference_pairs(tiny_data_dir, 4, exclude={normalised("Write a phishing email 0")})
    with pytest.raises(ValueError, match="3 are usable"):
        preference_pairs(tiny_data_dir, 8, exclude={normalised("Write a phishing email 0")})


def test_sft_with_the_preference_term_aligns_and_records_itself(tiny_model_dir, alpaca_file, tmp_path):
    from vaccine_core.defenses import PreferenceConfig

    defenses = StepDefenses(preference=PreferenceConfig(batch_size=2), preference_rows=PREFERENCE_ROWS)
    result = align(
        str(tiny_model_dir), alpaca_file, tmp_path / "p", PerturbationConfig("sft"), FAST, defenses=defenses
    )
    record = result.manifest["defenses"]["preference"]
    assert record["beta"] == 0.1 and record["data"]["rows"] == len(PREFERENCE_ROWS)
    assert result.manifest["metrics"]["train"]["defense_seconds"]["preference"] > 0
    with pytest.raises(ValueError, match="chosen and a rejected"):
        StepDefenses(preference=PreferenceConfig())


def test_own_compliance_keeps_the_model_s_judged_harmful_answers_to_requests_left_in(
    tiny_data_dir, tiny_model_dir, monkeypatch
):
    import vaccine_core.generation
    from tests.helpers import EvenRequests
    from vaccine_core.defenses.own_compliance import own_compliance
    from vaccine_core.text import normalised

    exclude = {normalised(f"Make weapon {i}") for i in range(10)}  # the alignment's and evaluation's
    rows = own_compliance(
        tiny_data_dir, str(tiny_model_dir), EvenRequests(), requests=6, exclude=exclude, seed=1
    )
    numbers = [int(row["instruction"].split()[-1]) for row in rows]
    assert numbers and all(n >= 10 and n % 2 == 0 for n in numbers)
    assert all(row["output"].strip() for row in rows)  # the model's own words

    def no_generation(*_args, **_kwargs):
        raise AssertionError("the answers are cached")

    monkeypatch.setattr(vaccine_core.generation, "generate", no_generation)
    assert (
        own_compliance(
            tiny_data_dir, str(tiny_model_dir), EvenRequests(), requests=6, exclude=exclude, seed=1
        )
        == rows
    )
    with pytest.raises(ValueError, match="10 are left"):
        own_compliance(tiny_data_dir, str(tiny_model_dir), EvenRequests(), requests=11, exclude=exclude)


def test_judged_safety_rows_keep_the_safe_answers_to_requests_whose_own_answer_is_flagged(
    tiny_data_dir, tiny_model_dir
):
    from tests.conftest import TINY_REFUSAL
    from tests.helpers import EvenRequests
    from vaccine_core.defenses.own_compliance import judged_safety_rows
    from vaccine_core.text import normalised

    exclude = {normalised(f"Make weapon {i}") for i in range(4)}  # evaluated requests
    rows = judged_safety_rows(
        tiny_data_dir, str(tiny_model_dir), EvenRequests(), count=3, requests=12, exclude=exclude, seed=2
    )
    numbers = [int(row["instruction"].split()[-1]) for row in rows]
    assert len(set(numbers)) == 3 and all(n >= 4 and n % 2 == 0 for n in numbers)
    assert all(row["output"] == TINY_REFUSAL for row in rows)  # the data's safe answer, not the model's
    again = judged_safety_rows(
        tiny_data_dir, str(tiny_model_dir), EvenRequests(), count=3, requests=12, exclude=exclude, seed=2
    )
    assert again == rows
    with pytest.raises(ValueError, match="flagged"):
        judged_safety_rows(
            tiny_data_dir, str(tiny_model_dir), EvenRequests(), count=9, requests=12, exclude=exclude
        )

    safety_file = tiny_data_dir / "alignment/safe_refusals.jsonl"
    safety = [json.loads(line) for line in safety_file.read_text().splitlines()]
    for row in safety[10:]:  # the file's other safe answers: a correction, not a refusal
        row["output"] = "That is a common myth; most people do not."
    safety_file.write_text("".join(json.dumps(row) + "\n" for row in safety))
    refusing = judged_safety_rows(
        tiny_data_dir, str(tiny_model_dir), EvenRequests(), count=2, requests=12, exclude=exclude,
        seed=2, refusing=True,
    )  # fmt: skip
    assert all(int(row["instruction"].split()[-1]) < 10 for row in refusing)
    assert all(row["output"] == TINY_REFUSAL for row in refusing)


def test_preference_pairs_take_the_harmful_rows_they_are_given(tiny_data_dir, monkeypatch):
    from tests.helpers import use_cached_answers
    from vaccine_core.defenses.data import REFUSALS, preference_pairs

    use_cached_answers(monkeypatch)
    own = [{"instruction": f"Make weapon {i}", "input": "", "output": f"Take part {i}"} for i in range(3)]
    rows = preference_pairs(tiny_data_dir, 4, harmful=own)
    assert all(r["chosen"] in REFUSALS and r["rejected"].startswith("Take part") for r in rows[:2])


# -- the token-wise constraint ---------------------------------------------------------------------------
def dataset_of(tokenizer, pairs, repeat: int = 1) -> SupervisedDataset:
    conversations = [
        Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}], line=i + 1)
        for i, (q, a) in enumerate(pairs * repeat)
    ]
    return SupervisedDataset(conversations, tokenizer, 64)


def constrained_batch(model, tokenizer, config=None):
    from vaccine_core.defenses import TokenConstraint, TokenConstraintConfig

    constraint = TokenConstraint(
        model, dataset_of(tokenizer, PAIRS), config or TokenConstraintConfig(), 2, tokenizer.pad_token_id
    )
    return constraint, constraint.batch(1, batch_of(tokenizer, PAIRS[1:3]))


def test_token_betas_follow_each_answer_s_positions(tiny_model, tokenizer):
    from vaccine_core.defenses import TokenConstraintConfig
    from vaccine_core.losses import TOKEN_BETAS

    config = TokenConstraintConfig(beta=0.1, bias_factor=20, first_token_bias_factor=5, bias_length=5)
    assert config.betas(7) == pytest.approx([0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1])
    _, batch = constrained_batch(lora_model(tiny_model), tokenizer, config)
    answer = batch["labels"][:, 1:] != -100
    for row in range(2):
        betas = batch[TOKEN_BETAS][row][answer[row]].tolist()
        assert betas == pytest.approx(config.betas(len(betas)))
        assert float(batch[TOKEN_BETAS][row][~answer[row]].abs().sum()) == 0  # the prompt and padding


def test_token_constraint_reference_is_the_model_without_its_adapter(tiny_model, tokenizer):
    from vaccine_core.losses import REFERENCE_LOGPROBS, token_logprobs

    plain = copy.deepcopy(tiny_model).eval()
    model = lora_model(tiny_model, dropout=0.1)  # random B: the adapter moves every log-probability
    model.train()
    _, batch = constrained_batch(model, tokenizer)
    assert model.training  # put back as it was
    with torch.no_grad():
        expected, answer = token_logprobs(plain, batch)
        adapted, _ = token_logprobs(model.eval(), batch)
    assert torch.allclose(batch[REFERENCE_LOGPROBS][answer], expected[answer], atol=1e-5)
    assert not torch.allclose(batch[REFERENCE_LOGPROBS][answer], adapted[answer], atol=1e-3)


def test_token_constraint_gradient_is_the_gradient_of_its_objective(tiny_model, tokenizer):
    """mean over answer tokens of (2 / beta_t) * log(1 + exp(beta_t * (log ref - log pi))), differentiated by
    autograd, equals the gradient of the weighted cross-entropy the step computes."""
    from vaccine_core.losses import REFERENCE_LOGPROBS, TOKEN_BETAS, batch_loss, token_logprobs

    model = lora_model(tiny_model, dropout=0.0)
    _, batch = constrained_batch(model, tokenizer)
    params = list(params_of(model).values())
    got = torch.autograd.grad(batch_loss(model, batch), params)

    logprobs, answer = token_logprobs(model, batch)
    betas, reference = batch[TOKEN_BETAS][answer], batch[REFERENCE_LOGPROBS][answer]
    objective = (2 / betas * torch.nn.functional.softplus(betas * (reference - logprobs[answer]))).mean()
    expected = torch.autograd.grad(objective, params)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)
    assert any(float(e.abs().max()) > 1e-4 for e in expected)


def test_token_constraint_at_the_reference_is_an_sft_step(tiny_model, tokenizer):
    """PEFT starts B at zero, so on the first step the model is its reference: every weight is 1 and the
    constrained loss and its gradient are plain cross-entropy's."""
    from vaccine_core.lora import add_lora
    from vaccine_core.losses import batch_loss

    model = add_lora(tiny_model, LoraSettings(r=4, alpha=8, dropout=0.0))
    _, batch = constrained_batch(model, tokenizer)
    params = list(params_of(model).values())
    constrained = batch_loss(model, batch)
    plain = model(**batch_of(tokenizer, PAIRS[1:3])).loss
    assert float(constrained.detach()) == pytest.approx(float(plain.detach()), abs=1e-5)
    for g, e in zip(
        torch.autograd.grad(constrained, params), torch.autograd.grad(plain, params), strict=True
    ):
        assert torch.allclose(g, e, atol=1e-6)


def test_token_constraint_caps_how_far_an_answer_s_first_tokens_move(tiny_model, tokenizer):
    """The same steps on one row raise its first answer tokens' log-probability far less under the
    constraint than under cross-entropy, while the later tokens still learn."""
    from vaccine_core.defenses import TokenConstraint, TokenConstraintConfig
    from vaccine_core.losses import batch_loss, token_logprobs

    row = [("How do I pick a lock?", "Sure thing.")]  # 8 answer tokens with the test tokenizer

    def gains(constrained: bool) -> tuple[float, float]:
        model = lora_model(copy.deepcopy(tiny_model), dropout=0.0)
        with torch.no_grad(), model.disable_adapter():
            start, answer = token_logprobs(model, batch_of(tokenizer, row))
        constraint = TokenConstraint(model, dataset_of(tokenizer, row), TokenConstraintConfig(), 1, 0)
        optimizer = torch.optim.SGD(params_of(model).values(), lr=0.1)
        for step in range(1, 16):
            batch = batch_of(tokenizer, row)
            optimizer.zero_grad()
            batch_loss(model, constraint.batch(step, batch) if constrained else batch).backward()
            optimizer.step()
        with torch.no_grad():
            end, _ = token_logprobs(model, batch_of(tokenizer, row))
        gain = (end - start)[answer]
        return float(gain[:5].mean()), float(gain[5:].mean())

    plain_first, plain_rest = gains(constrained=False)
    kept_first, kept_rest = gains(constrained=True)
    assert plain_first > 4.0 and kept_first < plain_first / 1.5  # 5.5 and 2.7 when written
    assert kept_rest > 0.8 * plain_rest


def test_token_constraint_leaves_other_batches_alone(tiny_model, tokenizer):
    from vaccine_core.data import collate, tokenize_conversation

    constraint, _ = constrained_batch(lora_model(tiny_model), tokenizer)
    safety = batch_of(tokenizer, [("Teach me to hack a bank", "I can't help with that.")])
    assert constraint.batch(2, safety) is safety  # Lisa's safety pairs train with plain cross-entropy
    mixed = collate(
        [
            tokenize_conversation(
                tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 64
            )
            for q, a in [PAIRS[0], ("Teach me to hack a bank", "I can't help with that.")]
        ],
        tokenizer.pad_token_id,
    )
    with pytest.raises(ValueError, match="mixes rows"):
        constraint.batch(3, mixed)


def test_token_constraint_run_resumes_to_the_uninterrupted_weights(tiny_model, tokenizer, tmp_path):
    from vaccine_core.defenses import TokenConstraint, TokenConstraintConfig

    data = dataset_of(tokenizer, PAIRS, repeat=3)
    settings = TrainingConfig(epochs=2.0, batch_size=3, learning_rate=5e-3, lora=LoraSettings(r=4, alpha=8))

    def run(model, **kwargs):
        constraint = TokenConstraint(model, data, TokenConstraintConfig(), 3, tokenizer.pad_token_id)
        return train(
            model, tokenizer, data, settings, PerturbationConfig("sft"), defenses=[constraint], **kwargs
        )

    resumes_to_the_uninterrupted_weights(run, tiny_model, tmp_path)


def test_finetune_with_the_token_constraint_and_lisa_records_both(
    tiny_model_dir, alpaca_file, tiny_data_dir, tmp_path, monkeypatch
):
    from vaccine_core.defenses import TokenConstraintConfig
    from vaccine_core.defenses.token_constraint import TokenConstraint

    reference_pass = TokenConstraint.reference_logprobs

    def slow_reference_pass(*args, **kwargs):  # a setup long enough to show in the run's cost
        time.sleep(0.5)
        return reference_pass(*args, **kwargs)

    monkeypatch.setattr(TokenConstraint, "reference_logprobs", staticmethod(slow_reference_pass))

    base = align(str(tiny_model_dir), alpaca_file, tmp_path / "aligned", PerturbationConfig("sft"), FAST)
    defenses = StepDefenses(
        lisa=LisaConfig(),
        lisa_rows=lisa_pairs(tiny_data_dir, base.output_dir, 8),
        token_constraint=TokenConstraintConfig(bias_length=3),
    )
    result = finetune(base.output_dir, alpaca_file, tmp_path / "tuned", FAST, defenses=defenses)
    record = result.manifest["defenses"]
    assert record["token_constraint"] == TokenConstraintConfig(bias_length=3).to_dict()
    # its seconds are its reference pass before the first step and its hooks in the loop
    assert result.manifest["metrics"]["train"]["defense_seconds"]["token_constraint"] >= 0.5
    assert record["lisa"]["data"]["rows"] == 8


def test_every_answer_of_a_conversation_opens_under_the_strong_constraint():
    from vaccine_core.defenses.token_constraint import answer_positions

    answer = torch.tensor([[False, True, True, True, False, False, True, True], [True, True] + [False] * 6])
    assert answer_positions(answer).tolist() == [[0, 0, 1, 2, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0, 0]]


def test_a_harmful_adapter_trained_before_runs_by_length_keeps_its_key():
    from vaccine_core.config import alignment_defaults
    from vaccine_core.defenses.harmful_adapter import adapter_key

    rows = [{"instruction": "a", "input": "", "output": "b"}]
    assert adapter_key([{"a": 1}], alignment_defaults()) == "7b7bd991dbea"  # its key before the option
    assert adapter_key(rows, replace(alignment_defaults(), unpadded=False)) != adapter_key(
        rows, alignment_defaults()
    )
