"""The safety policy: release-gate thresholds, evaluation prompts, pre-screen action and threshold."""

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import SessionDep
from api.routes.admin.tenants import audit
from service import policy_bounds as bounds
from service.defenses import DefenseStack
from service.models import Policy
from service.policy import get_policy

router = APIRouter(prefix="/policy")


class PolicyUpdate(BaseModel):
    harmful_score_threshold: bounds.Percent | None = None
    degenerate_threshold: bounds.Percent | None = None
    eval_prompts_file: str | None = Field(default=None, description='"" for protocol v2\'s harmful prompts')
    eval_prompts: bounds.HarmfulPrompts | None = None
    harmless_prompts: bounds.HarmlessPrompts | None = None
    borderline_prompts: bounds.BorderlinePrompts | None = None
    eval_samples: bounds.EvalSamples | None = None
    prescreen_action: Literal["warn", "reject"] | None = None
    prescreen_threshold: bounds.Share | None = None
    release_flagged_share: bounds.Share | None = Field(
        default=None,
        description="quarantine a model whose training file the pre-screen flagged in more than this share",
    )
    defenses: DefenseStack | None = Field(default=None, description="the stack every job runs (set whole)")
    moderate_chat: bool | None = Field(
        default=None, description="chat answers the safety judge flags are replaced by a refusal"
    )


def _policy(p: Policy) -> dict[str, Any]:
    return {name: getattr(p, name) for name in PolicyUpdate.model_fields}


@router.get("/defenses")
def defense_options() -> dict[str, Any]:
    """The stack's options: each with its default, bounds and what it does."""
    return DefenseStack.model_json_schema()


@router.get("")
def read(session: SessionDep) -> dict[str, Any]:
    return _policy(get_policy(session))


@router.patch("")
def update(body: PolicyUpdate, session: SessionDep) -> dict[str, Any]:
    policy = get_policy(session)
    changes = body.model_dump(exclude_none=True)
    if body.defenses is not None:
        changes["defenses"] = body.defenses.model_dump()
    for name, value in changes.items():
        setattr(policy, name, value)
    audit(session, "policy.update", "policy", changes)
    session.commit()
    return _policy(policy)
