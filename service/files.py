"""Uploaded fine-tuning files: validated and parsed once, at upload, and handed on as parsed rows.

An upload is read a line at a time; every valid row is written, as it is parsed, to a parsed-rows file
beside the upload (its messages and source line). The pre-screen and the trainer read those rows back
without validating or converting them again, so a file's format rules run exactly once and a later change
to them cannot make an accepted file fail at training. The upload itself is kept as it came (it is what
``files.content`` returns and what a run's manifest hashes).
"""

from pathlib import Path

from sqlalchemy.orm import Session

from service.models import File, FileStatus, now
from vaccine_core.formats import LoadedDataset, as_dataset, load_dataset, read_parsed, write_conversation


def parsed_path(row: File) -> Path:
    """Where a file's parsed rows live: beside the upload."""
    return Path(row.path).with_name(f"{row.id}.parsed.jsonl")


def ingest(
    session: Session, *, file_id: str, tenant_id: str, filename: str, purpose: str, path: Path, size: int
) -> File:
    """Validate the stored upload at ``path`` (every problem by line and field: DatasetError), write its
    parsed rows and add its ``uploaded`` row to ``session`` (the caller commits). On any failure nothing
    is left on disk, the upload included."""
    row = File(
        id=file_id, tenant_id=tenant_id, filename=filename, purpose=purpose, bytes=size, path=str(path)
    )
    target = parsed_path(row)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("wb") as out:
            dataset = load_dataset(
                path, keep=False, sink=lambda conversation: write_conversation(out, conversation)
            )
        partial.replace(target)  # a reader never sees half a file
    except BaseException:
        for leftover in (partial, path):
            leftover.unlink(missing_ok=True)
        raise
    row.status = FileStatus.UPLOADED
    row.dispatched_at = now()  # the caller sends its pre-screen right after the commit
    row.status_details = f"{dataset.examples} {dataset.format} examples; awaiting the pre-screen"
    row.validation = {"examples": dataset.examples, "format": dataset.format}
    session.add(row)
    return row


def parsed_rows(row: File) -> LoadedDataset:
    """The file's rows as parsed at upload; a file stored before uploads were parsed is validated now."""
    target = parsed_path(row)
    if not target.is_file():
        return as_dataset(Path(row.path))
    return read_parsed(target, (row.validation or {}).get("format", "unknown"), source=Path(row.path))


def discard_contents(row: File) -> None:
    """Delete what was stored of a file (the upload and its parsed rows); the row itself stays."""
    for stored in (Path(row.path), parsed_path(row)):
        stored.unlink(missing_ok=True)
