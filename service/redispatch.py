"""Messages a broker may have lost. A Redis restarted without persistence forgets what it held, and a
job, an upload's pre-screen or a base's alignment whose message is gone would wait for ever: each row
records when it was last handed to the broker, and a sweeper sends again what still waits long after."""

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from service.models import BaseModelRecord, BaseStatus, File, FileStatus, now


def restamp_unsent(
    session: Session,
    entity: type,
    *,
    waiting: Collection[str],
    sent_before: datetime,
    also: Collection[ColumnElement[bool]] = (),
) -> list[str]:
    """The ids of ``entity`` rows still in a ``waiting`` status that were last sent before ``sent_before``
    (or never), each stamped as sent now by a compare-and-set, so two sweepers do not both send it; the
    caller sends them. A duplicate of a message that was not lost is harmless: every task claims its row
    with a compare-and-set too."""
    unsent = entity.dispatched_at.is_(None) | (entity.dispatched_at < sent_before)
    candidates = session.scalars(
        select(entity.id).where(entity.status.in_(list(waiting)), unsent, *also)
    ).all()
    stamped = [
        identifier
        for identifier in candidates
        if session.execute(
            update(entity)
            .where(entity.id == identifier, entity.status.in_(list(waiting)), unsent)
            .values(dispatched_at=now())
            .execution_options(synchronize_session=False)
        ).rowcount
    ]
    session.commit()
    return stamped


def lost_prescreens(session: Session, *, sent_before: datetime) -> list[str]:
    """Uploads still waiting for their pre-screen long after it was sent."""
    return restamp_unsent(session, File, waiting=[FileStatus.UPLOADED], sent_before=sent_before)


def lost_alignments(session: Session, *, sent_before: datetime) -> list[str]:
    """Bases still waiting for a worker to start aligning them long after it was asked."""
    return restamp_unsent(session, BaseModelRecord, waiting=[BaseStatus.REGISTERED], sent_before=sent_before)
