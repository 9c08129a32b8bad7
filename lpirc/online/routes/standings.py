"""``GET /api/standings[?phase=dev|final][&rank=best|latest]`` (JSON) and ``GET /`` / ``GET
/standings`` with the same query (the page, which fetches the JSON again every few seconds and
redraws itself). ``rank``: which scored submission of each team counts (default: the service's
``--dev-counts``/``--final-counts``)."""

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
    q = request.query_params
    body = await run_in_threadpool(svc.standings, deps.maybe_team(request), q.get("phase"),
                                   q.get("rank"))
    return JSONResponse(body)


async def standings_page(request: Request) -> HTMLResponse:
    svc = deps.service(request)
    who = deps.maybe_team(request)
    q = request.query_params
    data = await run_in_threadpool(svc.standings, who, q.get("phase"), q.get("rank"))
    nonce = secrets.token_urlsafe(12)
    return render("standings.html.j2", nonce=nonce, who=who, data=data, refresh_s=REFRESH_S)


ROUTES = [
    Route("/api/standings", standings_json),
    Route("/", standings_page),
    Route("/standings", standings_page),
]
