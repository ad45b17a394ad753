"""The console's sign-in: the operator's key (never a tenant's) starts a signed session cookie
(Starlette's SessionMiddleware, SameSite=Strict, HttpOnly), and every state-changing form carries a
per-session token checked against the session, with the request's Origin, against cross-site requests."""

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Form, Header, Request

from service.operator import operator_secret
from service.settings import ServiceSettings

SESSION_COOKIE = "vaccine_console"
SESSION_SECONDS = 8 * 3600


class LoginRequired(Exception):
    """The page needs a signed-in operator: the console answers with its sign-in page."""


class CrossSiteRequest(Exception):
    """A form whose token or origin is not the console's own."""


def session_secret(settings: ServiceSettings) -> str:
    """What signs the session cookie: derived from the operator key's digest, so every API process signs
    alike and a new operator key signs everyone out; random (nobody can sign in) without an operator key."""
    digest = operator_secret(settings)
    if digest is None:
        return secrets.token_hex(32)
    return hmac.new(b"vaccine-console-session", digest.encode(), hashlib.sha256).hexdigest()


def csrf_token(request: Request) -> str:
    """This session's form token (made on first use)."""
    token = request.session.get("csrf")
    if token is None:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


def require_operator_session(request: Request) -> None:
    if request.session.get("operator") is not True:
        raise LoginRequired


def checked_form(request: Request, csrf: Annotated[str, Form()] = "") -> None:
    """A POST from the console's own page: its token matches the session's and its Origin, when the
    browser sends one, is this host."""
    expected = request.session.get("csrf")
    if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):  # bytes: any input
        raise CrossSiteRequest
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise CrossSiteRequest


def checked_json(request: Request, x_csrf_token: Annotated[str, Header()] = "") -> None:
    """The same check for the page script's JSON requests: the token rides in a header."""
    checked_form(request, x_csrf_token)


OperatorSession = Depends(require_operator_session)
CheckedForm = Depends(checked_form)
CheckedJson = Depends(checked_json)
