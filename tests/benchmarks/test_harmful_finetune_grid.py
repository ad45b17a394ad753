"""The regime grid reads harmful_finetune results files and compares a Vaccine arm with SFT per cell."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import harmful_finetune_grid as grid


def cell(hs: float, fa: float, steps: int = 20) -> dict:
    values = {"hs": hs, "fa": fa, "hs_refusal_judge": hs + 10, "empty_answers": 0.0, "over_refusal": 0.0}
    values["drift"] = 4.0
    return {
        "seeds": [0, 1],
        **{m: {"mean": v, "std": 1.0, "values": [v - 1, v + 1]} for m, v in values.items()},
        "runs": [{"seed": s, "train": {"steps": steps}} for s in (0, 1)],
    }


def results(attack_lr: float, cells: dict[str, dict[str, dict]], alignment_steps: int | None = 40) -> dict:
    return {
        "arms": {
            name: {
                "arm": {"method": name.split("-")[0]},
                "alignment_train": None if alignment_steps is None else {"steps": alignment_steps},
                "before_finetuning": {"hs": 25.0},
                "cells": arm_cells,
            }
            for name, arm_cells in cells.items()
        },
        "sizes": {
            "alignment_safety": 48, "alignment_helpful": 48, "alignment_epochs": 2, "alignment_lr": 1e-3,
            "attack_n": 40, "attack_epochs": 2, "attack_lr": attack_lr, "attack_lora_alpha": 8,
        },
        "command": f"python benchmarks/harmful_finetune.py --attack-lr {attack_lr:g}",
        "date": "2026-11-28T01:00:00+00:00",
        "machine": {"cpu_count": 2},
    }  # fmt: skip


def test_rows_compare_vaccine_with_sft_in_the_same_cell():
    measured = results(
        5e-4,
        {
            "sft": {"0.1": cell(60.0, 64.0), "0.2": cell(55.0, 64.0)},
            "vaccine-rho2": {"0.1": cell(40.0, 63.0), "0.2": cell(50.0, 60.0)},
        },
    )
    rows = grid.rows(Path("a.json"), measured, "sft", "vaccine-rho2")
    assert [(r["p"], r["hs_gap"], r["fa_gap"], r["target_met"]) for r in rows] == [
        ("0.1", 20.0, -1.0, True),
        ("0.2", 5.0, -4.0, False),  # neither the HS margin nor the FA tolerance
    ]
    assert rows[0]["alignment"]["steps"] == "40" and rows[0]["attack"]["steps"] == 20
    # an older file without the recorded alignment steps: estimated from the sizes, and marked so
    older = results(5e-4, {"sft": {"0.1": cell(1, 1)}, "vaccine-rho2": {"0.1": cell(1, 1)}}, None)
    assert grid.rows(Path("b.json"), older, "sft", "vaccine-rho2")[0]["alignment"]["steps"] == "~40"
    # a file without both arms adds no rows
    assert (
        grid.rows(Path("c.json"), results(5e-4, {"vaccine-rho2": {"0.1": cell(1, 1)}}), "sft", "vaccine-rho2")
        == []
    )


def test_main_writes_every_row_of_every_file(tmp_path, monkeypatch):
    files = []
    for lr, vaccine_hs in ((1e-4, 30.0), (1e-3, 70.0)):
        path = tmp_path / f"harmful_finetune-lr{lr:g}.json"
        measured = results(
            lr, {"sft": {"0.1": cell(60.0, 64.0)}, "vaccine-rho2": {"0.1": cell(vaccine_hs, 64.0)}}
        )
        path.write_text(json.dumps(measured))
        files.append(str(path))
    (tmp_path / "other.json").write_text(json.dumps([{"not": "a benchmark"}]))
    monkeypatch.setattr(grid, "RESULTS", tmp_path / "out")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(sys, "argv", ["grid", *files, str(tmp_path / "other.json"), "--name", "g"])
    grid.main()

    written = json.loads((tmp_path / "out" / "g.json").read_text())
    assert [(r["attack"]["lr"], r["target_met"]) for r in written] == [(1e-4, True), (1e-3, False)]
    text = (tmp_path / "out" / "g.md").read_text()
    assert (
        "| 40 (2) | 0.0001 | 20 (2) | 0.1 | 25.0 / 25.0 | 60.0 ± 1.0 / 64.0 ± 1.0 | 30.0 ± 1.0 / 64.0 ± 1.0 "
        in text
    )
    assert "| +30.0 / +0.0 | met |" in text and "| -10.0 / +0.0 | not met |" in text
    assert "--attack-lr 0.001" in text
    assert (tmp_path / "out" / "g.png").stat().st_size > 0
