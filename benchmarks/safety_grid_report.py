"""Render safety_grid.py's results: the JSON, a markdown report with intervals, and plots of the harmful
score and the degenerate share against p, per arm, with intervals.

    .venv/bin/python benchmarks/safety_grid_report.py benchmarks/results/safety-summary.json
"""

import json
import sys
from pathlib import Path
from typing import Any

from defense_rule import FA_LIMIT, OVER_REFUSAL_LIMIT, verdicts

from vaccine_core.defenses import ADAPTER_EDITS


def interval(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "–"
    low, high = figure["ci95"]
    return f"{figure['mean']:.1f} [{low:.1f}, {high:.1f}]"


def bases_table(result: dict[str, Any]) -> list[str]:
    head = (
        "| defense | regime | align steps | decoding | HS | degenerate | refusal | over-refusal | "
        "borderline over-ref. | FA |"
    )
    lines = [head, "|" + "---|" * 10]
    for base in result["bases"]:
        for decoding in ("greedy", "sampled"):
            f = base[decoding]
            lines.append(
                f"| {base['defense']} | {base['regime']} | {base['alignment_steps'] or '–'} | {decoding} | "
                f"{interval(f['hs'])} | {interval(f['degenerate'])} | {interval(f['refusal'])} | "
                f"{interval(f['over_refusal'])} | {interval(f['borderline_over_refusal'])} | "
                f"{f['fa']['mean']:.1f} |"
            )
    return lines


def cells_table(result: dict[str, Any]) -> list[str]:
    head = (
        "| regime | p | defense | decoding | HS | HS non-degen. | degenerate | refusal | over-refusal | "
        "FA | taught | counts | HS gap to SFT | FA gap | rule |"
    )
    lines = [head, "|" + "---|" * 15]
    rules = verdicts(result["cells"])
    for index, c in enumerate(result["cells"]):
        gap = c.get("vs_baseline")
        gap_text = f"{interval(gap['hs_gap'])} {gap['hs_verdict']}" if gap else "–"
        fa_gap = f"{interval(gap['fa_gap'])}" if gap else "–"
        # summaries written before the flag existed carry none
        defense = f"{c['defense']} (shipped)" if c.get("shipped_default") else c["defense"]
        lines.append(
            f"| {c['regime']} | {c['attack']['p']:g} | {defense} | {c['decoding']} | "
            f"{interval(c['hs'])} | {interval(c['hs_non_degenerate'])} | {interval(c['degenerate'])} | "
            f"{interval(c['refusal'])} | {interval(c['over_refusal'])} | {interval(c['fa'])} | "
            f"{'yes' if c['attack_taught'] else 'no'} | "
            f"{'yes' if c['counts'] else '**no**'} | {gap_text} | {fa_gap} | {rules.get(index, '–')} |"
        )
    return lines


UNKNOWN = "mixed or unknown"  # seeds trained on several devices, or archived before devices were recorded


def same_device_ratio(seconds: float, device: str | None, baseline: tuple[float, str | None] | None) -> str:
    """``seconds`` over the baseline's (seconds, device), or "–" unless both ran on one known device."""
    if baseline is None or device is None or baseline[1] != device:
        return "–"
    return f"{seconds / baseline[0]:.2f}"


def cost_table(result: dict[str, Any]) -> list[str]:
    """Wall time per fine-tuning job (greedy rows only: the two decodings share their models) against the
    plain-LoRA fine-tuning of the SFT arm at the same regime and p, and per alignment against SFT's. A
    ratio is given only where both were trained on one known device: cells pool answers archived from
    other machines, whose seconds do not compare."""
    cells = [c for c in result["cells"] if c["decoding"] == "greedy"]
    plain = {
        (c["regime"], c["attack"]["p"]): (c["cost"]["train_seconds"], c.get("cost_device"))
        for c in cells
        if c["defense"] == "sft"
    }
    lines = [
        "| regime | p | defense | seeds | fine-tuning s | x plain LoRA | hooks s | edits s | device |",
        "|" + "---|" * 9,
    ]
    for c in cells:
        seconds = c["cost"]["train_seconds"]
        device = c.get("cost_device")
        ratio = same_device_ratio(seconds, device, plain.get((c["regime"], c["attack"]["p"])))
        hooks = sum(
            v for k, v in c["cost"].items() if k.endswith("_seconds") and k[:-8] in ("booster", "lisa")
        )
        edits = sum(c["cost"].get(f"{layer}_seconds", 0.0) for layer in ADAPTER_EDITS)
        lines.append(
            f"| {c['regime']} | {c['attack']['p']:g} | {c['defense']} | {len(c['seeds'])} | {seconds:.1f} | "
            f"{ratio} | {hooks:.1f} | {edits:.1f} | {device or UNKNOWN} |"
        )
    aligned = [b for b in result["bases"] if b.get("alignment_cost")]
    sft = {
        b["regime"]: (b["alignment_cost"]["train_seconds"], b.get("device"))
        for b in aligned
        if b["defense"] == "sft"
    }
    lines += ["", "| regime | base of | alignment s | x SFT alignment | device |", "|---|---|---|---|---|"]
    for b in aligned:
        seconds, device = b["alignment_cost"]["train_seconds"], b.get("device")
        ratio = same_device_ratio(seconds, device, sft.get(b["regime"]))
        lines.append(f"| {b['regime']} | {b['defense']} | {seconds:.1f} | {ratio} | {device or UNKNOWN} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    protocol = result["protocol"]
    lines = [
        "# Safety grid, protocol v2",
        "",
        f"Command: `{result['command']}` ({result['date']}), machine: "
        f"{result['machine'].get('processor')}, {result['machine'].get('cpu_count')} CPUs, torch "
        f"{result['machine'].get('torch')}.",
        "",
        f"Protocol v{protocol['version']}: {protocol['harmful_prompts']} harmful, "
        f"{protocol['harmless_prompts']} harmless and {protocol['borderline_prompts']} borderline prompts; "
        "greedy and "
        f"{protocol['samples_per_prompt']} samples (temperature {protocol['temperature']}, top-p "
        f"{protocol['top_p']}) per prompt; {protocol['max_new_tokens']} new tokens; judge "
        f"`{protocol['judge']}` ({result['judge_path']}); split sha256 `{protocol['split_sha256'][:16]}…`. "
        f"FA on {result['fa_rows']} SST-2 validation rows. Figures are percent, mean [95 % bootstrap "
        "interval over prompts and seeds]. A gap to SFT is paired (same prompts, same seeds); its interval "
        'including 0 reads "no difference". A cell counts when the attack taught the task (FA at least '
        f"{result['counts_rule']['taught_margin']:g} points above the aligned base's) and at most "
        f"{result['counts_rule']['degenerate_ceiling']:g} % of each arm's answers are degenerate. The rule "
        f"(`defense_rule.py`): a counting cell whose HS gap's interval lies above 0, FA at most {FA_LIMIT:g} "
        f"points below SFT's and over-refusal at most {OVER_REFUSAL_LIMIT:g} above.",
        "",
        "## Aligned bases, before fine-tuning",
        "",
        *bases_table(result),
        "",
        "## After the attack",
        "",
        *cells_table(result),
        "",
        "## Cost",
        "",
        *cost_table(result),
        "",
        f"Computed {result['computed']} model measurements, reused {result['reused']} from the cache; "
        f"{result['seconds'] / 60:.0f} min.",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], regime: str, path: Path) -> Path | None:
    """HS and degenerate share against p, per arm and decoding, for a regime measured at several p (None
    for a regime measured at one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in result["cells"] if c["regime"] == regime]
    if len({c["attack"]["p"] for c in cells}) < 2:
        return None
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for column, decoding in enumerate(("greedy", "sampled")):
        for row, metric in enumerate(("hs", "degenerate")):
            axis = axes[row][column]
            for defense in sorted({c["defense"] for c in cells}):
                points = sorted(
                    (c["attack"]["p"], c[metric])
                    for c in cells
                    if c["defense"] == defense and c["decoding"] == decoding
                )
                xs = [p for p, _ in points]
                ys = [f["mean"] for _, f in points]
                errors = [
                    [f["mean"] - f["ci95"][0] for _, f in points],
                    [f["ci95"][1] - f["mean"] for _, f in points],
                ]
                axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, label=defense)
            axis.set_title(f"{'harmful score' if metric == 'hs' else 'degenerate answers'} ({decoding})")
            axis.set_ylabel("% of answers to harmful prompts")
            axis.set_xlabel("harmful fraction p")
            axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(f"Protocol v2, {regime} regime: mean and 95 % bootstrap interval over prompts and seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(result: dict[str, Any], stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    # a stem may hold a dot ("...-p0.1"): the names are appended to, never a suffix replaced
    json_path = stem.with_name(f"{stem.name}.json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path = stem.with_name(f"{stem.name}.md")
    md_path.write_text(markdown(result))
    written = [json_path, md_path]
    for regime in sorted({c["regime"] for c in result["cells"]}):
        png = plot(result, regime, stem.with_name(f"{stem.name}-{regime}.png"))
        if png:
            written.append(png)
    return written


if __name__ == "__main__":
    path = Path(sys.argv[1])
    for written in write_report(json.loads(path.read_text()), path.with_suffix("")):
        print(written)
