"""Submissions: ``POST /api/submissions`` (multipart ``model`` + optional ``sidecar`` JSON and
``label``) -> 202 ``{"id"}``; ``GET /api/submissions`` (the caller's);
``GET /api/submissions/{id}`` (state, failure, score); ``GET /api/submissions/{id}/events``."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lpirc.online import deps
from lpirc.online.errors import ApiError


async def upload(request: Request) -> JSONResponse:
    svc = deps.service(request)
    who = deps.team(request)
    cfg = svc.cfg
    fields = await deps.form(request, cfg.max_model_bytes + cfg.max_sidecar_bytes
                             + deps.FORM_SLACK_BYTES, max_files=2)
    model = await deps.file_field(fields, "model", cfg.max_model_bytes)
    if model is None:
        raise ApiError(400, "upload needs the multipart field model (the .tflite file)")
    sidecar = await deps.file_field(fields, "sidecar", cfg.max_sidecar_bytes)
    status, body = await run_in_threadpool(svc.upload, who, model, sidecar,
                                           deps.text_field(fields, "label"))
    return JSONResponse(body, status_code=status)


async def listing(request: Request) -> JSONResponse:
    svc = deps.service(request)
    who = deps.team(request)
    subs = svc.store.submissions(team_id=None if who.role == "organiser" else who.id)
    return JSONResponse({"submissions": [svc.view(who, s) for s in subs]})


async def one(request: Request) -> JSONResponse:
    svc = deps.service(request)
    who = deps.team(request)
    return JSONResponse(svc.view(who, svc.own(who, deps.path_id(request))))


async def events(request: Request) -> JSONResponse:
    svc = deps.service(request)
    who = deps.team(request)
    return JSONResponse({"events": svc.events(who, svc.own(who, deps.path_id(request)))})


ROUTES = [
    Route("/api/submissions", upload, methods=["POST"]),
    Route("/api/submissions", listing, methods=["GET"]),
    Route("/api/submissions/{id}", one),
    Route("/api/submissions/{id}/events", events),
]
