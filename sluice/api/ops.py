"""Operations routes: liveness, readiness, the live workers (admin), and ``/v1/models`` for OpenAI clients."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from sluice.api.auth import Admin, Reader
from sluice.api.context import Ctx
from sluice.api.native import ERRORS
from sluice.api.schemas import OPENAI_ERRORS, Health, OpenAIModel, OpenAIModelList, WorkerList, WorkerOut
from sluice.errors import SluiceError
from sluice.registry import load_registry

router = APIRouter()
log = logging.getLogger("sluice.api")


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering (it checks nothing else: see /readyz)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health, "description": "Not ready"}})
def readyz(ctx: Ctx) -> JSONResponse:
    """Ready when the database and Redis both answer; 503 naming which does not (details in the log)."""
    checks: dict[str, str] = {}
    for name, probe in (("database", ctx.ledger.ping), ("broker", ctx.client.dispatcher.ping)):
        try:
            probe()
            checks[name] = "ok"
        except SluiceError as exc:  # the details (hosts) go to the log, not to unauthenticated callers
            log.warning("readiness: %s", exc)
            checks[name] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/workers", response_model=WorkerList, responses=ERRORS)
def workers(ctx: Ctx, who: Admin, all: bool = False) -> WorkerList:
    """Live workers (``all``: stopped and stale ones too): device, queues, resident models, heartbeat."""
    rows = ctx.ledger.load_workers(include_stale=all)
    return WorkerList(data=[
        WorkerOut(hostname=r.hostname, pid=r.pid, device=r.device, status=r.status.value, live=r.live,
                  queues=list(r.queues), models=[dict(m) for m in r.models], memory_budget=r.memory_budget,
                  heartbeat_age_s=r.heartbeat_age_s)
        for r in rows
    ])  # fmt: skip


@router.get("/v1/models", response_model=OpenAIModelList, responses=OPENAI_ERRORS)
def openai_models(ctx: Ctx, who: Reader) -> OpenAIModelList:
    """The registered models, as OpenAI's model list (``client.models.list()``)."""
    return OpenAIModelList(data=[OpenAIModel(id=s.name) for s in load_registry(ctx.settings.models_file)])
