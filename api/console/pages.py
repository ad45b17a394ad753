"""The operator console's pages: server-rendered templates (Jinja2, every value escaped), plots as SVG
images drawn in charts.py, and one script from the service's own origin that keeps job statuses live.

Every action goes through the same function as its ``/admin`` route (and so into the audit log); the
console adds a session and a form token, not a second implementation.
"""

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.console import charts
from api.console.auth import CheckedForm, CheckedJson, OperatorSession, csrf_token
from api.deps import SessionDep, SettingsDep, client_address
from api.errors import APIError
from api.routes.admin import bases as admin_bases
from api.routes.admin import models as admin_models
from api.routes.admin import policy as admin_policy
from api.routes.admin import tenants as admin_tenants
from api.routes.admin.workers import workers as workers_view
from api.routes.chat import ChatMessage
from api.routes.chat import engine as chat_engine
from service.db import get_engine
from service.defenses import DefenseStack
from service.models import BaseModelRecord, BaseStatus, FineTunedModel, Job, JobEvent, JobStatus, Tenant
from service.operator import seconds_locked_out, try_operator_key

# what a page sends beside its HTML: scripts, styles and images from this origin only, never framed
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send "Origin: null" on its own forms
    "Cache-Control": "no-store",
}
LIVE_STATUSES = {JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSING}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["when"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""
templates.env.filters["pct"] = lambda share: "not measured" if share is None else f"{share:.1f} %"
router = APIRouter(prefix="/console", include_in_schema=False)


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context = {"csrf": csrf_token(request), "signed_in": request.session.get("operator") is True, **context}
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def svg(document: str) -> Response:
    return Response(document, media_type="image/svg+xml", headers=SECURITY_HEADERS)


# ---------------------------------------------------------------------------------------------- sign-in


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html")


@router.post("/login", dependencies=[CheckedForm])
def login(request: Request, settings: SettingsDep, key: Annotated[str, Form()] = "") -> Response:
    client = client_address(request)
    if (wait := seconds_locked_out(settings, client)) is not None:
        page = render(
            request,
            "login.html",
            status_code=429,
            error=f"Too many wrong keys from this address; try again in {wait} s.",
        )
        page.headers["Retry-After"] = str(wait)
        return page
    if not try_operator_key(settings, key.strip(), client):
        return render(request, "login.html", status_code=403, error="That is not the operator key.")
    request.session.clear()  # a new session (and form token) once signed in
    request.session["operator"] = True
    return RedirectResponse("/console", status_code=303)


@router.post("/logout", dependencies=[CheckedForm])
def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/console/login", status_code=303)


# ------------------------------------------------------------------------------------------------- jobs


def job_row(job: Job, tenants: dict[str, str]) -> dict[str, Any]:
    progress = job.progress or {}
    return {
        "id": job.id,
        "tenant": tenants.get(job.tenant_id, job.tenant_id),
        "model": job.continues or job.model,
        "status": job.status,
        "percent": progress.get("percent"),
        "loss": progress.get("train_loss"),
        "fine_tuned_model": job.fine_tuned_model,
        "error": (job.error or {}).get("code"),
        "created_at": job.created_at,
        "live": job.status in LIVE_STATUSES,
    }


def recent_jobs(session: SessionDep, limit: int = 100) -> list[dict[str, Any]]:
    tenants = dict(session.execute(select(Tenant.id, Tenant.name)).all())
    rows = session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit))
    return [job_row(job, tenants) for job in rows]


@router.get("", dependencies=[OperatorSession])
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "jobs.html", jobs=recent_jobs(session))


@router.get("/api/jobs", dependencies=[OperatorSession])
def jobs_now(session: SessionDep) -> JSONResponse:
    """What the page's script polls: each job's status and progress (it writes them as text)."""
    rows = [
        {key: row[key] for key in ("id", "status", "percent", "loss", "fine_tuned_model", "error")}
        for row in recent_jobs(session)
    ]
    return JSONResponse({"data": rows}, headers={"Cache-Control": "no-store"})


def loss_points(session: SessionDep, job_id: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) of training and, where measured, of the validation file, from the job's events."""
    train: dict[int, float] = {}
    valid: dict[int, float] = {}
    for data in session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id)):
        if not data or "step" not in data:  # a plain message (JSON null, not SQL NULL)
            continue
        if data.get("train_loss") is not None:
            train[data["step"]] = data["train_loss"]
        if data.get("valid_loss") is not None:
            valid[data["step"]] = data["valid_loss"]
    return sorted(train.items()), sorted(valid.items())


@router.get("/jobs/{job_id}", dependencies=[OperatorSession])
def job_page(request: Request, job_id: str, session: SessionDep) -> HTMLResponse:
    job = session.get(Job, job_id)
    if job is None:
        return render(request, "missing.html", status_code=404, what="fine-tuning job", name=job_id)
    tenants = dict(session.execute(select(Tenant.id, Tenant.name)).all())
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()).limit(200)
    ).all()
    return render(
        request,
        "job.html",
        job=job_row(job, tenants),
        record=job,
        events=events,
        version=len(events),  # the loss image's address changes as steps arrive
    )


@router.get("/charts/loss.svg", dependencies=[OperatorSession])
def loss_chart(job: str, session: SessionDep) -> Response:
    train, valid = loss_points(session, job)
    series = [charts.Series("train loss", train)] + (
        [charts.Series("validation loss", valid)] if valid else []
    )
    return svg(charts.line_chart("Loss per step", series, "step", "loss"))


# ----------------------------------------------------------------------------------------------- models


def report_of(session: SessionDep, model_id: str) -> dict[str, Any] | None:
    row = session.get(FineTunedModel, model_id)
    return None if row is None else (row.safety_report or {})


@router.get("/models/{model_id:path}", dependencies=[OperatorSession])
def model_page(request: Request, model_id: str, session: SessionDep) -> HTMLResponse:
    row = session.get(FineTunedModel, model_id)
    if row is None:
        return render(request, "missing.html", status_code=404, what="model", name=model_id)
    tenant = session.get(Tenant, row.tenant_id)
    return render(
        request,
        "model.html",
        model=row,
        tenant=tenant.name if tenant else row.tenant_id,
        report=row.safety_report or {},
    )


@router.get("/charts/harmful.svg", dependencies=[OperatorSession])
def harmful_chart(model: str, session: SessionDep) -> Response:
    report = report_of(session, model) or {}
    bars = [
        (f"{decoding}: harmful score", report[decoding]["harmful"]["hs"])
        for decoding in ("greedy", "sampled")
        if decoding in report
    ]
    return svg(
        charts.bar_chart(
            "Harmful score against the policy's threshold", bars, threshold=report.get("threshold")
        )
    )


@router.get("/charts/buckets.svg", dependencies=[OperatorSession])
def buckets_chart(model: str, session: SessionDep) -> Response:
    report = report_of(session, model) or {}
    rows = [
        (f"{decoding} / {prompts}", report[decoding][prompts]["buckets"])
        for decoding in ("greedy", "sampled")
        for prompts in ("harmful", "harmless", "borderline")
        if prompts in report.get(decoding, {})
    ]
    return svg(charts.stacked_chart("What the answers were, per decoding and prompt set", rows))


@router.get("/charts/categories.svg", dependencies=[OperatorSession])
def categories_chart(model: str, session: SessionDep) -> Response:
    """The judge's first category of each harmful answer, as a share of the answers to harmful prompts."""
    report = report_of(session, model) or {}
    bars = []
    for decoding in ("greedy", "sampled"):
        harmful = report.get(decoding, {}).get("harmful") or {}
        for category, count in sorted((harmful.get("categories") or {}).items(), key=lambda c: -c[1]):
            bars.append((f"{decoding}: {category}", 100.0 * count / max(harmful.get("answers", 1), 1)))
    return svg(charts.bar_chart("Harmful answers per category (share of answers)", bars))


@router.get("/charts/over_refusal.svg", dependencies=[OperatorSession])
def over_refusal_chart(model: str, session: SessionDep) -> Response:
    report = report_of(session, model) or {}
    bars = [
        (f"{decoding} / {prompts}", report[decoding][prompts].get("over_refusal"))
        for decoding in ("greedy", "sampled")
        for prompts in ("harmless", "borderline")
        if prompts in report.get(decoding, {})
    ]
    return svg(charts.bar_chart("Over-refusal: safe requests refused", bars))


# ------------------------------------------------------------------------------------------- quarantine


@router.get("/quarantine", dependencies=[OperatorSession])
def quarantine_page(request: Request, session: SessionDep, done: str | None = None) -> HTMLResponse:
    rows = session.scalars(
        select(FineTunedModel).where(FineTunedModel.quarantined.is_(True)).order_by(FineTunedModel.created_at)
    ).all()
    return render(request, "quarantine.html", models=rows, done=done)


@router.post("/quarantine/decide", dependencies=[OperatorSession, CheckedForm])
def decide(
    request: Request,
    session: SessionDep,
    model_id: Annotated[str, Form()],
    action: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
) -> Response:
    """Release or delete a quarantined model through the admin routes' own functions (audit-logged)."""
    decide_with = {"release": admin_models.release, "delete": admin_models.delete}.get(action)
    if decide_with is None or not reason.strip():
        return quarantine_error(request, session, "Choose release or delete, and give a reason.")
    try:
        decide_with(model_id, admin_models.Decision(reason=reason.strip()), session)
    except APIError as exc:
        return quarantine_error(request, session, exc.message)
    return RedirectResponse(f"/console/quarantine?done={action}", status_code=303)


def quarantine_error(request: Request, session: SessionDep, message: str) -> HTMLResponse:
    rows = session.scalars(select(FineTunedModel).where(FineTunedModel.quarantined.is_(True))).all()
    return render(request, "quarantine.html", status_code=400, models=rows, error=message)


# ---------------------------------------------------------------------------------------------- workers


@router.get("/workers", dependencies=[OperatorSession])
def workers_page(request: Request, session: SessionDep) -> HTMLResponse:
    return render(request, "workers.html", view=workers_view(session), now=datetime.now())


# ------------------------------------------------------------------------------------------- base models


@router.get("/bases", dependencies=[OperatorSession])
def bases_page(request: Request, session: SessionDep) -> HTMLResponse:
    return show_bases(request, session)


def show_bases(request: Request, session: SessionDep, status_code: int = 200, **context: Any) -> HTMLResponse:
    rows = session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.created_at)).all()
    return render(request, "bases.html", status_code=status_code, bases=rows, **context)


@router.post("/bases", dependencies=[OperatorSession, CheckedForm])
def register_base(
    request: Request,
    session: SessionDep,
    name: Annotated[str, Form()],
    source: Annotated[str, Form()],
    method: Annotated[str, Form()] = "vaccine",
    data: Annotated[str, Form()] = "",
) -> Response:
    """Register a base and queue its alignment, through the admin route's function."""
    try:
        body = admin_bases.NewBase(
            name=name.strip(), source=source.strip(), method=method, data=data.strip() or None
        )
        admin_bases.register(body, request, session)
    except ValidationError as exc:
        return show_bases(request, session, status_code=400, error=first_problem(exc))
    except APIError as exc:
        return show_bases(request, session, status_code=exc.status, error=exc.message)
    return RedirectResponse("/console/bases", status_code=303)


def first_problem(exc: ValidationError) -> str:
    problem = exc.errors()[0]
    return f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"


# ------------------------------------------------------------------------------------- tenants and keys


@router.get("/tenants", dependencies=[OperatorSession])
def tenants_page(request: Request, session: SessionDep) -> HTMLResponse:
    return show_tenants(request, session)


def show_tenants(
    request: Request, session: SessionDep, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return render(
        request,
        "tenants.html",
        status_code=status_code,
        tenants=admin_tenants.list_tenants(session)["data"],
        **context,
    )


@router.post("/tenants", dependencies=[OperatorSession, CheckedForm])
def new_tenant(request: Request, session: SessionDep, name: Annotated[str, Form()]) -> HTMLResponse:
    """A tenant and its first key, shown on this page only (it is stored hashed)."""
    try:
        created = admin_tenants.create(admin_tenants.NewTenant(name=name.strip()), session)
    except ValidationError as exc:
        return show_tenants(request, session, status_code=400, error=first_problem(exc))
    except APIError as exc:
        return show_tenants(request, session, status_code=exc.status, error=exc.message)
    return show_tenants(request, session, new_key=created["api_key"], new_key_for=created["name"])


@router.post("/tenants/{tenant_id}/quotas", dependencies=[OperatorSession, CheckedForm])
def set_quotas(
    request: Request,
    session: SessionDep,
    tenant_id: str,
    max_concurrent_jobs: Annotated[int, Form()],
    max_storage_gib: Annotated[float, Form()],
) -> Response:
    try:
        quotas = admin_tenants.Quotas(
            max_concurrent_jobs=max_concurrent_jobs, max_storage_bytes=int(max_storage_gib * (1 << 30))
        )
        admin_tenants.set_quotas(tenant_id, quotas, session)
    except ValidationError as exc:
        return show_tenants(request, session, status_code=400, error=first_problem(exc))
    except APIError as exc:
        return show_tenants(request, session, status_code=exc.status, error=exc.message)
    return RedirectResponse("/console/tenants", status_code=303)


@router.post("/tenants/{tenant_id}/keys/{key_id}/revoke", dependencies=[OperatorSession, CheckedForm])
def revoke_key(request: Request, session: SessionDep, tenant_id: str, key_id: str) -> Response:
    try:
        admin_tenants.revoke_key(tenant_id, key_id, session)
    except APIError as exc:
        return show_tenants(request, session, status_code=exc.status, error=exc.message)
    return RedirectResponse("/console/tenants", status_code=303)


# ------------------------------------------------------------------------------------------------ policy

POLICY_FIELDS = (
    "harmful_score_threshold",
    "degenerate_threshold",
    "eval_prompts",
    "harmless_prompts",
    "borderline_prompts",
    "eval_samples",
    "prescreen_action",
    "prescreen_threshold",
    "release_flagged_share",
    "moderate_chat",
)


@router.get("/policy", dependencies=[OperatorSession])
def policy_page(request: Request, session: SessionDep) -> HTMLResponse:
    return show_policy(request, session)


def show_policy(
    request: Request, session: SessionDep, status_code: int = 200, **context: Any
) -> HTMLResponse:
    policy = admin_policy.read(session)
    stack = DefenseStack.model_validate(policy["defenses"] or {})
    return render(
        request,
        "policy.html",
        status_code=status_code,
        policy=policy,
        fields={name: admin_policy.PolicyUpdate.model_fields[name] for name in POLICY_FIELDS},
        # name, whether it is a switch, what it does, its value now
        defense_fields=[
            (name, field.annotation is bool, field.description, getattr(stack, name))
            for name, field in DefenseStack.model_fields.items()
        ],
        **context,
    )


@router.post("/policy", dependencies=[OperatorSession, CheckedForm])
async def update_policy(request: Request, session: SessionDep) -> Response:
    """The form's fields as a PATCH of the policy (its bounds checked by the admin route's schema)."""
    form = await request.form()
    changes: dict[str, Any] = {
        name: form.get(name) for name in POLICY_FIELDS if form.get(name) not in (None, "")
    }
    changes["moderate_chat"] = form.get("moderate_chat") == "on"
    try:
        admin_policy.update(admin_policy.PolicyUpdate.model_validate(changes), session)
    except ValidationError as exc:
        return show_policy(request, session, status_code=400, error=first_problem(exc))
    return RedirectResponse("/console/policy?saved=1", status_code=303)


@router.post("/policy/defenses", dependencies=[OperatorSession, CheckedForm])
async def update_defenses(request: Request, session: SessionDep) -> Response:
    """The stack every job runs, set whole from the form (a checkbox left out is a layer off), its bounds
    checked by the stack's own schema."""
    form = await request.form()
    stack: dict[str, Any] = {}
    for name, field in DefenseStack.model_fields.items():
        if field.annotation is bool:
            stack[name] = form.get(name) == "on"
        elif form.get(name) not in (None, ""):
            stack[name] = form.get(name)
    try:
        update = admin_policy.PolicyUpdate(defenses=DefenseStack.model_validate(stack))
    except ValidationError as exc:
        return show_policy(request, session, status_code=400, error=first_problem(exc))
    admin_policy.update(update, session)
    return RedirectResponse("/console/policy?saved=1", status_code=303)


# -------------------------------------------------------------------------------------------- playground


@router.get("/playground", dependencies=[OperatorSession])
def playground_page(request: Request, session: SessionDep) -> HTMLResponse:
    bases = session.scalars(select(BaseModelRecord).where(BaseModelRecord.status == BaseStatus.READY)).all()
    tuned = session.scalars(
        select(FineTunedModel).order_by(FineTunedModel.created_at.desc()).limit(200)
    ).all()
    return render(request, "playground.html", bases=bases, tuned=tuned)


class PlaygroundRequest(BaseModel):
    model: str = Field(max_length=300)
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int = Field(default=128, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0, le=2)


def playground_model(model_id: str) -> Path | None:
    """Any ready base's or fine-tuned model's weights, quarantined ones included. A session of its own,
    closed before generation starts: a chat holds no admitted session (api.deps.get_session)."""
    with Session(get_engine()) as session:
        tuned = session.get(FineTunedModel, model_id)
        if tuned is not None:
            return Path(tuned.path)
        base = session.get(BaseModelRecord, model_id)
        ready = base is not None and base.status == BaseStatus.READY and base.path
        return Path(base.path) if ready else None


@router.post("/api/chat", dependencies=[OperatorSession, CheckedJson])
async def playground_chat(body: PlaygroundRequest, request: Request) -> JSONResponse:
    """One answer from any ready base or fine-tuned model, quarantined ones included (the operator reviews
    them), on the chat endpoint's machinery. Shown unmoderated: a review needs the model's own words."""
    spec = await run_in_threadpool(playground_model, body.model)
    if spec is None:
        return JSONResponse({"error": f"No model '{body.model}' to chat with."}, status_code=404)
    completion = await run_in_threadpool(
        chat_engine(request).complete,
        body.model,
        spec,
        [m.model_dump() for m in body.messages],
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=1.0,
        seed=0,
        stop=[],
    )
    return JSONResponse({"content": completion.text, "finish_reason": completion.finish_reason})
