"""Fine-tuning data for training: conversations (read and validated by ``vaccine_core.formats``) rendered
with the model's chat template and tokenized, the answer's tokens alone carrying the loss."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from vaccine_core.formats import Conversation, Message, Problem

IGNORE_INDEX = -100  # labels with this value carry no loss (prompt tokens and padding)


# ------------------------------------------------------------------------------------------- rendering


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> str:
    """The text a model continues at generation time (chat template with the generation prompt)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], max_length: int
) -> TokenizedExample:
    """Render a conversation with the chat template; label only the assistant turns' tokens.

    Each assistant turn's span is the text that rendering ``messages[:i+1]`` adds to rendering
    ``messages[:i]`` with the generation prompt; it includes the template's end-of-turn marker, so the
    model learns to stop. Token labels follow character offsets, which is exact for any fast tokenizer.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render_prompt(tokenizer, messages[:i]))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        spans.append((start, end))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = encoded["input_ids"][:max_length]
    offsets = encoded["offset_mapping"][:max_length]
    labels = [
        token if any(s <= begin < e for s, e in spans) else IGNORE_INDEX
        for token, (begin, _end) in zip(input_ids, offsets, strict=True)
    ]
    return TokenizedExample(input_ids=input_ids, labels=labels)


class SupervisedDataset(torch.utils.data.Dataset):
    """Tokenized conversations; examples whose answer was truncated away entirely are dropped and reported."""

    def __init__(
        self, conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, max_length: int
    ):
        self.examples: list[TokenizedExample] = []
        self.dropped: list[Problem] = []
        for conversation in conversations:
            example = tokenize_conversation(tokenizer, conversation.messages, max_length)
            if all(label == IGNORE_INDEX for label in example.labels):
                self.dropped.append(
                    Problem(conversation.line, None, f"prompt fills all {max_length} tokens; no answer left")
                )
                continue
            self.examples.append(example)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.examples[index]


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch for training; padding gets attention 0 and label -100."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
