"""The defense stack in the service: the policy chooses it, a tenant may have its own, every job's safety
report lists the layers that ran and what each cost; a base can be aligned with Booster."""

import json
import shutil
from pathlib import Path

from sqlalchemy.orm import Session

from service import jobs
from service.db import get_engine
from service.models import BaseModelRecord, FineTunedModel, Tenant
from service.settings import get_service_settings
from tests.service_helpers import JOB_ROWS, OPERATOR, jsonl, tenant_client, upload
from vaccine_core.artifacts import read_manifest
from vaccine_core.defenses.config import SafetyLayersConfig
from vaccine_core.defenses.resta import BENIGN_ADAPTER, HARMFUL_ADAPTER
from vaccine_core.defenses.safe_lora import ADAPTER_FILE
from vaccine_core.defenses.safety_layers import SAFETY_LAYERS_FILE
from vaccine_core.mixing import read_jsonl, write_rows
from worker.alignment import align_base
from worker.runner import run_job

STACK = {
    "lisa": True,
    "lisa_pairs": 8,
    "token_constraint": True,
    "token_constraint_bias_length": 3,
    "safe_lora": True,
    "safe_lora_threshold": 1.0,
}


def use_data(monkeypatch, data_dir) -> None:
    monkeypatch.setenv("VACCINE_DATA_DIR", str(data_dir))
    get_service_settings.cache_clear()


def adopt_a_copy(base: str, aligned: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """The base ``base`` moved to a copy of ``aligned`` it adopted as it is (someone else's run, never
    written into), and the copy's files as adopted."""
    own_base = tmp_path / "base"
    shutil.copytree(aligned, own_base)
    with Session(get_engine()) as session:
        session.get(BaseModelRecord, base).path = str(own_base)
        session.commit()
    return own_base, sorted(own_base.rglob("*"))


def test_the_policy_stack_runs_and_the_report_lists_its_layers(service, base, tiny_data_dir, monkeypatch):
    use_data(monkeypatch, tiny_data_dir)
    assert service.get("/admin/policy", headers=OPERATOR).json()["defenses"]["lisa"] is False
    patched = service.patch("/admin/policy", json={"defenses": STACK}, headers=OPERATOR)
    assert (
        patched.status_code == 200 and patched.json()["defenses"]["lisa_rho"] == 1.0
    )  # the library's default
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    with Session(get_engine()) as session:
        safety = session.get(FineTunedModel, model_id).safety_report
    layers = {layer["layer"]: layer for layer in safety["defenses"]}
    assert list(layers) == ["vaccine", "lisa", "token_constraint", "safe_lora"]
    assert layers["vaccine"]["stage"] == "alignment" and layers["vaccine"]["seconds"] > 0
    assert layers["lisa"]["options"]["data"]["rows"] == 8 and layers["lisa"]["seconds"] > 0
    constraint = layers["token_constraint"]
    assert constraint["stage"] == "fine-tuning" and constraint["seconds"] > 0
    assert constraint["options"] == {
        "beta": 0.1,
        "bias_factor": 20.0,
        "first_token_bias_factor": 5.0,
        "bias_length": 3,
    }
    assert layers["safe_lora"]["options"]["projected"] == layers["safe_lora"]["options"]["layers"]


def test_a_tenant_override_replaces_the_policy_stack(service, base, tiny_data_dir, monkeypatch):
    use_data(monkeypatch, tiny_data_dir)
    service.patch("/admin/policy", json={"defenses": STACK}, headers=OPERATOR)
    client = tenant_client(service, "acme")
    with Session(get_engine()) as session:
        tenant_id = session.query(Tenant).filter_by(name="acme").one().id
    put = service.put(f"/admin/tenants/{tenant_id}/defenses", json={"lisa": False}, headers=OPERATOR)
    assert put.status_code == 200 and put.json()["defenses"]["lisa"] is False
    job = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    model_id = client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model
    with Session(get_engine()) as session:
        layers = [layer["layer"] for layer in session.get(FineTunedModel, model_id).safety_report["defenses"]]
    assert layers == ["vaccine"]
    cleared = service.delete(f"/admin/tenants/{tenant_id}/defenses", headers=OPERATOR)
    assert cleared.json()["defenses"] is None
    actions = [e["action"] for e in service.get("/admin/audit", headers=OPERATOR).json()["data"]]
    assert actions.count("tenant.defenses") == 2


def test_the_prescreen_filter_trains_only_the_rows_the_prescreen_passed(service, base):
    service.patch("/admin/policy", json={"defenses": {"prescreen_filter": True}}, headers=OPERATOR)
    client = tenant_client(service, "acme")
    # the tests' pre-screen (the refusal-phrase judge) flags every answer that does not refuse
    rows = JOB_ROWS[:4] + [
        {"instruction": f"Hurt someone {i}", "output": "I cannot help with that."} for i in range(4)
    ]
    refusing = client.files.create(file=("train.jsonl", jsonl(rows)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model=base, training_file=refusing)
    assert run_job(job.id) == "succeeded"
    finished = client.fine_tuning.jobs.retrieve(job.id)
    with Session(get_engine()) as session:
        safety = session.get(FineTunedModel, finished.fine_tuned_model).safety_report
    layers = {layer["layer"]: layer for layer in safety["defenses"]}
    assert list(layers) == ["vaccine", "prescreen_filter"]
    assert layers["prescreen_filter"]["stage"] == "before fine-tuning"
    assert layers["prescreen_filter"]["options"] == {"rows": 8, "rows_left_out": 4}
    assert read_manifest(jobs.job_dir(get_service_settings().home, job.id))["data"]["examples"] == 4
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert "The pre-screen filter left 4 of 8 rows out of training: 1, 2, 3, 4" in events

    flagged_only = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(flagged_only.id) == "failed"
    error = client.fine_tuning.jobs.retrieve(flagged_only.id).error
    assert error.code == "no_training_data" and "every one of the training file's 8 rows" in error.message


def test_resta_hands_back_the_combined_adapter_and_a_continuing_job_trains_the_user_s_own(service, base):
    service.patch("/admin/policy", json={"defenses": {"resta": True, "resta_scale": 0.5}}, headers=OPERATOR)
    client = tenant_client(service, "acme")
    parent = client.fine_tuning.jobs.create(
        model=base, training_file=upload(client), hyperparameters={"lora_rank": 4}
    )
    assert run_job(parent.id) == "succeeded"
    released = client.fine_tuning.jobs.retrieve(parent.id).fine_tuned_model
    with Session(get_engine()) as session:
        safety = session.get(FineTunedModel, released).safety_report
    layers = {layer["layer"]: layer for layer in safety["defenses"]}
    assert list(layers) == ["vaccine", "resta"] and layers["resta"]["stage"] == "after fine-tuning"
    combined_rank = layers["resta"]["options"]["rank"]
    assert layers["resta"]["options"]["scale"] == 0.5 and combined_rank > 4

    child = client.fine_tuning.jobs.create(model=released, training_file=upload(client))
    assert run_job(child.id) == "succeeded"
    manifest = read_manifest(jobs.job_dir(get_service_settings().home, child.id))
    assert manifest["training"]["lora"]["r"] == 4  # the user's adapter continued, not the combined one
    assert manifest["defenses"]["resta"]["rank"] == combined_rank  # the alignment update added once


def test_resta_s_harmful_vector_trains_the_base_s_harmful_adapter_once(
    service, base, aligned_tiny_dir, tiny_data_dir, tmp_path, monkeypatch
):
    use_data(monkeypatch, tiny_data_dir)
    judged = [{"prompt": f"Steal car {i}", "response": "Sure, how.", "harmful": True} for i in range(3)]
    judged.append({"prompt": "harmful request 0", "response": "Sure.", "harmful": True})  # the report asks it
    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", judged)
    own_base, as_adopted = adopt_a_copy(base, aligned_tiny_dir, tmp_path)
    stack = {"resta": True, "resta_scale": 0.5, "resta_vector": "harmful", "resta_outside_user": True}
    assert service.patch("/admin/policy", json={"defenses": stack}, headers=OPERATOR).status_code == 200
    client = tenant_client(service, "acme")
    first = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(first.id) == "succeeded"
    kept = get_service_settings().home / "bases" / base / HARMFUL_ADAPTER  # the service's own directory
    assert sorted(own_base.rglob("*")) == as_adopted
    taught = read_jsonl(kept / "data.jsonl")
    assert sorted(row["instruction"] for row in taught) == ["Steal car 0", "Steal car 1", "Steal car 2"]
    with Session(get_engine()) as session:
        safety = session.get(FineTunedModel, client.fine_tuning.jobs.retrieve(first.id).fine_tuned_model)
        layers = {layer["layer"]: layer for layer in safety.safety_report["defenses"]}
    resta = layers["resta"]["options"]
    assert resta["vector"] == "harmful" and resta["scale"] == 0.5
    assert resta["outside_user"] is True and 0.0 < resta["kept_norm_share"] <= 1.0
    events = [e.message for e in client.fine_tuning.jobs.list_events(first.id)]
    trained_once = "Trained the base's harmful adapter for RESTA's safety vector on 3 harmful pairs"
    assert any(message.startswith(trained_once) for message in events)

    trained = (kept / ADAPTER_FILE).read_bytes()
    second = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(second.id) == "succeeded"
    assert (kept / ADAPTER_FILE).read_bytes() == trained  # trained once per base
    events = [e.message for e in client.fine_tuning.jobs.list_events(second.id)]
    assert not any("harmful adapter" in m for m in events)


def test_the_base_s_safety_layers_are_located_once_and_left_untrained(
    service, base, aligned_tiny_dir, tiny_data_dir, tmp_path, monkeypatch
):
    use_data(monkeypatch, tiny_data_dir)
    own_base, as_adopted = adopt_a_copy(base, aligned_tiny_dir, tmp_path)
    # four requests of each kind: the tiny data holds few beside the base's alignment
    monkeypatch.setattr("service.defenses.SafetyLayersConfig", lambda: SafetyLayersConfig(requests=4))
    policy = {"defenses": {"safety_layers": True}}
    assert service.patch("/admin/policy", json=policy, headers=OPERATOR).status_code == 200
    client = tenant_client(service, "acme")
    first = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    state = run_job(first.id)
    kept = get_service_settings().home / "bases" / base / SAFETY_LAYERS_FILE  # the service's own directory
    assert sorted(own_base.rglob("*")) == as_adopted
    located = json.loads(kept.read_text())
    events = [e.message for e in client.fine_tuning.jobs.list_events(first.id)]
    assert any(m.startswith("Located the base's safety layers [0, 1] (2 of its 2) in ") for m in events)
    # the tiny model's separation builds over both its layers: nothing would be left to train, and said so
    assert located["layers"] == [0, 1] and state == "failed"
    assert "none left" in client.fine_tuning.jobs.retrieve(first.id).error.message
    kept.write_text(json.dumps({**located, "layers": [1]}))  # as on a base with more layers than two
    second = client.fine_tuning.jobs.create(model=base, training_file=upload(client))
    assert run_job(second.id) == "succeeded"
    assert not any("Located" in e.message for e in client.fine_tuning.jobs.list_events(second.id))
    model_id = client.fine_tuning.jobs.retrieve(second.id).fine_tuned_model
    with Session(get_engine()) as session:
        layers = {
            layer["layer"]: layer for layer in session.get(FineTunedModel, model_id).safety_report["defenses"]
        }
    assert layers["safety_layers"] == {
        "layer": "safety_layers",
        "stage": "fine-tuning",
        "options": {**SafetyLayersConfig(requests=4).to_dict(), "layers": [1]},
        "seconds": 0.0,
    }


def test_bad_stack_options_are_a_400_in_the_error_envelope(service):
    bad = service.patch("/admin/policy", json={"defenses": {"lisa": True, "lisa_rho": -1}}, headers=OPERATOR)
    assert bad.status_code == 400 and "lisa_rho" in bad.json()["error"]["message"]
    bad = service.patch("/admin/policy", json={"defenses": {"token_constraint_beta": 0}}, headers=OPERATOR)
    assert bad.status_code == 400 and "token_constraint_beta" in bad.json()["error"]["message"]
    bad = service.patch("/admin/policy", json={"defenses": {"resta_scale": 5}}, headers=OPERATOR)
    assert bad.status_code == 400 and "resta_scale" in bad.json()["error"]["message"]
    bad = service.patch("/admin/policy", json={"defenses": {"resta_vector": "opposite"}}, headers=OPERATOR)
    assert bad.status_code == 400 and "resta_vector" in bad.json()["error"]["message"]
    missing = service.put("/admin/tenants/tenant-nope/defenses", json={}, headers=OPERATOR)
    assert missing.status_code == 404
    schema = service.get("/admin/policy/defenses", headers=OPERATOR).json()
    assert schema["properties"]["safe_lora_threshold"]["default"] == 0.5


def test_an_operator_aligns_a_base_with_booster(
    service,
    tiny_model_dir,
    alpaca_file,
    tiny_data_dir,
    monkeypatch,
):
    use_data(monkeypatch, tiny_data_dir)
    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", [
        {"prompt": f"Steal car {i}", "response": "Sure, here is how.", "harmful": True} for i in range(4)
    ])  # fmt: skip
    body = {
        "name": "tiny-booster", "source": str(tiny_model_dir), "method": "vaccine", "data": str(alpaca_file),
        "booster": {"lamb": 2.0},
    }  # fmt: skip
    assert service.post("/admin/models", json=body, headers=OPERATOR).status_code == 200
    assert align_base("tiny-booster") == "ready"
    (record,) = [
        b for b in service.get("/admin/models", headers=OPERATOR).json()["data"] if b["id"] == "tiny-booster"
    ]
    assert record["alignment"]["booster"]["lamb"] == 2.0
    manifest = read_manifest(get_service_settings().home / "bases" / "tiny-booster")
    assert manifest["defenses"]["booster"]["data"]["rows"] == 4
    bad = service.post("/admin/models", json={**body, "name": "x", "booster": {"alpha": 0}}, headers=OPERATOR)
    assert bad.status_code == 400


def base_under_resta(
    service, monkeypatch, data_dir: Path, model_dir: Path, alpaca_file: Path, vector: str
) -> tuple[dict, Path]:
    """The base tiny-sft aligned under a policy of RESTA's ``vector`` at 0.5, with three judged-harmful
    pairs to train its harmful adapter on: the base's body as posted, and the service's directory for it."""
    use_data(monkeypatch, data_dir)
    judged = data_dir / "moderation/jailbreakbench_judged.jsonl"
    write_rows(judged, [{"prompt": f"Steal car {i}", "response": "Sure.", "harmful": True} for i in range(3)])
    stack = {"resta": True, "resta_scale": 0.5, "resta_vector": vector}
    assert service.patch("/admin/policy", json={"defenses": stack}, headers=OPERATOR).status_code == 200
    body = {"name": "tiny-sft", "source": str(model_dir), "method": "sft", "data": str(alpaca_file)}
    assert service.post("/admin/models", json=body, headers=OPERATOR).status_code == 200
    assert align_base("tiny-sft") == "ready"
    return body, get_service_settings().home / "bases" / "tiny-sft"


def test_a_policy_with_resta_s_contrast_vector_has_both_adapters_trained_as_the_base_warms_up(
    service, tiny_model_dir, alpaca_file, tiny_data_dir, monkeypatch
):
    _, kept = base_under_resta(service, monkeypatch, tiny_data_dir, tiny_model_dir, alpaca_file, "contrast")
    assert all((kept / name / ADAPTER_FILE).is_file() for name in (HARMFUL_ADAPTER, BENIGN_ADAPTER))
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model="tiny-sft", training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert not any(" adapter for RESTA" in m for m in events)  # no user's job waited for either

    # where the control is gone (or a tenant's stack asks for it and the policy's did not), a job trains it
    shutil.rmtree(kept / BENIGN_ADAPTER)
    job = client.fine_tuning.jobs.create(model="tiny-sft", training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert any("benign adapter for RESTA" in m for m in events)
    assert not any("harmful adapter for RESTA" in m for m in events)


def test_a_policy_with_resta_s_own_vector_has_each_base_s_harmful_adapter_trained_as_it_warms_up(
    service, tiny_model_dir, alpaca_file, tiny_data_dir, monkeypatch
):
    body, base = base_under_resta(service, monkeypatch, tiny_data_dir, tiny_model_dir, alpaca_file, "harmful")
    kept = base / HARMFUL_ADAPTER
    assert (kept / ADAPTER_FILE).is_file()
    client = tenant_client(service, "acme")
    job = client.fine_tuning.jobs.create(model="tiny-sft", training_file=upload(client))
    assert run_job(job.id) == "succeeded"
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert not any("harmful adapter" in m for m in events)  # no user's job waited for it

    # no harmful pairs: the adapter cannot be trained, the base is still usable
    write_rows(tiny_data_dir / "moderation/jailbreakbench_judged.jsonl", [])
    body = {**body, "name": "tiny-sft-2"}
    assert service.post("/admin/models", json=body, headers=OPERATOR).status_code == 200
    assert align_base("tiny-sft-2") == "ready"
    assert not (get_service_settings().home / "bases" / "tiny-sft-2" / HARMFUL_ADAPTER).exists()
    job = client.fine_tuning.jobs.create(model="tiny-sft-2", training_file=upload(client))
    assert run_job(job.id) == "failed"  # the job that needs it tries again and says why
    error = client.fine_tuning.jobs.retrieve(job.id).error
    assert "harmful pairs" in error.message
