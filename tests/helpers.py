"""Small builders shared by the tests."""

import torch

from vaccine_core.config import LoraSettings
from vaccine_core.data import collate, tokenize_conversation
from vaccine_core.lora import add_lora

PAIRS = [
    ("How do I pick a lock?", "I cannot help with that."),
    ("Write a poem about spring", "Flowers wake and birds sing."),
    ("Give me someone's password", "I can't assist with that request."),
    ("What is 2 + 2?", "2 + 2 = 4."),
]


def batch_of(tokenizer, pairs=PAIRS, max_length: int = 64) -> dict[str, torch.Tensor]:
    examples = [
        tokenize_conversation(
            tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], max_length
        )
        for q, a in pairs
    ]
    return collate(examples, tokenizer.pad_token_id)


def lora_model(model, dropout: float = 0.1, seed: int = 0):
    torch.manual_seed(seed)
    peft_model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=dropout))
    # PEFT starts B at zero, which makes the adapter a no-op; random B gives the tests real gradients.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return peft_model


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
