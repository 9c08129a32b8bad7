"""The ASGI application (Starlette on uvicorn) and ``serve``.

Errors are answered in one place, by exception handlers, never by a try/except per route:

- :class:`~lpirc.online.errors.ApiError` -> its status, JSON ``{"detail": one line, ...}``
  (a page's 401 redirects to ``/login``; a page's other errors are a one-line HTML page);
- Starlette's HTTPException (404 of an unknown path, 405) -> the same JSON shape;
- ``sqlite3.Error`` -> 503 "database unavailable, nothing stored" (a full disk, say);
- any other exception (a bug of ours) -> 500 with one line; the traceback goes to the
  service's log only.
"""

from __future__ import annotations

import html
import signal
import sqlite3
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from lpirc.errors import InputError
from lpirc.login_gate import LoginGate
from lpirc.online.config import OnlineConfig
from lpirc.online.errors import ApiError
from lpirc.online.routes import ROUTES
from lpirc.online.service import Service
from lpirc.referee.server import _exit_ok, _lock_db, bind
from lpirc.referee.store import create_private_file


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _answer(request: Request, status: int, detail: str, headers=None, **extra) -> Response:
    if _is_api(request):
        return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)
    if status == 401:
        return RedirectResponse("/login", status_code=303)
    body = (f"<!DOCTYPE html><html lang=en><meta charset=utf-8><title>{status}</title>"
            f"<p>{status}: {html.escape(detail)}</p><p><a href=\"/\">standings</a> · "
            "<a href=\"/team\">your submissions</a></p></html>")
    return HTMLResponse(body, status_code=status, headers=headers)


async def on_api_error(request: Request, exc: ApiError) -> Response:
    return _answer(request, exc.status, exc.detail, exc.headers or None, **exc.extra)


async def on_http_error(request: Request, exc: HTTPException) -> Response:
    detail = {404: f"no such page or call: {request.url.path}",
              405: f"{request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    return _answer(request, exc.status_code, detail, getattr(exc, "headers", None))


async def on_db_error(request: Request, exc: sqlite3.Error) -> Response:
    return _answer(request, 503, f"database unavailable, nothing stored: {exc}")


async def on_bug(request: Request, exc: Exception) -> Response:
    traceback.print_exception(exc, file=sys.stderr)
    return _answer(request, 500, f"internal error in {request.url.path}: "
                                 f"{type(exc).__name__}; see the service's log")


def build_app(svc: Service) -> Starlette:
    """The application around one :class:`Service` (started and stopped by its caller), with
    its login gate (``app.state.gate``: close it when the application stops)."""
    app = Starlette(routes=ROUTES, exception_handlers={
        ApiError: on_api_error, HTTPException: on_http_error, sqlite3.Error: on_db_error,
        Exception: on_bug})
    app.state.service = svc
    app.state.gate = LoginGate(svc.verify, svc.cfg.login, svc.announce, "lpirc online")
    return app


def serve(cfg: OnlineConfig, host: str = "127.0.0.1", port: int = 8000,
          announce: Callable[[str], None] = print) -> None:
    """Run the service until Ctrl-C or SIGTERM. ``announce`` gets one line with the URL once
    the socket is bound, then one per event. InputError (one line) for a bad holdout, ground
    truth or database, a database another service holds, or an address in use."""
    import uvicorn  # only to serve

    if not Path(cfg.db).exists():  # made here, as add-team makes it: a missing folder is one line
        create_private_file(Path(cfg.db), "the online database")
    lock_path = Path(str(cfg.db) + ".lock")
    made_lock, listening = not lock_path.exists(), False
    lock = _lock_db(Path(cfg.db), "lpirc online service")
    try:
        svc = Service(cfg, announce)
        try:
            sock = bind(host, port)
        except OSError as e:
            raise InputError(f"{host}:{port}: cannot listen ({e.strerror or e})") from None
        shown = f"[{host}]" if ":" in host else host
        phases = ", ".join(f"{n}: {p.count} images from {p.holdout}"
                           for n, p in svc.phases.items())
        quota = (f"{cfg.per_team_per_day if cfg.per_team_per_day is not None else 'no limit'} "
                 f"a day, {cfg.per_team_at_once if cfg.per_team_at_once is not None else 'no limit'}"
                 " at once")
        try:
            labels = svc.start()  # the devices (their holdout checks), then the scheduler
        except BaseException:
            svc.pool.close()
            raise
        # one line: a supervisor (or a test) reading up to the URL line gets it all
        announce(f"lpirc online: listening on http://{shown}:{sock.getsockname()[1]} "
                 f"({phases}; phase open: {svc.store.phase()}; {len(labels)} {cfg.executor} "
                 f"device(s) ready{' at ' + cfg.address if cfg.address else ''}: "
                 f"{', '.join(labels)}; quota {quota}; "
                 f"rules {cfg.rules}, time limit {cfg.time_limit_s:g} s; db {cfg.db})")
        listening = True
        if svc.scheduler.recovered:
            announce(f"lpirc online: submission(s) {', '.join(map(str, svc.scheduler.recovered))}"
                     " were running when the service stopped: queued again (not charged)")
        app = build_app(svc)
        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        signal.signal(signal.SIGTERM, _exit_ok)
        t0 = time.time()
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            app.state.gate.close()
            svc.stop()
            announce(f"lpirc online: stopped after {time.time() - t0:.0f} s; queued and running "
                     f"submissions resume when it is started again on {cfg.db}")
    finally:
        if made_lock and not listening:  # a service that never started leaves no lock file
            lock_path.unlink(missing_ok=True)
        lock.close()

