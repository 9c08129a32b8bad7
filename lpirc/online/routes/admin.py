"""The organiser's API (an organiser account's token): ``GET /api/admin/status`` (queue,
devices, failures by class, per-team counts), ``POST /api/admin/phase`` (form ``phase``),
``POST /api/admin/publish`` (form ``published`` 1 or 0), exports: ``GET
/api/admin/export/standings.csv|.json[?phase=]`` and ``GET /api/admin/export/manifests``
(every submission with its run's manifest)."""

from __future__ import annotations

import json
from pathlib import Path

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
    data = await run_in_threadpool(svc.standings, who, request.query_params.get("phase"))
    if fmt == "csv":
        return Response(st.to_csv(data["standings"]), media_type="text/csv",
                        headers={"Content-Disposition":
                                 f'attachment; filename="standings-{data["phase"]}.csv"'})
    return JSONResponse(data)


async def export_manifests(request: Request) -> JSONResponse:
    who = deps.organiser(request)
    svc = deps.service(request)

    def collect() -> list[dict]:
        out = []
        for s in svc.store.submissions():
            manifest = None
            if s.run_dir and (Path(s.run_dir) / "manifest.json").is_file():
                manifest = json.loads((Path(s.run_dir) / "manifest.json").read_text())
            out.append(dict(svc.view(who, s), manifest=manifest))
        return out

    return JSONResponse({"submissions": await run_in_threadpool(collect)})


ROUTES = [
    Route("/api/admin/status", status),
    Route("/api/admin/phase", phase, methods=["POST"]),
    Route("/api/admin/publish", publish, methods=["POST"]),
    Route("/api/admin/export/standings.{fmt:str}", export_standings),
    Route("/api/admin/export/manifests", export_manifests),
]
