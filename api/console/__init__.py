"""The operator console at ``/console``: server-rendered pages over the same functions as ``/admin``."""

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from api.console.auth import SESSION_COOKIE, SESSION_SECONDS, CrossSiteRequest, LoginRequired, session_secret
from api.console.pages import SECURITY_HEADERS, router
from service.settings import ServiceSettings


def install_console(app: FastAPI, settings: ServiceSettings) -> None:
    app.include_router(router)
    app.mount(
        "/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static"
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(settings),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_SECONDS,
        path="/console",
        same_site="strict",
        https_only=False,  # loopback serves http; behind TLS the browser still sends it only to this site
    )

    @app.exception_handler(LoginRequired)
    async def _sign_in_first(_request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse("/console/login", status_code=303)

    @app.exception_handler(CrossSiteRequest)
    async def _refuse_cross_site(_request: Request, _exc: CrossSiteRequest) -> Response:
        return Response("This form did not come from the console; reload the page and try again.",
                        status_code=403, media_type="text/plain", headers=SECURITY_HEADERS)  # fmt: skip
