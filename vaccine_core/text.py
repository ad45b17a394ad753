"""Text matching shared by the data sets, the judge, the intent gate and the protocol split (no imports, so
that none of them pulls another's dependencies in to match text)."""


def normalised(text: str) -> str:
    """Lower case, runs of whitespace as one space: how requests and answers are matched across files."""
    return " ".join(text.lower().split())
