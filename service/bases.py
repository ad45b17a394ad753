"""Base models: the typed plan a base is aligned by, its registration, and each change of its status.

A base's ``alignment`` column holds an ``AlignmentPlan`` as JSON. The plan's defaults come from
``vaccine_core``'s config classes (Vaccine's rho from ``PerturbationConfig``, the epochs from the
alignment training defaults, Booster's terms from ``BoosterConfig``), and the method from
``SHIPPED_METHOD``, so the admin API, the embedded default and the alignment task read one default
each. Status changes are compare-and-set updates, as the jobs' are (``service.jobs``): the API and a
worker may both touch a base.
"""

from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.defenses import config_help
from service.models import ADOPT, BaseModelRecord, BaseStatus, Job, JobStatus, now
from vaccine_core.config import PerturbationConfig, TrainingConfig, alignment_defaults
from vaccine_core.defenses.config import BoosterConfig

if TYPE_CHECKING:  # the code behind Booster loads torch: the worker's business, not the API's
    from vaccine_core.defenses.stack import StepDefenses

# Safety + helpful pairs (half each) of the default alignment mix when a plan names no data.
DEFAULT_PAIRS = 64

# The alignment a base gets unless its operator names one. SFT, not the library's Vaccine: under protocol
# v2 Vaccine was no safer than SFT in any counting cell and less safe in one (align120, sampled HS gap
# -5.5 [-10.8, -0.6]), at 1.6x SFT's alignment time on the default base (README, "Defense in depth").
SHIPPED_METHOD: Literal["vaccine", "sft"] = "sft"


class BoosterPlan(BaseModel):
    lamb: float = Field(
        default=BoosterConfig.lamb, ge=0, le=100, description=config_help(BoosterConfig, "lamb")
    )
    alpha: float = Field(
        default=BoosterConfig.alpha, gt=0, le=10, description=config_help(BoosterConfig, "alpha")
    )


class AlignmentPlan(BaseModel):
    """How a base is made safe before any user trains on it."""

    method: Literal["vaccine", "sft", "aligned"] = Field(
        default=SHIPPED_METHOD,
        description="'sft' (plain), 'vaccine' (perturbation-aware), or 'aligned': the source is an "
        "alignment run directory (`vaccine align` output) adopted as it is",
    )
    rho: float = Field(
        default=PerturbationConfig.rho, ge=0, le=100, description="Vaccine's perturbation radius"
    )
    pairs: int = Field(
        default=DEFAULT_PAIRS,
        ge=2,
        le=100_000,
        description="safety + helpful pairs, half each, when no data is given",
    )
    sensitive: int = Field(
        default=0,
        ge=0,
        le=200,
        description="of the default mix's helpful pairs, how many answer requests that only sound harmful "
        "(the base's own answers to this project's contrastive requests), so that alignment does not teach "
        "refusing every sensitive topic",
    )
    data: str | None = Field(default=None, description="an alignment file instead of the default mix")
    epochs: float = Field(
        default=alignment_defaults().epochs, gt=0, le=100, description="passes over the data"
    )
    booster: BoosterPlan | None = Field(
        default=None,
        description="Booster's attenuation term (combines with vaccine or sft); none when absent",
    )

    @model_validator(mode="after")
    def sensitive_fits_the_helpful_half(self) -> "AlignmentPlan":
        if self.sensitive > self.helpful_pairs:
            raise ValueError(
                f"sensitive ({self.sensitive}) exceeds the mix's {self.helpful_pairs} helpful pairs"
            )
        return self

    @property
    def safety_pairs(self) -> int:
        """The default mix's safety half (the helpful half takes an odd pair)."""
        return self.pairs // 2

    @property
    def helpful_pairs(self) -> int:
        return self.pairs - self.safety_pairs

    @classmethod
    def of(cls, record: BaseModelRecord) -> "AlignmentPlan":
        return cls.model_validate(record.alignment or {})

    @property
    def adopted(self) -> bool:
        return self.method == ADOPT

    def perturbation(self) -> PerturbationConfig:
        return PerturbationConfig(self.method, rho=self.rho)  # type: ignore[arg-type]

    def training(self) -> TrainingConfig:
        return replace(alignment_defaults(), epochs=self.epochs)

    def step_defenses(self, data_dir: Path) -> "StepDefenses | None":
        if self.booster is None:
            return None
        from vaccine_core.defenses import StepDefenses
        from vaccine_core.defenses.data import booster_pairs

        booster = BoosterConfig(**self.booster.model_dump())
        return StepDefenses(booster=booster, booster_rows=booster_pairs(data_dir))


def base_dir(home: Path, base_id: str) -> Path:
    """The service's own directory for a base: the aligned run it trained, or what it keeps beside a base
    it adopted (which it never writes into)."""
    return home / "bases" / base_id


def register(session: Session, *, name: str, source: str, plan: AlignmentPlan) -> BaseModelRecord:
    """A new base, ``registered``; aligning it is a worker's task, dispatched by the caller after this
    commit."""
    record = BaseModelRecord(
        id=name,
        source=source,
        status=BaseStatus.REGISTERED,
        alignment=plan.model_dump(mode="json"),
        dispatched_at=now(),  # the caller sends its alignment right after the commit
    )
    session.add(record)
    session.commit()
    return record


def _move(session: Session, base_id: str, allowed: Collection[str], **values: Any) -> bool:
    moved = session.execute(
        update(BaseModelRecord)
        .where(BaseModelRecord.id == base_id, BaseModelRecord.status.in_(list(allowed)))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return moved.rowcount == 1


def start_aligning(session: Session, *, base_id: str) -> bool:
    """Claim a base that is not ready for alignment (a retry after a failure too). False when it is ready
    already or missing."""
    return _move(
        session,
        base_id,
        (BaseStatus.REGISTERED, BaseStatus.ALIGNING, BaseStatus.FAILED),
        status=BaseStatus.ALIGNING,
        error=None,
    )


def record_progress(session: Session, *, base_id: str, progress: dict[str, Any]) -> None:
    _move(session, base_id, (BaseStatus.ALIGNING,), progress=progress)


def ready(session: Session, *, base_id: str, path: Path, report: dict[str, Any], plan: AlignmentPlan) -> bool:
    """Aligned and measured: users may fine-tune from it. The plan is stored as it ran (its data file
    named)."""
    return _move(
        session,
        base_id,
        (BaseStatus.ALIGNING,),
        status=BaseStatus.READY,
        path=str(path),
        report=report,
        alignment=plan.model_dump(mode="json"),
    )


def fail(session: Session, *, base_id: str, error: str) -> bool:
    return _move(session, base_id, (BaseStatus.ALIGNING,), status=BaseStatus.FAILED, error=error)


def waiting_jobs(session: Session, base_id: str) -> list[Job]:
    """Jobs queued on a base while it aligns."""
    return list(session.scalars(select(Job).where(Job.model == base_id, Job.status == JobStatus.QUEUED)))
