"""``GET /api/standings[?phase=dev|final]`` (JSON) and ``GET /`` / ``GET /standings`` (the page,
which fetches the JSON again every few seconds and redraws itself)."""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from lpirc.online import deps
from lpirc.online.pages import render

REFRESH_S = 5


async def standings_json(request: Request) -> JSONResponse:
    svc = deps.service(request)
    body = await run_in_threadpool(svc.standings, deps.maybe_team(request),
                                   request.query_params.get("phase"))
    return JSONResponse(body)


async def standings_page(request: Request) -> HTMLResponse:
    svc = deps.service(request)
    who = deps.maybe_team(request)
    data = await run_in_threadpool(svc.standings, who, request.query_params.get("phase"))
    nonce = secrets.token_urlsafe(12)
    return render("standings.html.j2", nonce=nonce, who=who, data=data, refresh_s=REFRESH_S)


ROUTES = [
    Route("/api/standings", standings_json),
    Route("/", standings_page),
    Route("/standings", standings_page),
]
