"""The loss a training step minimises: the model's own cross-entropy, or the token-wise constrained objective.

A defense may attach to a batch, beside its labels, each answer token's log-probability under a fixed
reference model (``REFERENCE_LOGPROBS``) and a strength per token (``TOKEN_BETAS``), both aligned with the
shifted labels (position t scores token t + 1). The step then minimises, over the answer tokens t,

    (2 / beta_t) * log(1 + (ref(y_t) / pi(y_t)) ** beta_t)       (Qi et al. 2025, "Safety Alignment Should
                                                                  Be Made More Than Just a Few Tokens Deep")

averaged over the batch's answer tokens. Its gradient is cross-entropy's, each token's weighted by
``w_t = 2 * (1 - sigmoid(beta_t * (log pi(y_t) - log ref(y_t))))``: 1 where the model agrees with the
reference, falling towards 0 once the model gives the token more probability than the reference did, and
faster the larger beta_t. So a large beta on an answer's first tokens caps how far fine-tuning can move
them from the aligned model, where a refusal is decided; as beta goes to 0 the objective becomes plain
cross-entropy. It is computed, as in the reference code, as ``-w_t.detach() * log pi(y_t)``, which has
that gradient exactly and stays finite; w is held at least 1e-3.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vaccine_core.data import IGNORE_INDEX

REFERENCE_LOGPROBS = "reference_logprobs"
TOKEN_BETAS = "token_betas"
MIN_WEIGHT = 1e-3  # as in the reference code: a token the model has learned still carries a little weight

Batch = dict[str, torch.Tensor]


def answer_token_count(batch: Batch) -> torch.Tensor:
    """How many tokens of ``batch`` the loss scores: those with a label, the first of each row aside (the
    model predicts each token from the ones before it)."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def token_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's log-probability of the next token, and where that token is an answer token (has a
    label); both (batch, length - 1), in float32."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    per_token = torch.gather(
        F.log_softmax(logits.float(), dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)
    ).squeeze(-1)
    return per_token, labels != IGNORE_INDEX


def constraint_weights(logprobs: torch.Tensor, reference: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """w_t = 2 * (1 - sigmoid(beta_t * (log pi - log ref))), at least MIN_WEIGHT, outside the graph."""
    return (2 * (1 - torch.sigmoid(betas * (logprobs.detach() - reference)))).clamp(min=MIN_WEIGHT)


def batch_loss(model: nn.Module, batch: Batch, answer_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The step's loss on ``batch``: the constrained objective where a defense attached its reference
    log-probabilities, the model's own mean cross-entropy over answer tokens otherwise. With
    ``answer_tokens`` (a run of a larger batch: ``vaccine_core.unpadded``) the cross-entropy is summed and
    divided by the larger batch's count of them instead, so the runs' losses add up to the batch's."""
    if REFERENCE_LOGPROBS not in batch:
        if answer_tokens is not None:
            return model(**batch, num_items_in_batch=answer_tokens).loss
        return model(**batch).loss
    if answer_tokens is not None:
        raise ValueError("the constrained objective runs on whole batches")
    logprobs, answer = token_logprobs(model, batch)
    weights = constraint_weights(logprobs, batch[REFERENCE_LOGPROBS], batch[TOKEN_BETAS])
    return -(weights * logprobs * answer).sum() / answer.sum().clamp(min=1)
