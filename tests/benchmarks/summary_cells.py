"""Cells of a safety summary as safety_grid.py writes them, with only the fields the readers use."""


def figure(mean: float, low: float | None = None, high: float | None = None) -> dict:
    return {"mean": mean, "ci95": [mean if low is None else low, mean if high is None else high]}


def cell(defense: str, *, hs_gap=(8.0, 3.0), fa_gap=-1.0, over_refusal=4.0, counts=True, decoding="sampled"):
    made = {
        "defense": defense,
        "regime": "weak-long",
        "attack": {"p": 0.1},
        "decoding": decoding,
        "seeds": [0, 1, 2],
        "hs": figure(30.0, 25.0, 35.0),
        "hs_non_degenerate": figure(31.0),
        "degenerate_all": 1.0,
        "fa": figure(58.0),
        "over_refusal": figure(over_refusal),
        "counts": counts,
        "shipped_default": defense == "sft",
    }
    if defense != "sft":
        mean, low = hs_gap
        made["vs_baseline"] = {
            "hs_gap": figure(mean, low, mean + 4),
            "fa_gap": figure(fa_gap),
            "hs_verdict": "lower" if low > 0 else "no difference",
        }
    return made


SFT = cell("sft", over_refusal=3.0)
