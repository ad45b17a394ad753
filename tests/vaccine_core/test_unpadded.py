"""vaccine_core/unpadded.py: a batch run as runs of similar length, with the whole batch's dropout masks,
trains the judge and the gate as the whole batch does (the LoRA steps' check is in test_training.py)."""

import itertools
import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import vaccine_core.moderation.learned as learned
from tests.helpers import JUDGE_WORDS, classifier_dir
from vaccine_core.moderation.bit_dropout import bit_dropout
from vaccine_core.moderation.dataset import LabelledPair
from vaccine_core.moderation.intent import INTENT_FILE, IntentTrainingConfig, train_intent
from vaccine_core.moderation.judge_config import JudgeTrainingConfig
from vaccine_core.moderation.learned import train_judge
from vaccine_core.unpadded import length_runs, replayed


def test_runs_pad_the_fewest_tokens_each_run_counted_at_its_cost():
    lengths = [5, 30, 6, 31, 7]
    # three short pairs and two long: 3 * 7 + 2 * 31 + 2 * 10 tokens, against 5 * 31 + 10 as one run
    assert length_runs(lengths, run_cost=10) == [[0, 2, 4], [1, 3]]
    assert length_runs(lengths, run_cost=1000) == [[0, 2, 4, 1, 3]]  # shortest first
    free = length_runs(lengths, run_cost=0)
    assert sum(len(run) * max(lengths[i] for i in run) for run in free) == sum(lengths)  # no padding left
    assert sorted(i for run in free for i in run) == list(range(5))


def padded_cost(lengths, runs, run_cost):
    return sum(len(run) * max(lengths[i] for i in run) + run_cost for run in runs)


@pytest.mark.parametrize("seed", range(20))
def test_no_other_cut_of_the_sorted_pairs_costs_less(seed):
    draw = random.Random(seed)
    lengths = [draw.randint(3, 128) for _ in range(draw.randint(1, 9))]
    run_cost = draw.choice([0, 7, 20, 60])
    runs = length_runs(lengths, run_cost)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    cheapest = min(  # every way to cut the sorted pairs into contiguous runs
        padded_cost(
            lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True)], run_cost
        )
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
    )
    assert padded_cost(lengths, runs, run_cost) == cheapest


def ones_through_sites(rows: int, tokens: int) -> list[torch.Tensor]:
    """Which elements bit_dropout keeps at the encoder's three kinds of site, in a forward's order."""
    shapes = [(rows, tokens, 8), (rows, 2, tokens, tokens), (rows, 8)]
    return [bit_dropout(torch.ones(shape), 0.5) != 0 for shape in shapes]


def test_a_run_s_masks_are_the_whole_batch_s_at_its_rows_cut_to_its_length():
    torch.manual_seed(3)
    whole = ones_through_sites(4, 6)
    torch.manual_seed(3)
    with replayed(4, 6) as masks:
        with masks.run([2, 0], 3):
            short = ones_through_sites(2, 3)
        with masks.run([1, 3], 6):
            long = ones_through_sites(2, 6)
        with masks.run([1], 6), pytest.raises(ValueError, match="no dropout site"):
            bit_dropout(torch.ones(1, 5, 8), 0.5)  # five tokens in a run of six
    for site, (drawn, first, second) in enumerate(zip(whole, short, long, strict=True)):
        cut = [slice(None)] * drawn.dim()
        if site == 0:
            cut[1] = slice(0, 3)
        if site == 1:
            cut[2] = cut[3] = slice(0, 3)
        assert torch.equal(first, drawn[[2, 0]][tuple(cut)])
        assert torch.equal(second, drawn[[1, 3]])
    # outside a replay every draw is fresh again
    assert not torch.equal(ones_through_sites(4, 6)[0], whole[0])


def pairs_of_many_lengths() -> list[LabelledPair]:
    words = random.Random(0)
    pairs = []
    for k in range(24):
        question = " ".join(words.choice(JUDGE_WORDS) for _ in range(words.randint(2, 6))) + " ?"
        answer = " ".join(words.choice(JUDGE_WORDS) for _ in range(words.randint(1, 25))) + " ."
        pairs.append(LabelledPair(question, answer, k % 2 == 0, None, "t"))
    return pairs


def largest_difference(first, second) -> float:
    one = AutoModelForSequenceClassification.from_pretrained(first).state_dict()
    two = AutoModelForSequenceClassification.from_pretrained(second).state_dict()
    return max((one[name] - two[name]).abs().max().item() for name in one)


@pytest.mark.parametrize(
    ("bit_masks", "bfloat16", "within"),
    [
        (True, False, 1e-6),  # the float rounding of products of other shapes
        (True, True, 0.0),  # under bfloat16 the batches stay whole (runs there trained another judge)
        (False, False, 0.0),  # torch's masks cannot be replayed: the batches stay whole
    ],
)
def test_the_judge_trained_by_runs_is_the_judge_trained_whole(
    tmp_path, monkeypatch, counted_runs, bit_masks, bfloat16, within
):
    monkeypatch.setattr(learned, "train_in_bfloat16", lambda model, batch, kind="judge": bfloat16)
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=2)
    judges = {}
    for runs in (True, False):
        config = JudgeTrainingConfig(
            epochs=2, batch_size=8, max_length=40, frozen_layers=1, unpadded=runs, bit_dropout=bit_masks
        )
        judges[runs] = train_judge(pairs_of_many_lengths(), tmp_path / f"j{runs}", config, encoder=encoder)
    # every batch as several runs, or none
    assert (min(counted_runs) > 1) if bit_masks and not bfloat16 else not counted_runs
    assert largest_difference(judges[True], judges[False]) <= within
    # and each judge says how its batches ran, which its options alone do not
    recorded = {runs: json.loads((j / "judge.json").read_text())["length_runs"] for runs, j in judges.items()}
    assert recorded == {True: bit_masks and not bfloat16, False: False}


@pytest.mark.parametrize("bfloat16", [False, True])
def test_the_gate_trained_by_runs_is_the_gate_trained_whole(tmp_path, monkeypatch, counted_runs, bfloat16):
    monkeypatch.setattr(learned, "train_in_bfloat16", lambda model, batch, kind="judge": bfloat16)
    encoder = classifier_dir(tmp_path, ["a", "b"], [0.0, 0.0], multi_label=False, layers=2)
    requests = [(pair.question + " " + pair.answer, pair.harmful) for pair in pairs_of_many_lengths()]
    gates = {}
    for whole in (False, True):
        config = IntentTrainingConfig(
            epochs=2, batch_size=8, max_length=40, bfloat16=True, unpadded=not whole
        )
        gates[whole] = train_intent(requests, requests[:4], tmp_path / f"g{whole}", config, encoder=encoder)
    # in float32 every batch as several runs, within rounding; under bfloat16 the batches stay whole
    assert (min(counted_runs) > 1) if not bfloat16 else not counted_runs
    assert largest_difference(gates[False], gates[True]) <= (1e-6 if not bfloat16 else 0.0)
    recorded = {whole: json.loads((g / INTENT_FILE).read_text())["length_runs"] for whole, g in gates.items()}
    assert recorded == {False: not bfloat16, True: False}


def test_runs_keep_the_judge_s_and_the_gate_s_keys():
    assert JudgeTrainingConfig(unpadded=True).key() == "d841b118"
    assert JudgeTrainingConfig(unpadded=False).key() != "d841b118"
    assert IntentTrainingConfig(unpadded=True).key() == "b75ee221"


def test_replayed_dropout_is_torch_s_dropout_outside_a_replay_and_its_whole_batch_mask_inside():
    from torch import nn

    from vaccine_core.unpadded import ReplayedDropout, use_replaying_dropout

    model = use_replaying_dropout(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.3))).train()
    assert isinstance(model[1], ReplayedDropout)
    inputs = torch.randn(4, 6, 8)
    torch.manual_seed(5)
    whole = nn.functional.dropout(inputs, 0.3, True)
    torch.manual_seed(5)
    assert torch.equal(model[1](inputs), whole)  # outside a replay: nn.Dropout, draw for draw
    torch.manual_seed(5)
    with replayed(4, 6) as masks:
        with masks.run([3, 1], 2):
            short = model[1](inputs[[3, 1], :2])
        with masks.run([0, 2], 6):
            long = model[1](inputs[[0, 2]])
    assert torch.equal(short, whole[[3, 1], :2]) and torch.equal(long, whole[[0, 2]])
    assert torch.equal(model.eval()[1](inputs), inputs)
