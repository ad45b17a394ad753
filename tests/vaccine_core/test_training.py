import copy

import pytest
import torch

from tests.helpers import PAIRS, lora_model, trainable_state, training_config, training_dataset
from vaccine_core.config import PerturbationConfig, TrainingConfig
from vaccine_core.evaluation import mean_loss
from vaccine_core.formats import Conversation
from vaccine_core.training import CHECKPOINTS_DIR, latest_checkpoint, plan_steps, train


def test_plan_counts_steps_over_epochs_and_accumulation():
    assert plan_steps(12, training_config()) == (4, 4)  # 4 micro-batches an epoch, 2 per step, 2 epochs
    assert plan_steps(12, training_config(max_steps=3)) == (4, 3)
    assert plan_steps(13, training_config(epochs=1.0, gradient_accumulation_steps=1)) == (5, 5)


@pytest.mark.parametrize(
    "perturbation", [PerturbationConfig("vaccine", rho=1.0, tau=3), PerturbationConfig("sft")]
)
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    tiny_model, tokenizer, tmp_path, perturbation
):
    data = training_dataset(tokenizer)
    settings = training_config()

    straight = lora_model(copy.deepcopy(tiny_model), dropout=0.2)
    full = train(straight, tokenizer, data, settings, perturbation)
    assert full.steps == full.total_steps == 4

    interrupted = lora_model(copy.deepcopy(tiny_model), dropout=0.2)
    calls = iter(range(100))
    first = train(
        interrupted,
        tokenizer,
        data,
        settings,
        perturbation,
        output_dir=tmp_path,
        should_stop=lambda: next(calls) >= 2,
    )
    assert first.cancelled and first.steps == 2
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "step-000002"
    assert (checkpoint / "adapter_model.safetensors").is_file()  # usable as a PEFT adapter too

    # a fresh process would build a new model with another adapter initialisation: resume must not care
    resumed_model = lora_model(copy.deepcopy(tiny_model), dropout=0.2, seed=99)
    torch.manual_seed(12345)  # and another global random state
    second = train(
        resumed_model, tokenizer, data, settings, perturbation, output_dir=tmp_path, resume_from=checkpoint
    )
    assert second.steps == 4 and not second.cancelled
    assert second.losses == pytest.approx(full.losses, rel=0, abs=0)
    expected, actual = trainable_state(straight), trainable_state(resumed_model)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_progress_reports_and_periodic_checkpoints(tiny_model, tokenizer, tmp_path):
    events = []
    model = lora_model(tiny_model)
    result = train(
        model,
        tokenizer,
        training_dataset(tokenizer),
        training_config(checkpoint_every=2),
        PerturbationConfig("vaccine", rho=0.5),
        output_dir=tmp_path,
        on_progress=events.append,
    )
    assert [e.step for e in events] == [1, 2, 3, 4] and all(e.total_steps == 4 for e in events)
    assert events[0].learning_rate == 0.0  # warm-up starts at zero
    assert max(e.learning_rate for e in events) == pytest.approx(5e-3)
    assert all(e.tokens_per_second > 0 and e.loss > 0 for e in events)
    assert events[-1].eta_seconds == 0
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS_DIR).iterdir()) == ["step-000002", "step-000004"]
    assert result.last_checkpoint.name == "step-000004"


def test_training_lowers_the_loss_for_every_method(tiny_model, tokenizer):
    data = training_dataset(tokenizer)
    for method in ("sft", "vaccine", "random"):
        model = lora_model(copy.deepcopy(tiny_model), dropout=0.0)
        result = train(
            model,
            tokenizer,
            data,
            training_config(epochs=10.0, learning_rate=5e-2, gradient_accumulation_steps=1, warmup_ratio=0.0),
            PerturbationConfig(method, rho=0.1),
        )
        assert result.losses[-1] < 0.7 * result.losses[0], method


def test_cancel_before_the_first_step_trains_nothing(tiny_model, tokenizer, tmp_path):
    model = lora_model(tiny_model)
    before = trainable_state(model)
    result = train(
        model,
        tokenizer,
        training_dataset(tokenizer),
        training_config(),
        output_dir=tmp_path,
        should_stop=lambda: True,
    )
    assert result.cancelled and result.steps == 0 and latest_checkpoint(tmp_path) is None
    assert all(torch.equal(before[n], p) for n, p in trainable_state(model).items())


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="batch_size"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ValueError, match="rho"):
        PerturbationConfig("vaccine", rho=-1.0)
    with pytest.raises(ValueError, match="method"):
        PerturbationConfig("magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tau"):
        PerturbationConfig("vaccine", tau=0)


def test_validation_during_training_changes_nothing_and_lands_on_its_steps(tiny_model, tokenizer):
    from vaccine_core.training import validation_steps

    assert validation_steps(6, 5) == {1, 2, 4, 5, 6} and validation_steps(3, 1) == {3}
    data = training_dataset(tokenizer)
    plain = lora_model(copy.deepcopy(tiny_model), dropout=0.2)
    train(plain, tokenizer, data, training_config(), PerturbationConfig("sft"))
    watched = lora_model(copy.deepcopy(tiny_model), dropout=0.2)
    held_out = [
        Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}], 1)
        for q, a in PAIRS
    ]

    def validate() -> float:  # a real forward pass over the model being trained
        return mean_loss(watched, tokenizer, held_out)

    result = train(
        watched,
        tokenizer,
        data,
        training_config(),
        PerturbationConfig("sft"),
        validate=validate,
        validation_count=2,
    )
    assert sorted(result.validation_losses) == [2, 4] and all(
        v > 0 for v in result.validation_losses.values()
    )
    expected, actual = trainable_state(plain), trainable_state(watched)
    assert all(torch.equal(expected[n], actual[n]) for n in expected)


@pytest.mark.parametrize(
    ("perturbation", "replayed_masks"),
    [
        (PerturbationConfig("sft"), True),
        (PerturbationConfig("sft"), False),
        (PerturbationConfig("vaccine", rho=1.0), True),
        (PerturbationConfig("vaccine", rho=1.0, tau=3), True),
        (PerturbationConfig("vaccine", rho=1.0), False),
    ],
)
def test_steps_by_runs_of_similar_length_train_the_whole_batches_weights(
    tiny_model, tokenizer, monkeypatch, counted_runs, perturbation, replayed_masks
):
    from vaccine_core.unpadded import MaskReplay

    if not replayed_masks:  # each run draws masks of its own: how far that alone moves the weights
        monkeypatch.setattr(MaskReplay, "mask", lambda self, shape, draw: draw(tuple(shape)))
    trained = {}
    for unpadded in (True, False):
        model = lora_model(copy.deepcopy(tiny_model), dropout=0.2)
        config = training_config(unpadded=unpadded, epochs=4.0)
        result = train(model, tokenizer, training_dataset(tokenizer), config, perturbation)
        trained[unpadded] = trainable_state(model), result.losses
    assert counted_runs and min(counted_runs) > 1  # every batch ran as several runs
    (by_runs, by_runs_losses), (whole, whole_losses) = trained[True], trained[False]
    difference = max((by_runs[name] - whole[name]).abs().max().item() for name in whole)
    if replayed_masks:
        assert difference < 1e-6  # the float rounding of products of other shapes
        assert by_runs_losses == pytest.approx(whole_losses, rel=1e-6)
    else:
        assert difference > 1e-4


def test_a_vaccine_step_by_runs_with_rho_zero_is_an_sft_step_by_runs(tiny_model, tokenizer, counted_runs):
    states = []
    for perturbation in (PerturbationConfig("vaccine", rho=0.0), PerturbationConfig("sft")):
        model = lora_model(copy.deepcopy(tiny_model), dropout=0.2)
        train(model, tokenizer, training_dataset(tokenizer), training_config(), perturbation)
        states.append(trainable_state(model))
    assert counted_runs and min(counted_runs) > 1
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


def test_the_random_ablation_keeps_its_batches_whole(tiny_model, tokenizer, counted_runs):
    model = lora_model(copy.deepcopy(tiny_model))
    config = training_config(max_steps=1)
    train(model, tokenizer, training_dataset(tokenizer), config, PerturbationConfig("random", rho=0.1))
    assert not counted_runs
