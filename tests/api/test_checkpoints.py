"""Checkpoint permissions through the official openai package: the owner shares a checkpoint with another
tenant, who may then train from it, and only that."""

import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import get_engine
from service.models import Job, Tenant
from tests.service_helpers import tenant_client, upload
from worker.runner import run_job


def tenant_id(name: str) -> str:
    with Session(get_engine()) as session:
        return session.scalar(select(Tenant.id).where(Tenant.name == name))


@pytest.fixture
def shared(service, base, monkeypatch):
    """acme's finished job with checkpoints at steps 2 and 4, and two other tenants."""
    import worker.runner as runner

    monkeypatch.setattr(runner, "CHECKPOINT_EVERY", 2)
    owner = tenant_client(service, "acme")
    job = owner.fine_tuning.jobs.create(
        model=base, training_file=upload(owner), hyperparameters={"n_epochs": 2}
    )
    assert run_job(job.id) == "succeeded"
    checkpoint = owner.fine_tuning.jobs.checkpoints.list(job.id).data[-1].fine_tuned_model_checkpoint
    assert checkpoint.endswith(":ckpt-step-000002")
    return owner, tenant_client(service, "globex"), tenant_client(service, "initech"), checkpoint


def test_a_granted_tenant_trains_from_the_checkpoint_until_the_grant_is_revoked(shared):
    owner, grantee, _, checkpoint = shared
    with pytest.raises(openai.BadRequestError) as error:
        grantee.fine_tuning.jobs.create(model=checkpoint, training_file=upload(grantee))
    assert error.value.body["code"] == "model_not_available"

    page = owner.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[tenant_id("globex")])
    [permission] = page.data
    assert permission.object == "checkpoint.permission" and permission.project_id == tenant_id("globex")
    assert permission.id.startswith("cp_")
    again = owner.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[tenant_id("globex")])
    assert [p.id for p in again.data] == [permission.id]  # granting twice is one grant

    job = grantee.fine_tuning.jobs.create(model=checkpoint, training_file=upload(grantee))
    assert job.model == checkpoint
    with Session(get_engine()) as session:
        step = checkpoint.rsplit(":ckpt-", 1)[1]
        assert session.get(Job, job.id).continues_path.endswith(f"checkpoints/{step}")
    assert run_job(job.id) == "succeeded"  # the grantee's own job, scored before release

    deleted = owner.fine_tuning.checkpoints.permissions.delete(
        permission.id, fine_tuned_model_checkpoint=checkpoint
    )
    assert deleted.deleted and deleted.id == permission.id
    with pytest.raises(openai.BadRequestError):
        grantee.fine_tuning.jobs.create(model=checkpoint, training_file=upload(grantee))
    with pytest.raises(openai.NotFoundError):
        owner.fine_tuning.checkpoints.permissions.delete(
            permission.id, fine_tuned_model_checkpoint=checkpoint
        )


def test_permissions_list_with_filters_and_a_cursor(shared):
    owner, _, _, checkpoint = shared
    globex, initech = tenant_id("globex"), tenant_id("initech")
    owner.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[globex])
    owner.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[initech])
    listed = owner.fine_tuning.checkpoints.permissions.retrieve(checkpoint)
    assert [p.project_id for p in listed.data] == [initech, globex]  # newest first
    assert listed.first_id == listed.data[0].id and listed.last_id == listed.data[-1].id
    oldest_first = owner.fine_tuning.checkpoints.permissions.retrieve(checkpoint, order="ascending")
    assert [p.project_id for p in oldest_first.data] == [globex, initech]
    first = owner.fine_tuning.checkpoints.permissions.retrieve(checkpoint, limit=1)
    assert [p.project_id for p in first.data] == [initech] and first.has_more
    rest = owner.fine_tuning.checkpoints.permissions.retrieve(checkpoint, after=first.data[0].id, limit=1)
    assert [p.project_id for p in rest.data] == [globex] and not rest.has_more
    only = owner.fine_tuning.checkpoints.permissions.retrieve(checkpoint, project_id=globex)
    assert [p.project_id for p in only.data] == [globex]
    with pytest.raises(openai.BadRequestError):
        owner.fine_tuning.checkpoints.permissions.retrieve(checkpoint, after="cp_nothing")


def test_only_the_owner_shares_and_only_real_tenants_are_granted(shared):
    owner, grantee, _, checkpoint = shared
    with pytest.raises(openai.NotFoundError):  # another tenant's checkpoint answers like a missing one
        grantee.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[tenant_id("globex")])
    with pytest.raises(openai.NotFoundError):
        grantee.fine_tuning.checkpoints.permissions.retrieve(checkpoint)
    with pytest.raises(openai.NotFoundError):
        owner.fine_tuning.checkpoints.permissions.create(
            checkpoint.replace("step-000002", "step-000003"), project_ids=[tenant_id("globex")]
        )
    with pytest.raises(openai.BadRequestError) as error:
        owner.fine_tuning.checkpoints.permissions.create(
            checkpoint, project_ids=[tenant_id("globex"), "tenant-nobody"]
        )
    assert error.value.body["code"] == "invalid_project" and "tenant-nobody" in error.value.body["message"]
    assert owner.fine_tuning.checkpoints.permissions.retrieve(checkpoint).data == []  # nothing half-granted
    for body in ([], [tenant_id("acme")]):
        with pytest.raises(openai.BadRequestError):
            owner.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=body)


def test_deleting_the_model_revokes_its_checkpoints_grants(shared):
    owner, grantee, _, checkpoint = shared
    owner.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[tenant_id("globex")])
    model = checkpoint.rsplit(":ckpt-", 1)[0]
    assert owner.models.delete(model).deleted
    with Session(get_engine()) as session:
        from service.models import CheckpointPermission

        assert session.scalars(select(CheckpointPermission)).all() == []
    with pytest.raises(openai.BadRequestError):
        grantee.fine_tuning.jobs.create(model=checkpoint, training_file=upload(grantee))
