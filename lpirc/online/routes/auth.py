"""``POST /api/login`` (form ``username``, ``password``) -> ``{"token"}``; ``GET /api/me``.
Logins go through the service's login gate (:func:`lpirc.online.deps.login`): 429 with
Retry-After over its failed-login limits."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lpirc.online import deps
from lpirc.online.errors import ApiError

LOGIN_MAX_BYTES = 4096


async def credentials(request: Request) -> tuple[str, str]:
    fields = await deps.form(request, LOGIN_MAX_BYTES)
    name, password = deps.text_field(fields, "username"), deps.text_field(fields, "password")
    if not name or not password:
        raise ApiError(400, "login needs the form fields username and password")
    return name, password


async def login(request: Request) -> JSONResponse:
    name, password = await credentials(request)
    return JSONResponse({"token": await deps.login(request, name, password)})


async def me(request: Request) -> JSONResponse:
    who = deps.team(request)
    return JSONResponse({"team": who.name, "role": who.role})


ROUTES = [Route("/api/login", login, methods=["POST"]), Route("/api/me", me)]
