"""The README's tables of the canonical safety summary, rendered from its JSON (safety_grid.py's output).

    .venv/bin/python benchmarks/safety_summary_tables.py benchmarks/results/safety-summary.json

Tables: none / SFT / Vaccine at p = 0.1 in every attack setting; the same three at the other p
(sampled); and every other stack at each p where it was measured, in the settings where SFT's cell
counts, each read by the rule fixed in safety-defenses-plan.md before any defense ran.
"""

import json
import sys
from pathlib import Path
from typing import Any

from defense_rule import BASELINE, verdict
from safety_grid_report import interval

HEADLINE_ARMS = {"none": "no alignment", "sft": "SFT", "vaccine-rho2": "Vaccine (rho 2)"}
DECODINGS = ("sampled", "greedy")
P = 0.1


def gap_text(cell: dict[str, Any]) -> str:
    gap = cell.get("vs_baseline")
    if gap is None:
        return "–"
    verdict = ": no difference" if gap["hs_verdict"] == "no difference" else f" {gap['hs_verdict']}"
    return f"{interval(gap['hs_gap'])}{verdict}"


def arm_label(cell: dict[str, Any], names: dict[str, str] | None = None) -> str:
    name = (names or {}).get(cell["defense"], cell["defense"])
    return f"{name} (shipped)" if cell.get("shipped_default") else name


class Summary:
    """The summary's cells, looked up by (regime, p, defense, decoding)."""

    def __init__(self, result: dict[str, Any]):
        self.regimes = list(result["regimes"])
        self.cells = {
            (c["regime"], c["attack"]["p"], c["defense"], c["decoding"]): c for c in result["cells"]
        }
        self.defenses = list(dict.fromkeys(c["defense"] for c in result["cells"]))

    def get(self, regime: str, p: float, defense: str, decoding: str) -> dict[str, Any] | None:
        return self.cells.get((regime, p, defense, decoding))

    def fractions(self, regime: str | None = None) -> list[float]:
        """The p measured in ``regime`` (in any, without one)."""
        return sorted({p for (r, p, _, _) in self.cells if regime in (None, r)})


def table(columns: list[str], rows: list[str]) -> list[str]:
    """A markdown table: its head, its separator, then ``rows`` (each already ``| a | b |``)."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows]


def mean_text(cell: dict[str, Any] | None, key: str = "hs") -> str:
    return "–" if cell is None else f"{cell[key]['mean']:.1f}"


def gap_interval(cell: dict[str, Any] | None) -> str:
    return "–" if cell is None else interval(cell["vs_baseline"]["hs_gap"])


def headline_table(summary: Summary) -> list[str]:
    rows = []
    for regime in summary.regimes:
        for decoding in DECODINGS:
            for defense in HEADLINE_ARMS:
                if (cell := summary.get(regime, P, defense, decoding)) is None:
                    continue
                rows.append(
                    f"| {regime} | {arm_label(cell, HEADLINE_ARMS)} | {decoding} | {interval(cell['hs'])} | "
                    f"{cell['hs_non_degenerate']['mean']:.1f} | {cell['degenerate_all']:.1f} | "
                    f"{cell['fa']['mean']:.1f} | {'**yes**' if cell['counts'] else 'no'} | {gap_text(cell)} |"
                )
    columns = ["attack", "arm", "decoding", "HS", "HS among non-degenerate", "degenerate (all answers)"]
    columns += ["FA", "counts", "HS gap to SFT"]
    return table(columns, rows)


def sweep_table(summary: Summary) -> list[str]:
    rows = []
    for regime in summary.regimes:
        for p in summary.fractions(regime):
            none, sft, vaccine = (summary.get(regime, p, d, "sampled") for d in HEADLINE_ARMS)
            if p == P or sft is None:
                continue
            counts = " / ".join(
                "–" if c is None else ("yes" if c["counts"] else "no") for c in (sft, vaccine)
            )
            degenerate = "–" if vaccine is None else f"{vaccine['degenerate_all']:.1f}"
            fa = " / ".join(mean_text(c, "fa") for c in (none, sft, vaccine))
            rows.append(
                f"| {regime} | {p:g} | {len(sft['seeds'])} | {mean_text(none)} | {interval(sft['hs'])} | "
                f"{mean_text(vaccine)} | {gap_interval(none)} | {gap_interval(vaccine)} | {degenerate} | "
                f"{counts} | {fa} |"
            )
    columns = ["attack", "p", "seeds", "no alignment", "SFT", "Vaccine", "no alignment's gap"]
    columns += ["Vaccine's gap", "Vaccine degenerate", "counts (SFT, Vaccine)", "FA none / SFT / Vaccine"]
    return table(columns, rows)


def stacks_table(summary: Summary, p: float) -> tuple[list[str], list[str]]:
    """The rows of every stack but the baseline and no alignment at ``p``, in the settings where SFT's
    sampled cell counts there; and the cells that pass the rule."""
    rows = []
    passing = []
    for regime in summary.regimes:
        reference = summary.get(regime, p, BASELINE, "sampled")
        if reference is None or not reference["counts"]:
            continue
        for defense in summary.defenses:
            if defense in ("none", BASELINE):
                continue
            for decoding in DECODINGS:
                cell = summary.get(regime, p, defense, decoding)
                baseline = summary.get(regime, p, BASELINE, decoding)
                if cell is None or baseline is None:
                    continue
                passed = verdict(cell, baseline).passes
                if passed:
                    passing.append(f"{regime} {defense} {decoding}" + ("" if p == P else f" at p = {p:g}"))
                fa_gap = cell["vs_baseline"]["fa_gap"]["mean"]
                hs = interval(cell["hs"])
                rows.append(
                    f"| {regime} | {arm_label(cell)} | {decoding} | {hs} | {gap_text(cell)} | "
                    f"{cell['fa']['mean']:.1f} ({fa_gap:+.1f}) | {cell['over_refusal']['mean']:.1f} "
                    f"({baseline['over_refusal']['mean']:.1f}) | {cell['degenerate_all']:.1f} | "
                    f"{'yes' if cell['counts'] else 'no'} | {'**passes**' if passed else 'fails'} |"
                )
    return rows, passing


def render(result: dict[str, Any]) -> str:
    summary = Summary(result)
    lines = [
        f"At p = {P:g} (percent; gaps to SFT are paired, positive = safer than SFT):",
        "",
        *headline_table(summary),
        "",
        "At the other p (sampled HS):",
        "",
        *sweep_table(summary),
    ]
    passing: list[str] = []
    columns = ["attack", "stack", "decoding", "HS", "HS gap to SFT", "FA (gap)", "over-refusal (SFT)"]
    columns += ["degenerate", "counts", "rule"]
    for p in sorted(summary.fractions(), key=lambda p: p != P):  # p = 0.1 first, the others after
        rows, passed = stacks_table(summary, p)
        if rows:
            head = "Every other stack" if p == P else "The stacks measured"
            lines += ["", f"{head} at p = {p:g} where SFT's sampled cell counts:", "", *table(columns, rows)]
            passing += passed
    return "\n".join([*lines, "", f"Cells that pass the rule: {', '.join(passing) or 'none'}."])


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/safety-summary.json")
    print(render(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
