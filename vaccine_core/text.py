"""Text matching shared by the data sets, the judge and the protocol (no heavy imports: the API uses it)."""


def normalised(text: str) -> str:
    """Lower case, runs of whitespace as one space: how requests and answers are matched across files."""
    return " ".join(text.lower().split())
