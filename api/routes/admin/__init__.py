"""Operator routes under ``/admin``; every one needs the operator key."""

from fastapi import APIRouter

from api.deps import OperatorDep
from api.routes.admin import bases, jobs, models, policy, tenants, workers

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[OperatorDep])
router.include_router(tenants.router)
router.include_router(bases.router)
router.include_router(jobs.router)
router.include_router(models.router)
router.include_router(policy.router)
router.include_router(workers.router)
