"""A refusal preference term in the alignment: DPO (Rafailov et al. 2023) on pairs of answers to one request.

The alignment loss shows refusals to harmful requests beside answers to plainly harmless ones, one target
at a time; the default 135M model learns from it to refuse anything that sounds sensitive (the 120-step
SFT base refuses 67 % of JailbreakBench's borderline-benign requests). This term gives it, for one
request, two answers and which to prefer: a harmful request's refusal over its compliance, and a
sensitive-sounding benign request's helpful answer over a refusal. The same refusals are preferred under
the first kind and dispreferred under the second, so only the request can tell them apart.

DPO's loss on a pair (request x, chosen c, rejected r), with the policy pi and a fixed reference:

    -log sigmoid(beta * ((log pi(c|x) - log ref(c|x)) - (log pi(r|x) - log ref(r|x))))

The reference is the model with its adapter switched off (the base before alignment), so no second copy
of the weights is kept. The term, times ``weight``, is added to the step's gradient after the alignment
pass, as Booster's is: per step one forward and backward pass over the chosen and the rejected answers,
and one forward pass of each without gradient, without dropout, for the reference.

Measured on the default 135M model (docs/safety-results.md, "A preference term in the alignment"):
beside the 120-step SFT alignment it lowered the refusal of harmful (88.7 to 61.3 %), borderline-benign
(67.0 to 48.0 %) and harmless requests (39.8 to 14.8 %) together (1317.8 s to align, 532.3 s of it in the
term); it did not teach the difference it was built to teach.
"""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from vaccine_core.data import IGNORE_INDEX, TokenizedExample, collate, tokenize_conversation
from vaccine_core.defenses.base import Batch, batch_indices
from vaccine_core.defenses.config import PreferenceConfig
from vaccine_core.losses import token_logprobs


def answer_logprobs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Each row's log-probability of its answer tokens (those with a label) given what precedes them."""
    per_token, answer = token_logprobs(model, batch)
    return (per_token * answer).sum(-1)


class PairStream:
    """An endless, seeded stream of (chosen, rejected) batches over the same requests; its position is its
    state (for resume). A pair whose request leaves no room for an answer in ``max_length`` is left out."""

    def __init__(
        self,
        rows: Sequence[dict[str, str]],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        batch_size: int,
        seed: int,
    ):
        self.pairs: list[tuple[TokenizedExample, TokenizedExample]] = []
        for row in rows:
            chosen, rejected = (
                tokenize_conversation(
                    tokenizer,
                    [
                        {"role": "user", "content": row["instruction"]},
                        {"role": "assistant", "content": answer},
                    ],
                    max_length,
                )
                for answer in (row["chosen"], row["rejected"])
            )
            if any(label != IGNORE_INDEX for label in chosen.labels) and any(
                label != IGNORE_INDEX for label in rejected.labels
            ):
                self.pairs.append((chosen, rejected))
        if not self.pairs:
            raise ValueError("the preference term's data holds no pair with room for an answer")
        self.batch_size, self.pad_token_id, self.seed = batch_size, tokenizer.pad_token_id, seed
        self.drawn = 0

    def next(self, device: torch.device) -> tuple[Batch, Batch]:
        chosen = [
            self.pairs[i] for i in batch_indices(len(self.pairs), self.batch_size, self.seed, self.drawn)
        ]
        self.drawn += 1
        return tuple(  # type: ignore[return-value]
            {k: v.to(device) for k, v in collate([pair[side] for pair in chosen], self.pad_token_id).items()}
            for side in (0, 1)
        )


class Preference:
    name = "preference"
    setup_seconds = 0.0  # nothing to prepare before the first step

    def __init__(self, model: torch.nn.Module, pairs: PairStream, config: PreferenceConfig):
        if not hasattr(model, "disable_adapter"):
            raise ValueError(
                "the preference term's reference is the model without its adapter: give a PEFT model"
            )
        self.model, self.pairs, self.config = model, pairs, config
        self.last: dict[str, float] = {}  # the term's loss and the mean reward margin (for logs)

    def batch(self, step: int, batch: Batch) -> Batch:
        return batch

    def reference(self, chosen: Batch, rejected: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's log-probabilities: adapter off, no dropout, no gradient."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                return answer_logprobs(self.model, chosen), answer_logprobs(self.model, rejected)
        finally:
            self.model.train(was_training)

    def after_backward(self, step: int) -> None:
        device = next(p for p in self.model.parameters() if p.requires_grad).device
        chosen, rejected = self.pairs.next(device)
        reference_chosen, reference_rejected = self.reference(chosen, rejected)
        # how much more the policy than its reference prefers the chosen answer, in log-probability
        margin = (answer_logprobs(self.model, chosen) - reference_chosen) - (
            answer_logprobs(self.model, rejected) - reference_rejected
        )
        loss = -F.logsigmoid(self.config.beta * margin).mean()
        (self.config.weight * loss).backward()  # adds to .grad, where the alignment loss's gradient is
        self.last = {"preference_loss": float(loss.detach()), "reward_margin": float(margin.detach().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.pairs.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairs.drawn = state["drawn"]
