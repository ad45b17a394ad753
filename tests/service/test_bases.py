"""Base models (service/bases.py): one home for each alignment default, and compare-and-set status changes."""

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.embedded import register_default_base
from service import bases
from service.bases import SHIPPED_METHOD, AlignmentPlan, BoosterPlan
from service.db import get_engine
from service.models import ADOPT, BaseModelRecord, BaseStatus
from service.settings import get_service_settings
from vaccine_core.config import PerturbationConfig, alignment_defaults
from vaccine_core.defenses import BoosterConfig


def test_the_plan_takes_its_defaults_from_vaccine_core_and_its_method_from_the_service():
    plan = AlignmentPlan()
    assert (plan.method, plan.rho) == (SHIPPED_METHOD, PerturbationConfig.rho)
    assert plan.training() == alignment_defaults()
    assert plan.perturbation() == PerturbationConfig(SHIPPED_METHOD)
    assert BoosterPlan().model_dump() == {"lamb": BoosterConfig.lamb, "alpha": BoosterConfig.alpha}


def test_a_plan_stored_before_it_was_typed_still_reads():
    record = BaseModelRecord(
        id="old", source="default", alignment={"method": "sft", "rho": 0.0, "pairs": 8, "data": None}
    )
    plan = AlignmentPlan.of(record)
    assert plan.method == "sft" and plan.pairs == 8 and plan.booster is None and not plan.adopted
    assert AlignmentPlan.of(BaseModelRecord(id="adopted", source="/run", alignment={"method": ADOPT})).adopted


@pytest.mark.parametrize(
    "bad",
    [
        {"rho": -1},
        {"epochs": 0},
        {"pairs": 1},
        {"booster": {"alpha": 0}},
        {"sensitive": -1},
        {"pairs": 8, "sensitive": 5},
    ],
)
def test_out_of_bounds_plans_are_refused(bad):
    with pytest.raises(ValidationError):
        AlignmentPlan.model_validate(bad)


def test_the_embedded_default_is_registered_with_the_settings_plan(service):
    settings = get_service_settings()
    record = register_default_base(settings)
    plan = AlignmentPlan.of(record)
    assert plan.method == SHIPPED_METHOD == "sft"  # Vaccine measured no safer (README, protocol v2)
    assert (plan.pairs, plan.epochs) == (settings.default_alignment_pairs, settings.default_alignment_epochs)
    assert register_default_base(settings).alignment == record.alignment  # once


def test_status_changes_are_compare_and_set(service):
    with Session(get_engine()) as session:
        bases.register(session, name="b", source="default", plan=AlignmentPlan(method="sft"))
        assert bases.start_aligning(session, base_id="b")
        assert not bases.start_aligning(session, base_id="missing")
        assert bases.fail(session, base_id="b", error="disk full")
        assert not bases.fail(session, base_id="b", error="again")  # failed already: nothing to fail
        assert bases.start_aligning(session, base_id="b")  # a retry after a failure
        ran = AlignmentPlan(method="sft", data="/data/mix.jsonl")
        assert bases.ready(session, base_id="b", path="/bases/b", report={"hs": 0.1}, plan=ran)
        assert not bases.start_aligning(session, base_id="b")  # ready: left alone
        record = session.get(BaseModelRecord, "b")
        session.refresh(record)
        assert (record.status, record.error, record.path) == (BaseStatus.READY, None, "/bases/b")
        assert AlignmentPlan.of(record).data == "/data/mix.jsonl"
