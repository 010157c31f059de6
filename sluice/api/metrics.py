"""The API's Prometheus metrics: requests by route template, method and status, and their duration.

:class:`MetricsMiddleware` is plain ASGI (streamed results pass through untouched) and sits
outside every other middleware, so 413s from the body limit and 500s count too. The route label
is the matched route's template (``/jobs/{job_id}``), never the raw path, and ``<unmatched>`` for
a path no route matched; a method outside the standard ones counts as ``OTHER``: no label can
take a value a caller chooses.

``GET /metrics`` serves them without authentication, like ``/healthz``: it holds route
templates, methods, status codes and process figures, never an id, a key or a secret. Keep it off
the public side of a reverse proxy if even request rates are private.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.metrics import SECONDS_BUCKETS, new_registry

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"


class HttpMetrics:
    """The API process's registry with its two HTTP metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.requests = Counter("sluice_http_requests", "HTTP requests answered, by route template, method and status.",
                                ["route", "method", "status"], registry=self.registry)  # fmt: skip
        self.duration = Histogram("sluice_http_request_duration_seconds", "Seconds from request to the end of the "
                                  "response body, by route template and method.", ["route", "method"],
                                  buckets=SECONDS_BUCKETS, registry=self.registry)  # fmt: skip

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.duration.labels(route=route, method=method).observe(seconds)

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics``: the text exposition format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every HTTP request once its response has been sent (or has failed: status 500)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.observe(_route(scope), str(scope.get("method", "")), status, time.perf_counter() - started)


def _route(scope: Scope) -> str:
    """The template of the route the router matched (it records the route in the shared scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED
