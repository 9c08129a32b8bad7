"""What the routes share: the service, the caller's account, the request's form within the
size limits, path numbers. Each raises :class:`~lpirc.online.errors.ApiError`, which the
application's one exception handler answers (no try/except in the routes)."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from lpirc.login_gate import LoginGate, Refused, hold
from lpirc.online.errors import ApiError
from lpirc.online.service import Service
from lpirc.online.store import Team

COOKIE = "lpirc_online"  # the pages' copy of the token (HttpOnly, SameSite=Strict)
FORM_SLACK_BYTES = 64 * 1024  # multipart boundaries and small fields, beyond the files


def service(request: Request) -> Service:
    return request.app.state.service


async def login(request: Request, name: str, password: str) -> str:
    """A token for the account, through the service's login gate (``request.app.state.gate``:
    hashing bounded, failed logins limited per client address and account name). ApiError 401
    for a wrong name or password; 429 with ``Retry-After`` (and ``retry_after_s``) over the
    limits, held 2 s (at most its Retry-After) before it is answered."""
    gate: LoginGate = request.app.state.gate
    client = request.client.host if request.client else "?"
    try:
        who = await gate.check(client, name, password)
    except Refused as e:  # no hashing was done
        await hold(e)
        raise ApiError(429, e.message, headers={"Retry-After": str(e.retry_after_s)},
                       retry_after_s=e.retry_after_s) from None
    if who is None:
        raise ApiError(401, "wrong team name or password")
    return service(request).token(who)


def token(request: Request) -> str | None:
    """``Authorization: Bearer TOKEN``, else the pages' cookie."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return request.cookies.get(COOKIE) or None


def team(request: Request) -> Team:
    """The caller's account (401 without a valid token)."""
    return service(request).team_for(token(request))


def maybe_team(request: Request) -> Team | None:
    """The caller's account, or None for an anonymous (or expired) caller."""
    try:
        return team(request)
    except ApiError:
        return None


def organiser(request: Request) -> Team:
    """The caller's account if it is an organiser's (401 / 403 otherwise)."""
    who = team(request)
    if who.role != "organiser":
        raise ApiError(403, f"{who.name} is not an organiser account")
    return who


def path_id(request: Request, name: str = "id") -> int:
    raw = request.path_params[name]
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(404, f"no submission {raw!r} (ids are numbers)")
    return int(raw)


async def form(request: Request, max_bytes: int, max_files: int = 0) -> dict[str, list]:
    """The request's form fields (multipart or URL-encoded), strings or UploadFiles; 413 when
    the body is over ``max_bytes`` (by its Content-Length, before it is read), 411 for a body
    without one, 415 for another content type, 400 for a malformed form."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"request body of {int(length)} bytes is over the limit of "
                            f"{max_bytes} bytes", limit_bytes=max_bytes)
    ctype = request.headers.get("content-type", "")
    if not length.isdigit():  # a chunked body: its size is known only once it is all read
        raise ApiError(411, "a form needs a Content-Length header")
    if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(415, f"expected a form (multipart/form-data or "
                            f"application/x-www-form-urlencoded), got {ctype or 'no Content-Type'}")
    try:
        parsed = await request.form(max_files=max_files, max_fields=20)
    except HTTPException as e:  # python-multipart's parse error, Starlette's 400
        raise ApiError(400, f"malformed form: {e.detail}") from None
    out: dict[str, list] = {}
    for k, v in parsed.multi_items():
        out.setdefault(k, []).append(v)
    return out


def text_field(fields: dict[str, list], name: str) -> str | None:
    vals = fields.get(name) or []
    return vals[0] if vals and isinstance(vals[0], str) else None


async def file_field(fields: dict[str, list], name: str, max_bytes: int) -> bytes | None:
    """A field's bytes, sent as a file part or as text; None when absent; 413 over
    ``max_bytes``."""
    vals = fields.get(name) or []
    if not vals:
        return None
    v = vals[0]
    data = await v.read() if isinstance(v, UploadFile) else v.encode("utf-8")
    if len(data) > max_bytes:
        raise ApiError(413, f"{name}: {len(data)} bytes is over the limit of {max_bytes} bytes",
                       limit_bytes=max_bytes)
    return data
