"""Pre-screen a fine-tuning file: score every (prompt, answer) row and report the flagged ones by line."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vaccine_core.formats import Conversation, LoadedDataset, as_dataset
from vaccine_core.moderation.base import Moderator, Pair


@dataclass(frozen=True)
class FlaggedRow:
    line: int
    score: float
    categories: tuple[str, ...]


@dataclass
class PrescreenReport:
    judge: str
    rows: int
    flagged: list[FlaggedRow]
    categories: dict[str, int]

    @property
    def flagged_share(self) -> float:
        return len(self.flagged) / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "rows": self.rows,
            "flagged_rows": len(self.flagged),
            "flagged_share": self.flagged_share,
            "categories": self.categories,
            "flagged": [asdict(row) for row in self.flagged],
        }


SUMMARY_FIELDS = ("judge", "rows", "flagged_rows", "flagged_share")


def screen_summary(screen: dict[str, Any]) -> dict[str, Any]:
    """A pre-screen's verdict (``PrescreenReport.to_dict``, as a file record keeps it) without the list of
    its flagged rows: what a safety report and a benchmark row carry."""
    return {key: screen[key] for key in SUMMARY_FIELDS}


def screened_pairs(conversations: Sequence[Conversation]) -> list[Pair]:
    """What the pre-screen judges of each example: its last user turn, and its answer."""
    return [
        (next(m["content"] for m in reversed(c.prompt_messages) if m["role"] == "user"), c.answer)
        for c in conversations
    ]


# Rows judged together. A score moves a little with its batch's padding, so whoever re-scores a pre-screen's
# rows (benchmarks/prescreen_mix.py) batches them the same way.
PRESCREEN_BATCH = 64


def prescreen(
    data: Path | LoadedDataset, judge: Moderator, batch_size: int = PRESCREEN_BATCH
) -> PrescreenReport:
    """Judge each example's last user turn with its answer. Raises DatasetError for an invalid file (rows
    parsed before are judged as they are)."""
    conversations = as_dataset(data).conversations
    flagged: list[FlaggedRow] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        for conversation, verdict in zip(chunk, judge.score(screened_pairs(chunk)), strict=True):
            if verdict.flagged:
                flagged.append(FlaggedRow(conversation.line, verdict.score, verdict.categories))
    categories = Counter(c for row in flagged for c in row.categories)
    return PrescreenReport(
        judge=judge.name, rows=len(conversations), flagged=flagged, categories=dict(categories)
    )


def without_flagged(
    data: LoadedDataset, flagged_lines: Sequence[int]
) -> tuple[LoadedDataset, dict[str, Any]]:
    """``data`` without the examples on ``flagged_lines`` (the pre-screen as a data filter: what it flagged
    never trains), and the filter's record: how many rows it left out, and which."""
    dropped = set(flagged_lines)
    kept = [c for c in data.conversations if c.line not in dropped]
    left_out = sorted(c.line for c in data.conversations if c.line in dropped)
    record = {"rows": len(data.conversations), "rows_left_out": len(left_out), "lines": left_out}
    return replace(data, conversations=kept, examples=len(kept)), record
