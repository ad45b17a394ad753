"""The operator's policy, read from the database (first read: the settings' defaults)."""

from sqlalchemy.orm import Session

from service.models import Policy
from service.settings import ServiceSettings, get_service_settings

PRESCREEN_ACTIONS = ("warn", "reject")


def default_policy(settings: ServiceSettings) -> Policy:
    """The policy a fresh service starts with: the settings' defaults (not stored)."""
    return Policy(
        id=1,
        harmful_score_threshold=settings.harmful_score_threshold,
        eval_prompts_file=settings.eval_prompts_file,
        eval_prompts=settings.eval_prompts,
        harmless_prompts=settings.harmless_prompts,
        borderline_prompts=settings.borderline_prompts,
        eval_samples=settings.eval_samples,
        degenerate_threshold=settings.degenerate_threshold,
        prescreen_action=settings.prescreen_action,
        prescreen_threshold=settings.prescreen_threshold,
        release_flagged_share=settings.release_flagged_share,
        defenses=settings.defense_stack.model_dump(),
        moderate_chat=settings.moderate_chat,
    )


def get_policy(session: Session) -> Policy:
    policy = session.get(Policy, 1)
    if policy is None:
        policy = default_policy(get_service_settings())
        session.add(policy)
        session.commit()
    elif policy.defenses is None:  # a policy from before defense stacks: the settings' stack
        policy.defenses = get_service_settings().defense_stack.model_dump()
        session.commit()
    return policy
