"""The training-time defenses of one run, with the data they draw from, as one value a run is given."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from vaccine_core.config import TrainingConfig
from vaccine_core.data import SupervisedDataset
from vaccine_core.defenses.base import BatchStream, StepDefense
from vaccine_core.defenses.booster import Booster, BoosterConfig
from vaccine_core.defenses.data import side_dataset
from vaccine_core.defenses.lisa import Lisa, LisaConfig
from vaccine_core.defenses.preference import PairStream, Preference, PreferenceConfig
from vaccine_core.defenses.safety_layers import SafetyLayersConfig, freeze_layers
from vaccine_core.defenses.token_constraint import TokenConstraint, TokenConstraintConfig
from vaccine_core.training import plan_steps


def rows_identity(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    text = "\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows)
    return {"rows": len(rows), "sha256": hashlib.sha256(text.encode()).hexdigest()}


@dataclass
class StepDefenses:
    """``booster`` needs harmful pairs (defenses.data.booster_pairs), ``lisa`` safety pairs
    (defenses.data.lisa_pairs), ``preference`` pairs of answers (defenses.data.preference_pairs);
    ``token_constraint`` needs no data of its own; ``safety_layers`` the layers located on the run's base
    (defenses.safety_layers.base_safety_layers), whose LoRA weights it leaves untrained. Any may be left
    out."""

    booster: BoosterConfig | None = None
    booster_rows: Sequence[dict[str, Any]] = ()
    lisa: LisaConfig | None = None
    lisa_rows: Sequence[dict[str, Any]] = ()
    preference: PreferenceConfig | None = None
    preference_rows: Sequence[dict[str, Any]] = ()
    token_constraint: TokenConstraintConfig | None = None
    safety_layers: SafetyLayersConfig | None = None
    safety_layer_indices: Sequence[int] = ()

    def __post_init__(self) -> None:
        if self.safety_layers is not None and not self.safety_layer_indices:
            raise ValueError("the safety layers must be located on the base first (base_safety_layers)")
        if self.booster is not None and not self.booster_rows:
            raise ValueError("Booster needs harmful pairs for its simulated harmful step")
        if self.lisa is not None and not self.lisa_rows:
            raise ValueError("Lisa needs safety pairs for its alignment state")
        if self.preference is not None and not self.preference_rows:
            raise ValueError("the preference term needs pairs of a chosen and a rejected answer")

    @property
    def names(self) -> list[str]:
        return [
            name
            for name in ("booster", "preference", "lisa", "token_constraint", "safety_layers")
            if getattr(self, name) is not None
        ]

    def build(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: TrainingConfig,
        examples: SupervisedDataset,
    ) -> list[StepDefense]:
        """The defenses over ``model`` (its adapter already attached) for a run on ``examples``, their
        streams seeded from the run's. Lisa comes before the token constraint, which leaves Lisa's safety
        batches as they are. The safety layers act here, once: their LoRA weights stop training."""
        if self.safety_layers is not None:
            freeze_layers(model, self.safety_layer_indices)
        built: list[StepDefense] = []
        if self.booster is not None:
            harmful = side_dataset(self.booster_rows, tokenizer, config.max_length)
            stream = BatchStream(harmful, self.booster.batch_size, tokenizer.pad_token_id, config.seed + 1)
            built.append(Booster(model, stream, self.booster))
        if self.preference is not None:
            pairs = PairStream(
                self.preference_rows,
                tokenizer,
                config.max_length,
                self.preference.batch_size,
                config.seed + 3,
            )
            built.append(Preference(model, pairs, self.preference))
        if self.lisa is not None:
            safety = side_dataset(self.lisa_rows, tokenizer, config.max_length)
            stream = BatchStream(safety, config.batch_size, tokenizer.pad_token_id, config.seed + 2)
            built.append(Lisa(model, stream, self.lisa, plan_steps(len(examples), config)[1]))
        if self.token_constraint is not None:
            built.append(
                TokenConstraint(
                    model, examples, self.token_constraint, config.batch_size, tokenizer.pad_token_id
                )
            )
        return built

    def to_dict(self) -> dict[str, Any]:
        """What a manifest records: each defense's options and the identity of its data."""
        record: dict[str, Any] = {}
        if self.booster is not None:
            record["booster"] = {**self.booster.to_dict(), "data": rows_identity(self.booster_rows)}
        if self.preference is not None:
            record["preference"] = {**self.preference.to_dict(), "data": rows_identity(self.preference_rows)}
        if self.lisa is not None:
            record["lisa"] = {**self.lisa.to_dict(), "data": rows_identity(self.lisa_rows)}
        if self.token_constraint is not None:
            record["token_constraint"] = self.token_constraint.to_dict()
        if self.safety_layers is not None:
            record["safety_layers"] = {
                **self.safety_layers.to_dict(),
                "layers": [int(i) for i in self.safety_layer_indices],
            }
        return record
