"""The FastAPI app: ``create_app(settings)`` builds it; ``sluice api`` serves it with uvicorn.

Native routes (``/jobs``, ``/models``, ``/workers``, ``/healthz``, ``/readyz``) answer errors as
``{"error": {"type", "message"}}``; the OpenAI routes (``/v1/files``, ``/v1/batches``,
``/v1/models``) as OpenAI does. ``/docs`` and ``/openapi.json`` describe both.
"""

from __future__ import annotations

from fastapi import FastAPI

from sluice import __version__
from sluice.api import batches, errors, files, native, ops
from sluice.api.context import Context
from sluice.api.limits import BodyLimit
from sluice.settings import Settings

DESCRIPTION = (
    "Bulk inference with Hugging Face transformers models. Submit jobs and stream their results in "
    "input order, or use the OpenAI Files and Batch API (`/v1/files`, `/v1/batches`) with any OpenAI "
    "client. Authenticate with `Authorization: Bearer <key>` (`sluice keys create`)."
)


def create_app(settings: Settings, no_auth: bool = False) -> FastAPI:
    """The API over ``settings``' database and broker; ``no_auth`` makes every caller an admin."""
    app = FastAPI(title="Sluice", version=__version__, description=DESCRIPTION)
    app.state.ctx = Context.create(settings, no_auth)
    errors.install(app)
    app.add_middleware(BodyLimit, settings=settings)
    for module in (native, ops, files, batches):
        app.include_router(module.router)
    return app
