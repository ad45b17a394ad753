"""The FastAPI application: routes per resource, errors in OpenAI's shape."""

from fastapi import FastAPI

from api.errors import install_handlers
from api.routes import files


def create_app() -> FastAPI:
    app = FastAPI(title="Vaccine fine-tuning service", version="0.1.0")
    install_handlers(app)
    app.include_router(files.router)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
