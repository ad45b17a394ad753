"""The production ASGI application: jobs, alignments and pre-screens go to the Celery workers
(``uvicorn api.asgi:app``)."""

from api.main import create_app
from service.queue import dispatch, dispatch_alignment, dispatch_prescreen

app = create_app(
    dispatch=dispatch, dispatch_alignment=dispatch_alignment, dispatch_prescreen=dispatch_prescreen
)
