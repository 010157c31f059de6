"""The FastAPI app: ``create_app(settings)`` builds it; ``sluice api`` serves it with uvicorn.

Native routes (``/jobs``, ``/models``, ``/workers``, ``/healthz``, ``/readyz``, ``/metrics``) answer errors as
``{"error": {"type", "message"}}``; the OpenAI routes (``/v1/files``, ``/v1/batches``,
``/v1/models``) as OpenAI does. ``/docs`` and ``/openapi.json`` describe both.
"""

from __future__ import annotations

from fastapi import FastAPI

from sluice import __version__
from sluice.api import batches, errors, files, native, ops
from sluice.api.context import Context
from sluice.api.limits import BodyLimit
from sluice.api.metrics import HttpMetrics, MetricsMiddleware
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
    metrics = app.state.metrics = HttpMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # added last: outermost, sees every answer
    app.add_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=False)  # no auth: no ids, no secrets
    for module in (native, ops, files, batches):
        app.include_router(module.router)
    return app
