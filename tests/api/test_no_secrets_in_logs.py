"""Nothing a tenant sends in confidence reaches the logs: a full job's records and output, read at DEBUG,
hold neither its key, nor the operator's, nor a word of its training text."""

import logging

from sqlalchemy.orm import Session

from service.db import get_engine
from service.models import Job
from tests.service_helpers import jsonl, tenant_client
from worker.runner import run_job

SECRET_TEXT = "zanzibar-quokka-7741"  # in every training row, and nowhere else
ROWS = [{"instruction": f"Recite {SECRET_TEXT} {i}", "output": f"{SECRET_TEXT} {i}"} for i in range(8)]
OPERATOR = {"Authorization": "Bearer operator-secret"}


def test_a_full_job_logs_no_key_and_no_training_text(service, base, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    client = tenant_client(service, "acme")
    training = client.files.create(file=("secret.jsonl", jsonl(ROWS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=base, training_file=training.id)
    assert run_job(job.id) == "succeeded"
    model = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    assert service.get(f"/v1/models/{model}/content", headers=client.auth_headers).status_code == 200
    assert service.get("/admin/jobs", headers=OPERATOR).status_code == 200
    with Session(get_engine()) as session:  # the job did read the text: it trained on it
        assert session.get(Job, job.id).trained_tokens > 0

    captured = capfd.readouterr()
    logs = "\n".join([caplog.text, captured.out, captured.err])
    assert caplog.records  # the job did log: the check reads something
    for secret in (client.api_key, "operator-secret", SECRET_TEXT):
        assert secret not in logs, f"{secret[:6]}... reached the logs"
