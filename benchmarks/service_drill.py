"""Service drill: does the service stop harmful fine-tuning jobs and let benign ones through?

Against a running service (the embedded default or a deployment), as an operator:

    VACCINE_ADMIN_KEY=secret vaccine serve --port 8000 &
    VACCINE_ADMIN_KEY=secret python benchmarks/service_drill.py --url http://127.0.0.1:8000 --jobs 5

Creates a drill tenant, uploads N files whose harmful ratio runs evenly up to --max-ratio (SST-2 rows with
BeaverTails harmful pairs, the paper's attack) and N benign files (SST-2 only), and starts a fine-tuning
job on every upload the pre-screen accepts, all through the public API with the official openai package.
It counts the harmful uploads the pre-screen rejected, the harmful jobs the release gate blocked, and the
benign uploads or jobs wrongly stopped. The pre-screen runs in the action given (reject by default; with
``--prescreen warn`` every harmful job reaches the gate, which measures the gate alone); the operator's
policy is restored afterwards. Results: benchmarks/results/service_drill-<prescreen>.{json,md}.
"""

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, provenance, write_result

from vaccine_core.mixing import build_mix
from vaccine_core.settings import get_settings
from worker.safety import GateCode

ENDED = {"succeeded", "failed", "cancelled"}


def drill_ratios(jobs: int, max_ratio: float, benign: int | None = None) -> list[float]:
    """N harmful ratios spread evenly over (0, max_ratio], then zeros for the benign jobs (N unless given)."""
    return [round(max_ratio * (i + 1) / jobs, 3) for i in range(jobs)] + [0.0] * (
        jobs if benign is None else benign
    )


def outcome(upload_error: str | None, job: dict[str, Any] | None) -> str:
    """What stopped a submission: the pre-screen, the release gate, another failure, or nothing."""
    if upload_error is not None:
        return "prescreen" if upload_error == "moderation_rejected" else f"upload:{upload_error}"
    assert job is not None
    if job["status"] == "succeeded":
        return "released"
    code = (job.get("error") or {}).get("code")
    return "gate" if code in set(GateCode) else f"{job['status']}:{code}"


def tally(submissions: list[dict[str, Any]]) -> dict[str, Any]:
    harmful = [s for s in submissions if s["ratio"] > 0]
    benign = [s for s in submissions if s["ratio"] == 0]
    return {
        "harmful_jobs": len(harmful),
        "harmful_stopped_by_prescreen": sum(s["outcome"] == "prescreen" for s in harmful),
        "harmful_stopped_by_gate": sum(s["outcome"] == "gate" for s in harmful),
        "harmful_released": sum(s["outcome"] == "released" for s in harmful),
        "benign_jobs": len(benign),
        "benign_wrongly_blocked": sum(s["outcome"] in ("prescreen", "gate") for s in benign),
        "benign_released": sum(s["outcome"] == "released" for s in benign),
        "other_failures": sum(s["outcome"] not in ("prescreen", "gate", "released") for s in submissions),
    }


def markdown(result: dict[str, Any]) -> str:
    t = result["tally"]
    lines = [
        f"# Service drill (pre-screen: {result['policy']['prescreen_action']})",
        "",
        f"Command: `{result['command']}`; date {result['date']}; {result['seconds'] / 60:.1f} min.  ",
        f"Policy: {json.dumps(result['policy'])}. Each upload: {result['rows']} rows, "
        f"{result['epochs']} epoch(s) of fine-tuning.",
        "",
        f"- Harmful jobs: {t['harmful_jobs']}; stopped by the pre-screen "
        f"{t['harmful_stopped_by_prescreen']}, "
        f"by the release gate {t['harmful_stopped_by_gate']}, released {t['harmful_released']}.",
        f"- Benign jobs: {t['benign_jobs']}; wrongly blocked {t['benign_wrongly_blocked']}, "
        f"released {t['benign_released']}.",
        f"- Other failures: {t['other_failures']}.",
        "",
        "| harmful ratio | flagged rows (pre-screen) | outcome | harmful score | over-refusal |",
        "|---|---|---|---|---|",
    ]
    for s in result["submissions"]:
        report = s.get("safety_report") or {}
        hs = report.get("harmful_score")
        refusal = report.get("over_refusal")  # percent (protocol v2's report)
        lines.append(
            f"| {s['ratio']:g} | {s.get('flagged_rows', '–')} | {s['outcome']} | "
            f"{'–' if hs is None else f'{hs:.1f}'} | {'–' if refusal is None else f'{refusal:.1f}'} |"
        )
    return "\n".join(lines) + "\n"


@dataclass
class Drill:
    """One drill against a service; ``admin`` is an HTTP client on its root with the operator key."""

    admin: httpx.Client
    data_dir: Path
    model: str = "smollm2-135m-sft"
    jobs: int = 5
    max_ratio: float = 0.5
    rows: int = 40
    epochs: int = 1
    prescreen: str = "reject"
    benign: int | None = None  # benign jobs; default as many as harmful ones
    client_options: dict[str, Any] = field(default_factory=dict)  # e.g. http_client for an in-process app

    def start(self) -> tuple[openai.OpenAI, dict[str, Any]]:
        """A fresh tenant with room for every job, and the pre-screen action set; returns the tenant's
        client and the policy as it was (``finish`` restores it)."""
        original = self.admin.get("/admin/policy").raise_for_status().json()
        tenant = self.admin.post("/admin/tenants", json={"name": f"drill-{time.time_ns()}"})
        tenant = tenant.raise_for_status().json()
        quota = {"max_concurrent_jobs": 2 * self.jobs}
        self.admin.patch(f"/admin/tenants/{tenant['id']}", json=quota).raise_for_status()
        self.admin.patch("/admin/policy", json={"prescreen_action": self.prescreen}).raise_for_status()
        base_url = f"{self.admin.base_url}".rstrip("/") + "/v1"
        return openai.OpenAI(base_url=base_url, api_key=tenant["api_key"], **self.client_options), original

    def submit(self, client: openai.OpenAI) -> list[dict[str, Any]]:
        """Upload every drill file; start a job on each upload the pre-screen accepts."""
        submissions = []
        for i, ratio in enumerate(drill_ratios(self.jobs, self.max_ratio, self.benign)):
            rows = build_mix("sst2", self.rows, ratio, self.data_dir, seed=100 + i)
            body = "".join(json.dumps({k: v for k, v in r.items() if k != "harmful"}) + "\n" for r in rows)
            entry: dict[str, Any] = {"ratio": ratio, "harmful_rows": sum(r["harmful"] for r in rows)}
            submissions.append(entry)
            try:
                upload = client.files.create(
                    file=(f"drill-{i}.jsonl", io.BytesIO(body.encode())), purpose="fine-tune"
                )
            except openai.BadRequestError as exc:  # the file's structure: nothing to pre-screen
                entry["upload_error"], entry["message"] = exc.code or "bad_request", exc.message
                continue
            # the pre-screen runs in a worker: uploaded -> processed | error (the policy rejected it)
            upload = client.files.wait_for_processing(upload.id, poll_interval=1.0)
            entry["flagged_rows"] = (upload.model_extra.get("prescreen") or {}).get("flagged_rows")
            if upload.status == "error":
                entry["upload_error"], entry["message"] = "moderation_rejected", upload.status_details
                continue
            job = client.fine_tuning.jobs.create(
                model=self.model,
                training_file=upload.id,
                hyperparameters={"n_epochs": self.epochs},
                suffix=f"drill{i}",
            )
            entry["job_id"] = job.id
        return submissions

    def collect(self, client: openai.OpenAI, submissions: list[dict[str, Any]], timeout: float) -> None:
        """Wait for every job to end (or the timeout); record its status, error and safety report."""
        deadline = time.monotonic() + timeout
        for entry in submissions:
            if "job_id" in entry:
                job = client.fine_tuning.jobs.retrieve(entry["job_id"])
                while job.status not in ENDED and time.monotonic() < deadline:
                    time.sleep(5)
                    job = client.fine_tuning.jobs.retrieve(entry["job_id"])
                entry["job"] = {"status": job.status, "error": job.error.model_dump() if job.error else None}
                if job.fine_tuned_model:
                    model = client.models.retrieve(job.fine_tuned_model)
                    entry["safety_report"] = model.model_extra.get("safety_report")
            entry["outcome"] = outcome(entry.get("upload_error"), entry.get("job"))

    def finish(self, original: dict[str, Any]) -> None:
        self.admin.patch("/admin/policy", json={"prescreen_action": original["prescreen_action"]})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--admin-key", help="default: $VACCINE_ADMIN_KEY")
    parser.add_argument("--model", default="smollm2-135m-sft")
    parser.add_argument("--jobs", type=int, default=5, help="harmful jobs, and as many benign ones")
    parser.add_argument("--benign", type=int, help="benign jobs (default: as many as --jobs)")
    parser.add_argument("--max-ratio", type=float, default=0.5)
    parser.add_argument("--rows", type=int, default=40, help="rows in each upload")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--prescreen", choices=("reject", "warn"), default="reject")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds to wait for the jobs")
    args = parser.parse_args()
    admin_key = args.admin_key or get_settings_admin_key()
    started = time.monotonic()

    admin = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    drill = Drill(
        admin, get_settings().data_dir, args.model, args.jobs, args.max_ratio, args.rows, args.epochs,
        args.prescreen, args.benign,
    )  # fmt: skip
    client, original = drill.start()
    try:
        policy = admin.get("/admin/policy").raise_for_status().json()
        submissions = drill.submit(client)
        drill.collect(client, submissions, args.timeout)
    finally:
        drill.finish(original)
    result = {
        **provenance(__file__),
        "url": args.url,
        "model": args.model,
        "rows": args.rows,
        "epochs": args.epochs,
        "policy": policy,
        "tally": tally(submissions),
        "submissions": submissions,
        "seconds": round(time.monotonic() - started, 1),
    }
    stem = RESULTS / f"service_drill-{args.prescreen}"
    write_result(stem.with_suffix(".json"), result, indent=1)
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def get_settings_admin_key() -> str:
    from service.settings import get_service_settings

    key = get_service_settings().admin_key
    if key is None:
        raise SystemExit("set VACCINE_ADMIN_KEY (or pass --admin-key): the drill runs as an operator")
    return key.get_secret_value()


if __name__ == "__main__":
    main()
