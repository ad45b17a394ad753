"""The token-wise constraint (Qi et al. 2025, "Safety Alignment Should Be Made More Than Just a Few Tokens
Deep"): a fine-tuning-stage defense that needs no safety data.

Alignment mostly changes a model's first few answer tokens (a refusal is decided by "I cannot ..."), and
fine-tuning erodes it there first, by harmful rows and by benign ones alike. The defense trains on the
user's rows with a loss whose gradient is cross-entropy's, each answer token's weighted down once the model
gives that token more probability than the aligned base did, and much faster on the first tokens
(vaccine_core.losses): the model can learn the task's answers, but cannot move its opening tokens far
from the base's.

The reference model is the aligned base itself: the job's model with its adapter switched off. Its
log-probabilities of every training row are computed once, before the first step (without dropout, in
fixed batches, so a resumed run finds the same ones), and attached to each batch of the user's rows. A
batch that is not the user's (Lisa's safety pairs) trains with plain cross-entropy.
"""

import time
from typing import Any

import torch

from vaccine_core.data import IGNORE_INDEX, SupervisedDataset, collate
from vaccine_core.defenses.base import Batch
from vaccine_core.defenses.config import TokenConstraintConfig
from vaccine_core.losses import REFERENCE_LOGPROBS, TOKEN_BETAS, token_logprobs


def row_key(input_ids: torch.Tensor) -> bytes:
    return input_ids.to(torch.int64).cpu().numpy().tobytes()


def answer_positions(answer: torch.Tensor) -> torch.Tensor:
    """Each answer token's index within its own answer (0 for its first token), so that every assistant
    turn of a conversation opens under the strong constraint; 0 outside answers."""
    index = torch.arange(answer.shape[1], device=answer.device).expand_as(answer)
    opens = answer & ~torch.nn.functional.pad(answer, (1, 0))[:, :-1]
    last_open = torch.cummax(torch.where(opens, index, 0), dim=1).values
    return torch.where(answer, index - last_open, 0)


def token_betas(answer: torch.Tensor, config: TokenConstraintConfig) -> torch.Tensor:
    """beta_t at every answer position of ``answer`` (a mask aligned with the shifted labels), counted
    from the start of its own answer; 0 elsewhere."""
    position = answer_positions(answer)
    table = torch.tensor(config.betas(int(position.max()) + 1), device=answer.device)
    return torch.where(answer, table[position], 0.0)


class TokenConstraint:
    name = "token_constraint"

    def __init__(
        self,
        model: torch.nn.Module,
        examples: SupervisedDataset,
        config: TokenConstraintConfig,
        batch_size: int,
        pad_token_id: int,
    ):
        if not hasattr(model, "disable_adapter"):
            raise ValueError(
                "the token constraint's reference is the model without its adapter: give a PEFT model"
            )
        self.config = config
        started = time.perf_counter()
        self.reference = self.reference_logprobs(model, examples, batch_size, pad_token_id)
        self.setup_seconds = time.perf_counter() - started  # the aligned base's pass over every row

    @staticmethod
    def reference_logprobs(
        model: torch.nn.Module, examples: SupervisedDataset, batch_size: int, pad_token_id: int
    ) -> dict[bytes, torch.Tensor]:
        """Each row's next-token log-probabilities under the aligned base, by the row's tokens, on the
        model's device (each step reads them there)."""
        device = next(model.parameters()).device
        reference: dict[bytes, torch.Tensor] = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), model.disable_adapter():
                for start in range(0, len(examples), batch_size):
                    chunk = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
                    batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
                    logprobs, _ = token_logprobs(model, batch)
                    for row, example in enumerate(chunk):
                        # kept on the model's device, keyed by the row's tokens as the host holds them
                        length = len(example.input_ids)
                        reference[row_key(torch.tensor(example.input_ids))] = logprobs[
                            row, : length - 1
                        ].clone()
        finally:
            model.train(was_training)
        return reference

    def batch(self, step: int, batch: Batch) -> Batch:
        """The user's batch with its reference log-probabilities and per-token betas attached."""
        # one copy of the batch's tokens to the host, not one per row (each would wait on the device)
        rows = batch["input_ids"].cpu()
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        found = [self.reference.get(row_key(ids[:n])) for ids, n in zip(rows, lengths, strict=True)]
        if all(row is None for row in found):
            return batch  # not the user's rows (Lisa's safety batch): plain cross-entropy
        if any(row is None for row in found):
            raise ValueError("a batch mixes rows of the user's data with rows the constraint has not seen")
        device = batch["input_ids"].device
        reference = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1, device=device)
        for row, logprobs in enumerate(found):
            reference[row, : len(logprobs)] = logprobs.to(device)
        betas = token_betas(batch["labels"][:, 1:] != IGNORE_INDEX, self.config)
        return {**batch, REFERENCE_LOGPROBS: reference, TOKEN_BETAS: betas}

    def after_backward(self, step: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}  # the reference is recomputed, identically, when a run resumes

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
