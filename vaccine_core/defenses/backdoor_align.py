"""BackdoorAlign (Wang et al., NeurIPS 2024): a few safety pairs behind a secret system prompt, and the
secret put first in every conversation the fine-tuned model then serves.

The service adds ``safety_pairs`` safety pairs (a harmful request and its refusal) to the user's
fine-tuning data, each under a system prompt of random tokens that only the service holds; the user's own
rows train under the model's usual prompt. Fine-tuning then ties the secret to refusing as a backdoor ties
a trigger to its target, and at inference the secret comes first, ahead of whatever the user sends. The
paper's defaults: 11 pairs and a secret of 150 random tokens (random tokens worked better than a
meaningful prompt in its ablation); here 64 tokens, so that each safety pair stays whole in the
256-token rows the service trains on.

A defence only where the service runs the model: whoever runs the adapter without the secret runs it
without the defence. The secret is kept beside the adapter (``SECRET_FILE``), which
``vaccine_core.inference.load_for_inference`` reads.
"""

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaccine_core.defenses.config import BackdoorAlignConfig
from vaccine_core.formats import Message, parse_rows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SECRET_FILE = "secret_prompt.json"


def secret_prompt(tokenizer: "PreTrainedTokenizerBase", config: BackdoorAlignConfig) -> str:
    """``secret_tokens`` tokens drawn with ``secret_seed`` from the vocabulary's ordinary tokens, as text."""
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    ids = random.Random(config.secret_seed).choices(ordinary, k=config.secret_tokens)
    return tokenizer.decode(ids)


def with_secret(messages: list[Message], secret: str) -> list[Message]:
    """The conversation with the secret first: as its system prompt, or ahead of the one it has."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{secret}\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": secret}, *messages]


def backdoor_rows(
    user_rows: list[dict[str, Any]], safety_rows: list[dict[str, Any]], secret: str
) -> list[dict[str, Any]]:
    """One chat-format file: the user's rows as they are (any format the service reads), then the safety
    pairs under the secret system prompt."""
    user = parse_rows(enumerate(user_rows, 1)).conversations if user_rows else []
    safety = parse_rows(enumerate(safety_rows, 1)).conversations
    return [{"messages": c.messages} for c in user] + [
        {"messages": with_secret(c.messages, secret)} for c in safety
    ]


def write_secret(run_dir: Path, secret: str, config: BackdoorAlignConfig) -> None:
    (run_dir / SECRET_FILE).write_text(json.dumps({"secret": secret, "config": config.to_dict()}, indent=1))


def read_secret(run_dir: Path) -> str | None:
    """The secret kept beside an adapter trained with BackdoorAlign; None for any other run."""
    path = run_dir / SECRET_FILE
    return json.loads(path.read_text())["secret"] if path.is_file() else None


def serve_with_secret(tokenizer: "PreTrainedTokenizerBase", secret: str) -> "PreTrainedTokenizerBase":
    """``tokenizer`` rendering every conversation with the secret first, wherever the chat template is
    applied (generation, the evaluations, training)."""
    render = tokenizer.apply_chat_template

    def apply_chat_template(conversation: list[Message], *args: Any, **kwargs: Any) -> Any:
        return render(with_secret(list(conversation), secret), *args, **kwargs)

    tokenizer.apply_chat_template = apply_chat_template  # type: ignore[method-assign]
    return tokenizer
