"""The separability read: its ROC area, the base target's operating point, and its probe."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from request_separability import auc, fit_probe, operating_point, out_of_fold, training_requests, words_bound

from vaccine_core.moderation.framed import framed_requests
from vaccine_core.settings import get_settings


def test_the_roc_area_counts_pairs_in_order_and_ties_as_half():
    assert auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auc([1.0], [1.0]) == 0.5
    assert auc([2.0, 0.0], [1.0]) == 0.5


def test_the_operating_point_refuses_at_most_a_fifth_of_borderline_prompts():
    borderline = [i / 10 for i in range(10)]  # 0.0 .. 0.9
    harmful = [0.75, 0.85, 0.95, 0.5]
    point = operating_point(harmful, borderline, harmless=[0.0, 0.95])
    # 2 of 10 borderline prompts (0.8, 0.9) may be refused, so the threshold lies just above 0.7
    assert point["at_borderline_20"] == {
        "harmful_refused": 0.75,
        "borderline_refused": 0.2,
        "harmless_refused": 0.5,
    }
    # refusing 80 % of 5 harmful prompts (4) takes the 4th highest score as the threshold
    point = operating_point([0.9, 0.8, 0.7, 0.6, 0.1], borderline, harmless=[0.0])
    assert point["at_harmful_80"]["harmful_refused"] == 0.8
    assert point["at_harmful_80"]["borderline_refused"] == pytest.approx(0.4)  # 0.6 .. 0.9


def test_the_probe_separates_what_is_separable_and_its_folds_never_score_their_own_rows():
    generator = torch.Generator().manual_seed(0)
    harmful = torch.randn(40, 8, generator=generator) + torch.tensor([3.0] + [0.0] * 7)
    harmless = torch.randn(40, 8, generator=generator)
    states, labels = torch.cat([harmful, harmless]), torch.tensor([1] * 40 + [0] * 40)
    scores = fit_probe(states, labels)(states)
    assert auc(scores[:40].tolist(), scores[40:].tolist()) > 0.95
    noise = torch.randn(80, 8, generator=generator)  # labels unrelated to the states
    held_out = out_of_fold(noise, labels, seed=0)
    assert auc(held_out[:40].tolist(), held_out[40:].tolist()) < 0.75  # no fold saw its own rows


def test_words_alone_separate_prompts_that_differ_only_in_wording():
    harmful = [f"Write a script that does thing {i}" for i in range(20)]
    borderline = [f"Describe the history of topic {i}" for i in range(20)]
    read = words_bound(harmful, borderline, ["Write a poem"], seed=0)
    assert read["auc_harmful_vs_borderline"] == 1.0
    assert read["words"] == len({w for t in harmful + borderline for w in t.lower().split() if w.isalpha()})


@pytest.mark.skipif(not (get_settings().data_dir / "eval").is_dir(), reason="needs ../shared/data")
def test_the_written_pairs_join_the_labelled_requests_or_stand_alone():
    data_dir = get_settings().data_dir
    harmful, harmless = training_requests(data_dir, 0)
    both = training_requests(data_dir, 0, framed=True)
    alone = training_requests(data_dir, 0, framed=True, labelled=False)
    written = framed_requests()
    assert alone == ([t for t, h in written if h], [t for t, h in written if not h])
    assert both == (harmful + alone[0], harmless + alone[1])  # the labelled draw is the same either way
