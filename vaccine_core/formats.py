"""Fine-tuning files: read JSON Lines or a JSON array and validate every row (no torch: the API checks uploads
with it; ``vaccine_core.data`` renders and tokenizes for training).

Three row formats are accepted and may not be mixed within a file:

* alpaca: ``instruction`` (str), optional ``input`` (str), ``output`` (str)
* chat: ``messages``, a list of ``{"role": "system"|"user"|"assistant", "content": str}`` ending with an
  assistant turn
* prompt/completion: ``prompt`` (str), ``completion`` (str)

Validation never stops at the first problem: it collects up to ``max_problems`` of them, each with its line
number (the element's index + 1 for a JSON array) and field, so that a user can fix a file in one go.
"""

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

MAX_PROBLEMS = 50
ROLES = ("system", "user", "assistant")

Message = dict[str, str]


@dataclass(frozen=True)
class Problem:
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.message}"


class DatasetError(ValueError):
    """A data file that cannot be used, with every problem found (up to a limit)."""

    def __init__(self, problems: Sequence[Problem], truncated: bool = False):
        self.problems = list(problems)
        self.truncated = truncated
        lines = [str(p) for p in self.problems]
        if truncated:
            lines.append(f"(stopped after {len(self.problems)} problems)")
        super().__init__("invalid data file:\n  " + "\n  ".join(lines))


@dataclass
class Conversation:
    """One training example: chat messages; the loss falls on the assistant turns only."""

    messages: list[Message]
    line: int

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn: what a model is asked at evaluation time."""
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class LoadedDataset:
    conversations: list[Conversation]
    format: str
    examples: int = 0  # valid rows (as many as conversations, unless they were only counted)
    path: Path | None = None
    skipped: list[Problem] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- reading


def read_rows(path: Path, max_problems: int = MAX_PROBLEMS) -> list[tuple[int, Any]]:
    """Parse a file into (line number, value) pairs: JSON Lines, or one JSON array."""
    return list(iter_rows(path, max_problems))


def iter_rows(path: Path, max_problems: int = MAX_PROBLEMS) -> Iterator[tuple[int, Any]]:
    """(line number, value) pairs of a file as it is read: JSON Lines a line at a time (a large upload is
    never held whole in memory), or one JSON array (parsed whole). Lines that are not JSON are collected
    and raised together, as a DatasetError, once the file is read."""
    with path.open("rb") as handle:
        if _first_byte(handle) == b"[":
            yield from _array_rows(handle.read())
            return
        problems: list[Problem] = []
        seen = False
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            seen = True
            try:
                value = _loads(line)
            except UnicodeDecodeError as exc:
                problems.append(Problem(number, None, f"not UTF-8 text (byte {exc.start} of the line)"))
            except json.JSONDecodeError as exc:
                problems.append(Problem(number, None, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            else:
                yield number, value
            if len(problems) >= max_problems:
                raise DatasetError(problems, truncated=True)
    if not seen:
        raise DatasetError([Problem(None, None, EMPTY)])
    if problems:
        raise DatasetError(problems)


EMPTY = "the file is empty; expected JSON Lines or a JSON array"


def _loads(line: bytes) -> Any:
    """A line's JSON value: orjson's parser (a few times faster on a large upload), and the standard
    library's where orjson refuses, so what is accepted (NaN, integers past 64 bits) and each error's
    wording stay the standard library's."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line.decode("utf-8"))


def _first_byte(handle: BinaryIO) -> bytes:
    """The file's first byte that is not white space (b"" for none); the handle is left at the start."""
    while chunk := handle.read(64 * 1024):
        stripped = chunk.lstrip()
        if stripped:
            handle.seek(0)
            return stripped[:1]
    raise DatasetError([Problem(None, None, EMPTY)])


def _array_rows(raw: bytes) -> list[tuple[int, Any]]:
    try:
        values = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetError([Problem(line, None, f"not UTF-8 text (byte {exc.start})")]) from None
    except json.JSONDecodeError as exc:
        raise DatasetError([Problem(exc.lineno, None, f"invalid JSON array: {exc.msg}")]) from None
    return list(enumerate(values, start=1))


# ------------------------------------------------------------------------------------------ validation


def detect_format(row: dict[str, Any]) -> str | None:
    if "messages" in row:
        return "chat"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    return None


def _text(row: dict[str, Any], key: str, line: int, problems: list[Problem], required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            problems.append(Problem(line, key, "missing; expected a string"))
        return ""
    if not isinstance(value, str):
        problems.append(Problem(line, key, f"expected a string, got {type(value).__name__}"))
        return ""
    return value


def _non_empty(value: str, key: str, line: int, problems: list[Problem]) -> None:
    if value is not None and not value.strip():
        problems.append(Problem(line, key, "is empty; every example needs text here"))


def _conversation_from_alpaca(row: dict[str, Any], line: int, problems: list[Problem]) -> list[Message]:
    n = len(problems)
    instruction = _text(row, "instruction", line, problems)
    extra = _text(row, "input", line, problems, required=False)
    output = _text(row, "output", line, problems)
    if len(problems) == n:
        _non_empty(instruction, "instruction", line, problems)
        _non_empty(output, "output", line, problems)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _conversation_from_prompt(row: dict[str, Any], line: int, problems: list[Problem]) -> list[Message]:
    n = len(problems)
    prompt = _text(row, "prompt", line, problems)
    completion = _text(row, "completion", line, problems)
    if len(problems) == n:
        _non_empty(prompt, "prompt", line, problems)
        _non_empty(completion, "completion", line, problems)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _conversation_from_chat(row: dict[str, Any], line: int, problems: list[Problem]) -> list[Message]:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        problems.append(Problem(line, "messages", "expected a non-empty list of {role, content} objects"))
        return []
    out: list[Message] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(Problem(line, where, f"expected an object, got {type(message).__name__}"))
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(
                Problem(line, f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
            )
        if not isinstance(content, str):
            problems.append(
                Problem(line, f"{where}.content", f"expected a string, got {type(content).__name__}")
            )
            continue
        if role == "assistant" and not content.strip():
            problems.append(Problem(line, f"{where}.content", "assistant answer is empty"))
        out.append({"role": str(role), "content": content})
    if out and out[-1]["role"] != "assistant":
        problems.append(Problem(line, "messages", "the last message must be the assistant's answer"))
    if out and not any(m["role"] == "user" for m in out):
        problems.append(Problem(line, "messages", "needs at least one user message"))
    return out


_PARSERS = {
    "alpaca": _conversation_from_alpaca,
    "chat": _conversation_from_chat,
    "prompt_completion": _conversation_from_prompt,
}


def parse_rows(
    rows: Iterable[tuple[int, Any]],
    max_problems: int = MAX_PROBLEMS,
    keep: bool = True,
    sink: Callable[[Conversation], None] | None = None,
) -> LoadedDataset:
    """Validate rows and turn them into conversations; raise DatasetError naming every bad line and field.
    With ``keep`` False the rows are validated and counted, and no conversation is kept. ``sink`` is handed
    each valid conversation as it is parsed (before the rest of the file is known to be valid)."""
    conversations: list[Conversation] = []
    examples = 0
    problems: list[Problem] = []
    file_format: str | None = None
    for line, row in rows:
        if len(problems) >= max_problems:
            raise DatasetError(problems[:max_problems], truncated=True)
        if not isinstance(row, dict):
            problems.append(Problem(line, None, f"expected a JSON object, got {type(row).__name__}"))
            continue
        row_format = detect_format(row)
        if row_format is None:
            problems.append(
                Problem(
                    line,
                    None,
                    "unknown row format; expected alpaca (instruction, input, output), "
                    "chat (messages) or prompt/completion fields",
                )
            )
            continue
        if file_format is None:
            file_format = row_format
        elif row_format != file_format:
            problems.append(Problem(line, None, f"row is {row_format} but the file started as {file_format}"))
            continue
        before = len(problems)
        messages = _PARSERS[row_format](row, line, problems)
        if len(problems) == before:
            examples += 1
            conversation = Conversation(messages=messages, line=line)
            if keep:
                conversations.append(conversation)
            if sink is not None:
                sink(conversation)
    if problems:
        raise DatasetError(problems[:max_problems], truncated=len(problems) > max_problems)
    if not examples:
        raise DatasetError([Problem(None, None, "the file holds no examples")])
    return LoadedDataset(conversations=conversations, format=file_format or "unknown", examples=examples)


def load_dataset(
    path: str | Path,
    limit: int | None = None,
    max_problems: int = MAX_PROBLEMS,
    keep: bool = True,
    sink: Callable[[Conversation], None] | None = None,
) -> LoadedDataset:
    """Read and validate a fine-tuning file. ``limit`` keeps the first N examples (after validating all);
    ``keep`` False only validates and counts them (memory bounded by a line, not the file); ``sink`` sees
    each valid conversation as it is read."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError([Problem(None, None, f"no such file: {path}")])
    dataset = parse_rows(iter_rows(path, max_problems), max_problems, keep, sink)
    dataset.path = path
    if limit is not None:
        dataset.conversations = dataset.conversations[:limit]
    return dataset


def as_dataset(data: "str | Path | LoadedDataset", limit: int | None = None) -> LoadedDataset:
    """``data`` as parsed rows: a file is read and validated, rows parsed before are used as they are."""
    if not isinstance(data, LoadedDataset):
        return load_dataset(data, limit=limit)
    if limit is None or limit >= len(data.conversations):
        return data
    return LoadedDataset(data.conversations[:limit], data.format, limit, data.path, data.skipped)


# ------------------------------------------------------------------------------------- parsed rows


def write_conversation(handle: BinaryIO, conversation: Conversation) -> None:
    """One validated conversation as a line of a parsed-rows file (its source line and its messages)."""
    line = {"line": conversation.line, "messages": conversation.messages}
    try:
        handle.write(orjson.dumps(line) + b"\n")
    except orjson.JSONEncodeError:  # what orjson will not write (a lone surrogate): as it always was
        handle.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")


def read_parsed(path: Path, file_format: str, source: Path | None = None) -> LoadedDataset:
    """A parsed-rows file that ``write_conversation`` wrote, read back without validating it again: its
    rows were validated when it was written. ``source`` is the file they were parsed from."""
    with Path(path).open("rb") as handle:
        conversations = [
            Conversation(messages=row["messages"], line=row["line"]) for row in map(_loads, handle)
        ]
    return LoadedDataset(
        conversations=conversations, format=file_format, examples=len(conversations), path=source or path
    )
