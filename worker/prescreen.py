"""The moderation pre-screen of an uploaded file, as a worker task (OpenAI's file life cycle: uploaded ->
processed | error), and what it unblocks: jobs that were validating that file.

The API validates a file's structure at once (every problem by line and field) and hands the judge's
part to a worker, so no request waits for a judge to load or, on a first start, to train.
"""

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from service import files, jobs
from service.db import get_engine
from service.models import File, FileStatus
from service.policy import get_policy
from service.settings import get_service_settings
from service.warmup import untrained
from vaccine_core.moderation import shared_judge
from vaccine_core.moderation.prescreen import prescreen

log = logging.getLogger(__name__)


def warm_prescreen(spec: str) -> None:
    """Load the pre-screen's judge ``spec`` once, training on first use what it needs (with the service's
    defaults the base's alignment report has trained the default judge: what is left is the intent gate),
    so that a first start's first upload waits for nothing. A failure here leaves the first upload to try
    again and, failing, to say why."""
    if not untrained(spec):
        return
    try:
        shared_judge(spec)
    except Exception:
        log.exception("preparing the pre-screen's judge (%s) failed; the first upload tries again", spec)


def prescreen_file(file_id: str, dispatch: Callable[[str], None]) -> str:
    """Judge ``file_id``'s rows under the policy; mark it processed (a warning when above the threshold and
    the policy warns) or error (the policy rejects: its rows are deleted); then start or fail the jobs
    waiting on it. Idempotent: a file already judged is left alone."""
    sessions = sessionmaker(get_engine(), expire_on_commit=False)
    with sessions() as session:
        row = session.get(File, file_id)
        if row is None or row.status != FileStatus.UPLOADED:
            return "missing" if row is None else row.status
        policy = get_policy(session)
        action, threshold = policy.prescreen_action, policy.prescreen_threshold
        spec = get_service_settings().prescreen_judge
        message = f"The pre-screen's judge ({spec}) is training on first use (once; /readyz shows it)"
        # a first start's upload says why its validation takes minutes (once, if the task is redelivered)
        if untrained(spec) and message not in (row.status_details or ""):
            row.status_details = "; ".join(filter(None, [row.status_details, message]))
            jobs.note_validating(session, file_id=file_id, message=message)
            session.commit()
    try:
        report = prescreen(files.parsed_rows(row), shared_judge(spec))
    except Exception as exc:  # every file ends in a state its owner can read
        log.exception("pre-screening %s failed", file_id)
        message = f"The pre-screen failed: {exc}"
        return settle(sessions, file_id, FileStatus.ERROR, message, None, dispatch)
    screen = report.to_dict()
    lines = [flagged["line"] for flagged in screen["flagged"]]
    details = (
        f"{report.rows} examples; pre-screen ({report.judge}): {len(lines)} of {report.rows} rows flagged "
        f"({100 * report.flagged_share:.1f} %)"
        + (f", lines {', '.join(map(str, lines[:20]))}{' ...' if len(lines) > 20 else ''}" if lines else "")
    )
    if report.flagged_share > threshold and action == "reject":
        files.discard_contents(row)  # rows the policy refuses are not kept
        message = f"More than {100 * threshold:.1f} % of the rows flagged as harmful: {details}"
        return settle(sessions, file_id, FileStatus.ERROR, message, screen, dispatch)
    if report.flagged_share > threshold:
        details = f"warning: above the pre-screen threshold of {100 * threshold:.1f} %; {details}"
    return settle(sessions, file_id, FileStatus.PROCESSED, details, screen, dispatch)


def settle(
    sessions: sessionmaker[Session],
    file_id: str,
    status: FileStatus,
    details: str,
    screen: dict | None,
    dispatch: Callable[[str], None],
) -> str:
    """Record the file's verdict, then queue (and dispatch) or fail each job that was validating it."""
    with sessions() as session:
        row = session.get(File, file_id)
        row.status, row.status_details, row.prescreen = status, details, screen
        session.commit()
        ready = jobs.settle_validating(session, file_ids=[file_id])
    for job_id in ready:
        dispatch(job_id)
    return status
