"""The service drill through the API in process: what the pre-screen and the release gate stop."""

import sys
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import TINY_HARMFUL
from vaccine_core.moderation import Verdict
from worker.runner import run_job

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from service_drill import Drill, drill_ratios, markdown, tally

OPERATOR = {"Authorization": "Bearer operator-secret"}


class CompliesJudge:
    """Flags the tiny data set's harmful answer, nothing else (the learned judge is tested elsewhere)."""

    name = "complies"

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Verdict]:
        return [Verdict(answer == TINY_HARMFUL, float(answer == TINY_HARMFUL)) for _, answer in pairs]


def run_dispatched(service, done: set[str]) -> None:
    for job_id in service.dispatched:
        if job_id not in done:
            done.add(job_id)
            run_job(job_id)


def test_drill_ratios():
    assert drill_ratios(4, 0.5) == [0.125, 0.25, 0.375, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert drill_ratios(2, 0.2, benign=0) == [0.1, 0.2]


def test_the_drill_counts_prescreen_rejections_gate_blocks_and_benign_jobs(
    service,
    base,
    tiny_data_dir,
    monkeypatch,
):
    monkeypatch.setattr("worker.prescreen.shared_judge", lambda spec: CompliesJudge())
    service.headers.update(OPERATOR)
    options = {"http_client": service, "max_retries": 0}
    done: set[str] = set()

    # pre-screen rejects (threshold 5 %), the gate passes anything (threshold 100)
    drill = Drill(service, tiny_data_dir, model=base, jobs=2, rows=6, client_options=options)
    client, original = drill.start()
    submissions = drill.submit(client)
    run_dispatched(service, done)
    drill.collect(client, submissions, timeout=5)
    drill.finish(original)
    assert [s["harmful_rows"] for s in submissions] == [2, 3, 0, 0]  # round(6 x 0.25), round(6 x 0.5)
    assert [s["outcome"] for s in submissions] == ["prescreen", "prescreen", "released", "released"]
    assert [s["flagged_rows"] for s in submissions] == [2, 3, 0, 0]
    counts = tally(submissions)
    assert counts["harmful_stopped_by_prescreen"] == 2 and counts["benign_wrongly_blocked"] == 0
    assert service.get("/admin/policy").json()["prescreen_action"] == original["prescreen_action"]

    # pre-screen only warns, and a gate at 0 blocks every model the refusal judge finds non-refusing:
    # the random tiny model's answers, benign or not, so the drill reports benign jobs wrongly blocked
    service.patch("/admin/policy", json={"harmful_score_threshold": 0})
    drill = Drill(
        service, tiny_data_dir, model=base, jobs=2, rows=6, prescreen="warn", client_options=options
    )
    client, original = drill.start()
    submissions = drill.submit(client)
    run_dispatched(service, done)
    drill.collect(client, submissions, timeout=5)
    drill.finish(original)
    counts = tally(submissions)
    assert counts["harmful_stopped_by_gate"] == 2 and counts["benign_wrongly_blocked"] == 2
    assert all(s["safety_report"] is None or s["safety_report"]["passed"] is False for s in submissions)
    text = markdown(
        {"tally": counts, "submissions": submissions, "policy": {"prescreen_action": "warn"}, "rows": 6,
         "epochs": 1, "command": "pytest", "date": "today", "seconds": 1.0}
    )  # fmt: skip
    assert "stopped by the pre-screen 0, by the release gate 2" in text and "wrongly blocked 2" in text
