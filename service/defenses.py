"""The defense stack a fine-tuning job runs: chosen by the operator's policy, overridable per tenant.

Alignment-stage defenses (Vaccine's perturbation, Booster) belong to a base model and are set when it is
registered; what is chosen here acts on each user's job: the pre-screen filter on its data before it
trains; Lisa, the token-wise constraint and the base's safety layers left untrained while it trains; Safe
LoRA and then RESTA on its adapter before the safety report. Defaults and help texts come from
vaccine_core's configs, their one home.
"""

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from vaccine_core.defenses.config import (
    LISA_SAFETY_PAIRS,
    VECTOR_ADAPTERS,
    LisaConfig,
    RestaConfig,
    RestaVector,
    SafeLoraConfig,
    SafetyLayersConfig,
    TokenConstraintConfig,
    VectorAdapterKind,
)

if TYPE_CHECKING:  # the code behind the options loads torch: a worker's business, not the API's
    from vaccine_core.defenses.stack import StepDefenses


def config_help(config: type, name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(config) if f.name == name)


# the stack's layers, in the order they act on a job
LAYERS = ("prescreen_filter", "lisa", "token_constraint", "safety_layers", "safe_lora", "resta")


class DefenseStack(BaseModel):
    prescreen_filter: bool = Field(
        default=False,
        description="Leave the rows the upload's pre-screen flagged out of training (a file above the "
        "policy's pre-screen threshold is rejected or warned about first, as the policy says)",
    )
    lisa: bool = Field(default=False, description="Lisa: alternate with safety pairs under a proximal term")
    lisa_rho: float = Field(default=LisaConfig.rho, ge=0, le=100, description=config_help(LisaConfig, "rho"))
    lisa_alignment_steps: int = Field(
        default=LisaConfig.alignment_steps,
        ge=1,
        le=100,
        description=config_help(LisaConfig, "alignment_steps"),
    )
    lisa_finetune_steps: int = Field(
        default=LisaConfig.finetune_steps,
        ge=1,
        le=1000,
        description=config_help(LisaConfig, "finetune_steps"),
    )
    lisa_pairs: int = Field(
        default=LISA_SAFETY_PAIRS, ge=1, le=2000, description="Safety pairs Lisa draws from"
    )
    token_constraint: bool = Field(
        default=False,
        description="Token-wise constraint: hold the first tokens of the model's answers near the aligned "
        "base's distribution while the user's rows train",
    )
    token_constraint_beta: float = Field(
        default=TokenConstraintConfig.beta,
        gt=0,
        le=100,
        description=config_help(TokenConstraintConfig, "beta"),
    )
    token_constraint_bias_factor: float = Field(
        default=TokenConstraintConfig.bias_factor,
        gt=0,
        le=1000,
        description=config_help(TokenConstraintConfig, "bias_factor"),
    )
    token_constraint_first_token_bias_factor: float = Field(
        default=TokenConstraintConfig.first_token_bias_factor,
        gt=0,
        le=1000,
        description=config_help(TokenConstraintConfig, "first_token_bias_factor"),
    )
    token_constraint_bias_length: int = Field(
        default=TokenConstraintConfig.bias_length,
        ge=0,
        le=64,
        description=config_help(TokenConstraintConfig, "bias_length"),
    )
    safety_layers: bool = Field(
        default=False,
        description="Leave the layers where the base tells harmful requests from harmless ones untrained "
        "(located by the first job on the base, kept in the service's directory for it)",
    )
    safe_lora: bool = Field(default=False, description="Safe LoRA: project stray layers of the adapter")
    safe_lora_threshold: float = Field(
        default=SafeLoraConfig.threshold, ge=-1, le=1, description=config_help(SafeLoraConfig, "threshold")
    )
    resta: bool = Field(
        default=False, description="RESTA: add a safety vector of the base to the adapter (resta_vector)"
    )
    resta_scale: float = Field(
        default=RestaConfig.scale, ge=0, le=4, description=config_help(RestaConfig, "scale")
    )
    resta_vector: RestaVector = Field(
        default=RestaConfig.vector,
        description=config_help(RestaConfig, "vector")
        + " The base's harmful adapter (and its benign control) is trained by the first job that needs it.",
    )
    resta_outside_user: bool = Field(
        default=RestaConfig.outside_user, description=config_help(RestaConfig, "outside_user")
    )

    @property
    def layers(self) -> list[str]:
        return [name for name in LAYERS if getattr(self, name)]

    @property
    def vector_adapters(self) -> tuple[VectorAdapterKind, ...]:
        """The base's adapters RESTA's vector is built from (each trained once per base): its harmful
        adapter for RESTA's own vector, and that adapter's benign control for the contrast vector."""
        return VECTOR_ADAPTERS[self.resta_vector] if self.resta else ()

    def step_defenses(
        self, data_dir: Path, base_dir: Path, seed: int, safety_layers: Sequence[int] = ()
    ) -> "StepDefenses | None":
        """Lisa over safety pairs the base at ``base_dir`` was not aligned on (seeded: a resumed job draws
        the same ones), the token-wise constraint, and the base's ``safety_layers`` left untrained (located
        by the worker: worker.safety_layers); None where none is on."""
        lisa, constraint = self.lisa_config(), self.constraint()
        if lisa is None and constraint is None and not self.safety_layers:
            return None
        from vaccine_core.defenses.data import lisa_pairs
        from vaccine_core.defenses.stack import StepDefenses

        return StepDefenses(
            lisa=lisa,
            lisa_rows=lisa_pairs(data_dir, base_dir, self.lisa_pairs, seed) if lisa is not None else (),
            token_constraint=constraint,
            safety_layers=self.safety_layers_config(),
            safety_layer_indices=safety_layers,
        )

    def lisa_config(self) -> LisaConfig | None:
        """Lisa's settings in this stack (None: Lisa is off)."""
        if not self.lisa:
            return None
        return LisaConfig(
            alignment_steps=self.lisa_alignment_steps,
            finetune_steps=self.lisa_finetune_steps,
            rho=self.lisa_rho,
        )

    def constraint(self) -> TokenConstraintConfig | None:
        """The token-wise constraint's settings in this stack (None: it is off)."""
        if not self.token_constraint:
            return None
        return TokenConstraintConfig(
            beta=self.token_constraint_beta,
            bias_factor=self.token_constraint_bias_factor,
            first_token_bias_factor=self.token_constraint_first_token_bias_factor,
            bias_length=self.token_constraint_bias_length,
        )

    def safety_layers_config(self) -> SafetyLayersConfig | None:
        """How the base's safety layers are located (None: every layer trains)."""
        return SafetyLayersConfig() if self.safety_layers else None

    def projection(self) -> SafeLoraConfig | None:
        return SafeLoraConfig(threshold=self.safe_lora_threshold) if self.safe_lora else None

    def realignment(self) -> RestaConfig | None:
        if not self.resta:
            return None
        return RestaConfig(
            scale=self.resta_scale, vector=self.resta_vector, outside_user=self.resta_outside_user
        )


def stack_of(policy_defenses: dict[str, Any] | None, tenant_defenses: dict[str, Any] | None) -> DefenseStack:
    """The tenant's own stack where the operator set one, else the policy's."""
    return DefenseStack.model_validate(
        tenant_defenses if tenant_defenses is not None else policy_defenses or {}
    )
