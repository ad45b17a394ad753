"""The production ASGI application: jobs go to the Celery workers (``uvicorn api.asgi:app``)."""

from api.main import create_app
from worker.celery_app import dispatch, dispatch_alignment

app = create_app(dispatch=dispatch, dispatch_alignment=dispatch_alignment)
