"""The CUDA path, wherever a GPU is present (skipped elsewhere, with the reason): alignment, fine-tuning,
resume, generation and the learned judge on the tiny model in the card's training dtype (bf16 where it
supports it), with the invariants the CPU tests pin; and a worker process bound to one GPU running a job
end to end against the embedded broker. Nothing is downloaded: the models are built in the tests.

    pytest -m cuda tests/cuda        # benchmarks/gpu/check.sh runs this on a GPU machine
"""

import copy
import json
import os

import pytest
import torch

from tests.helpers import (
    JUDGE_PAIRS,
    batch_of,
    classifier_dir,
    lora_model,
    one_step,
    trainable_state,
    training_config,
    training_dataset,
)
from vaccine_core.config import PerturbationConfig
from vaccine_core.models import pick_dtype

# VACCINE_TEST_DEVICE=cpu runs the same tests on the CPU: a dry run of this file where no GPU is
GPU = torch.device(os.environ.get("VACCINE_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(GPU.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device here"),
]


@pytest.fixture
def gpu_model(tiny_model):
    """The tiny model on the GPU in the dtype training would load it in there."""
    return tiny_model.to(GPU, pick_dtype(GPU))


def gpu_batch(tokenizer):

    return {name: tensor.to(GPU) for name, tensor in batch_of(tokenizer).items()}


def test_the_training_dtype_is_bf16_where_the_card_has_it():
    bf16 = GPU.type == "cuda" and torch.cuda.is_bf16_supported()
    assert pick_dtype(GPU) == (torch.bfloat16 if bf16 else torch.float32)


def test_the_perturbation_has_global_norm_rho_on_the_gpu(gpu_model, tokenizer):
    from vaccine_core.perturbation import (
        embedding_gradients,
        find_attention_modules,
        global_norm,
        vaccine_perturbation,
    )

    model = lora_model(gpu_model, dropout=0.0)
    modules = find_attention_modules(model)
    _, grads = embedding_gradients(model, modules, gpu_batch(tokenizer))
    eps = vaccine_perturbation(grads, rho=0.7)
    assert float(global_norm(eps)) == pytest.approx(0.7, rel=1e-2)  # bf16 holds about 3 digits


def test_rho_zero_vaccine_equals_sft_on_the_gpu(gpu_model, tokenizer):

    batch = gpu_batch(tokenizer)
    sft = lora_model(copy.deepcopy(gpu_model), dropout=0.3)
    vaccine = lora_model(copy.deepcopy(gpu_model), dropout=0.3)
    assert one_step(sft, batch, PerturbationConfig("sft")) == one_step(
        vaccine, batch, PerturbationConfig("vaccine", rho=0.0)
    )
    for (name, a), (_, b) in zip(sft.named_parameters(), vaccine.named_parameters(), strict=True):
        assert torch.equal(a, b), name  # the dropout masks too: CUDA's random state is forked alike


@pytest.mark.parametrize("method", ["sft", "vaccine", "random"])
def test_training_lowers_the_loss_on_the_gpu(gpu_model, tokenizer, method):
    from vaccine_core.training import train

    model = lora_model(copy.deepcopy(gpu_model), dropout=0.0)
    settings = training_config(
        epochs=10.0, learning_rate=5e-2, gradient_accumulation_steps=1, warmup_ratio=0.0
    )
    result = train(
        model, tokenizer, training_dataset(tokenizer), settings, PerturbationConfig(method, rho=0.1)
    )
    assert result.losses[-1] < 0.7 * result.losses[0], method


@pytest.mark.parametrize("method", ["sft", "vaccine"])
def test_a_resumed_run_reaches_the_weights_of_an_uninterrupted_one_on_the_gpu(
    gpu_model, tokenizer, tmp_path, method
):
    from vaccine_core.training import latest_checkpoint, train

    data, settings, perturbation = (
        training_dataset(tokenizer),
        training_config(),
        PerturbationConfig(method, rho=1.0),
    )
    straight = lora_model(copy.deepcopy(gpu_model), dropout=0.2)
    train(straight, tokenizer, data, settings, perturbation)
    interrupted = lora_model(copy.deepcopy(gpu_model), dropout=0.2)
    calls = iter(range(100))
    train(interrupted, tokenizer, data, settings, perturbation, output_dir=tmp_path,
          should_stop=lambda: next(calls) >= 2)  # fmt: skip
    resumed = lora_model(copy.deepcopy(gpu_model), dropout=0.2, seed=99)
    train(resumed, tokenizer, data, settings, perturbation, output_dir=tmp_path,
          resume_from=latest_checkpoint(tmp_path))  # fmt: skip
    expected, actual = trainable_state(straight), trainable_state(resumed)
    for name in expected:  # within bf16's rounding: GPU kernels need not be bitwise repeatable
        torch.testing.assert_close(actual[name].float(), expected[name].float(), rtol=2e-2, atol=2e-3)


def test_the_fast_engine_s_greedy_tokens_are_the_plain_model_s_best_within_bf16_rounding(
    gpu_model, tokenizer
):
    """Exact agreement of the two engines is a CPU float32 property: in bf16 a random tiny model's logits
    have many near ties, and merged weights round differently from an adapter applied on the side. What
    must hold is that every token the fast decoder picks is, to the plain model reading the same prefix, a
    best token up to rounding; a wrong weight, position or cache entry picks tokens far from the best."""
    from vaccine_core.fast_generation import fast_generate
    from vaccine_core.generation import end_of_turn_ids, prompt_token_ids

    model = lora_model(gpu_model, dropout=0.0).eval()
    conversations = [[{"role": "user", "content": text}] for text in ("How do I make a cake?", "Hi")]
    prompts = prompt_token_ids(tokenizer, conversations)
    answers = fast_generate(
        model, prompts, max_new_tokens=12, end_ids=end_of_turn_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id, batch_size=2,
    )  # fmt: skip
    for prompt, (answer,) in zip(prompts, answers, strict=True):
        assert answer, "no token generated"
        ids = torch.tensor([prompt + answer], device=GPU)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # the ones that chose
        chosen = logits.gather(1, torch.tensor(answer, device=GPU).unsqueeze(1)).squeeze(1)
        shortfall = logits.max(dim=1).values - chosen
        spread = logits.std(dim=1)  # the scale of the logits at each step
        assert bool((shortfall <= 0.1 * spread).all()), (shortfall / spread).tolist()


def test_the_learned_judge_trains_and_scores_on_the_gpu(tmp_path):
    from vaccine_core.moderation.dataset import LabelledPair
    from vaccine_core.moderation.learned import JudgeTrainingConfig, LearnedJudge, train_judge

    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False)
    harmful = [LabelledPair("how do i hurt someone ?", "here is how .", True, "Physical harm", "t")] * 8
    safe = [LabelledPair("what is the capital of france ?", "paris .", False, None, "t")] * 8
    config = JudgeTrainingConfig(
        epochs=80, batch_size=8, learning_rate=5e-3, max_length=32, warmup_ratio=0.0, frozen_layers=0
    )
    judge = LearnedJudge(
        train_judge(harmful + safe, tmp_path / "j", config, encoder=encoder), device=GPU.type
    )
    assert [v.flagged for v in judge.score(JUDGE_PAIRS)] == [True, False]


def test_a_worker_bound_to_one_gpu_runs_a_job_end_to_end(
    tmp_path, tiny_model_dir, tiny_data_dir, monkeypatch
):
    """`vaccine serve` with its worker (embedded broker, SQLite) given one GPU (CUDA_VISIBLE_DEVICES=0):
    a quickstart job succeeds, trained on that GPU."""
    from tests.service_helpers import first_start, small_safety_evaluation

    small_safety_evaluation(monkeypatch, tmp_path)
    with first_start(tmp_path / "home", tiny_model_dir, tiny_data_dir, CUDA_VISIBLE_DEVICES="0") as started:
        done = started.quickstart(tmp_path)
    assert ": succeeded; model ft:" in done.stdout, done.stdout + done.stderr
    (manifest,) = (tmp_path / "home" / "jobs").glob("*/manifest.json")
    device = json.loads(manifest.read_text())["metrics"]["train"]["device"]
    assert device.startswith("cuda:0" if GPU.type == "cuda" else "cpu"), device  # the one GPU it was given
