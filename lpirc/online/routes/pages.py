"""The HTML pages: ``/login`` (form; sets the token cookie), ``/logout``, ``/team`` (the team's
submissions), ``/submissions/{id}`` (one submission: state, history, score), its
``/submissions/{id}/log`` (text) and ``/submissions/{id}/report`` (the run's ``lpirc report``
page), ``/organiser`` (the organiser's view). The standings page is :mod:`.standings`'."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from lpirc.online import deps
from lpirc.online.errors import ApiError
from lpirc.online.pages import render
from lpirc.online.routes.auth import credentials
from lpirc.online.service import TOKEN_MAX_AGE_S


async def login_form(request: Request) -> Response:
    return render("login.html.j2", error=None)


async def login(request: Request) -> Response:
    name, password = await credentials(request)
    try:
        token = await deps.login(request, name, password)
    except ApiError as e:  # 401, or 429 over the login limits (with its Retry-After)
        return render("login.html.j2", status=e.status, headers=e.headers, error=e.detail)
    resp = RedirectResponse("/team", status_code=303)
    resp.set_cookie(deps.COOKIE, token, max_age=TOKEN_MAX_AGE_S, httponly=True,
                    samesite="strict")
    return resp


async def logout(request: Request) -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(deps.COOKIE)
    return resp


async def team_page(request: Request) -> Response:
    svc = deps.service(request)
    who = deps.team(request)
    if who.role == "organiser":
        return RedirectResponse("/organiser", status_code=303)
    subs = [svc.view(who, s) for s in reversed(svc.store.submissions(team_id=who.id))]
    used, busy = svc.store.quota_used(who.id, time.time())
    return render("team.html.j2", who=who, subs=subs, used=used, busy=busy, cfg=svc.cfg,
                  phase=svc.store.phase())


async def submission_page(request: Request) -> Response:
    svc = deps.service(request)
    who = deps.team(request)
    sub = svc.own(who, deps.path_id(request))
    return render("submission.html.j2", who=who, s=svc.view(who, sub), events=svc.events(who, sub))


async def log(request: Request) -> Response:
    svc = deps.service(request)
    who = deps.team(request)
    sub = svc.own(who, deps.path_id(request))
    return PlainTextResponse(await run_in_threadpool(svc.log_text, who, sub))


async def report(request: Request) -> Response:
    svc = deps.service(request)
    who = deps.team(request)
    return FileResponse(svc.report_path(who, svc.own(who, deps.path_id(request))),
                        media_type="text/html")


async def organiser_page(request: Request) -> Response:
    who = deps.organiser(request)
    data = await run_in_threadpool(deps.service(request).organiser)
    return render("organiser.html.j2", who=who, data=data)


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout),
    Route("/team", team_page),
    Route("/submissions/{id}", submission_page),
    Route("/submissions/{id}/log", log),
    Route("/submissions/{id}/report", report),
    Route("/organiser", organiser_page),
]
