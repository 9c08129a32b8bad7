"""The organiser's API (an organiser account's token): ``GET /api/admin/status`` (queue,
devices, failures by class, per-team counts), ``POST /api/admin/phase`` (form ``phase``),
``POST /api/admin/publish`` (form ``published`` 1 or 0), exports: ``GET
/api/admin/export/standings.csv|.json[?phase=&rank=]`` and ``GET /api/admin/export/manifests``
(every submission with its run's manifest)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lpirc.online import deps
from lpirc.online import standings as st
from lpirc.online.errors import ApiError


async def status(request: Request) -> JSONResponse:
    deps.organiser(request)
    return JSONResponse(await run_in_threadpool(deps.service(request).organiser))


async def phase(request: Request) -> JSONResponse:
    deps.organiser(request)
    svc = deps.service(request)
    name = deps.text_field(await deps.form(request, 4096), "phase") or ""
    if name not in svc.phases:
        raise ApiError(400, f"phase {name!r}: this service has {', '.join(svc.phases)}")
    svc.store.set_phase(name)
    return JSONResponse({"phase": name})


async def publish(request: Request) -> JSONResponse:
    deps.organiser(request)
    svc = deps.service(request)
    value = deps.text_field(await deps.form(request, 4096), "published") or "1"
    if value not in ("0", "1"):
        raise ApiError(400, f"published {value!r}: expected 1 or 0")
    svc.store.publish(value == "1")
    return JSONResponse({"published": value == "1"})


async def export_standings(request: Request) -> Response:
    who = deps.organiser(request)
    svc = deps.service(request)
    fmt = request.path_params["fmt"]
    if fmt not in ("csv", "json"):
        raise ApiError(404, f"standings.{fmt}: the exports are standings.csv and standings.json")
    q = request.query_params
    data = await run_in_threadpool(svc.standings, who, q.get("phase"), q.get("rank"))
    if fmt == "csv":
        return Response(st.to_csv(data["standings"]), media_type="text/csv",
                        headers={"Content-Disposition":
                                 f'attachment; filename="standings-{data["phase"]}.csv"'})
    return JSONResponse(data)


async def export_manifests(request: Request) -> JSONResponse:
    deps.organiser(request)
    rows = await run_in_threadpool(st.manifests, deps.service(request).store)
    return JSONResponse({"submissions": rows})


ROUTES = [
    Route("/api/admin/status", status),
    Route("/api/admin/phase", phase, methods=["POST"]),
    Route("/api/admin/publish", publish, methods=["POST"]),
    Route("/api/admin/export/standings.{fmt:str}", export_standings),
    Route("/api/admin/export/manifests", export_manifests),
]
