"""The referee's HTTP server: Starlette on uvicorn.

Starlette rather than FastAPI: the protocol is the original referee's (URL-encoded form fields
that repeat, plain-text bodies, fixed status codes), which FastAPI's typed models and JSON
errors would have to be bent around; Starlette gives routing, streaming file replies and the
ASGI lifespan with nothing between a request and the referee's own parsing
(:mod:`lpirc.referee.protocol`). uvicorn (with uvloop and httptools where installed) is the
well-kept ASGI server it runs on.

One process serves everything: the clock and the open sessions are in memory and in SQLite,
blocking work (password hashing, database writes, zip building, scoring) runs in threads so
the event loop keeps serving images.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import socket
import sqlite3
import sys
import time
import traceback
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

import scoring
from lpirc import __version__
from lpirc.errors import InputError
from lpirc.referee import protocol as P
from lpirc.referee.core import Live, Referee, RefereeConfig
from lpirc.login_gate import LoginGate, Refused, hold
from lpirc.referee.guard import guarded_protocol, verifier
from lpirc.referee.protocol import ProtocolError
from lpirc.referee.guard import raise_fd_limit
from lpirc.referee.results import standings_html

TICK_S = 0.25  # how often sessions past their time limit are closed and scored
#: The standings page is made at most once per this many seconds, whatever the requests (it
#: refreshes itself every 5 s): a flood of it costs the server a cached reply each.
PAGE_TTL_S = 2.0


def build_zip(members: list[tuple[int, Path]]) -> bytes:
    """A zip of ``k.jpg`` members (stored, not deflated: JPEGs do not compress), flat, with a
    fixed date so that the same images give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, path in members:
            info = zipfile.ZipInfo(f"{k}.jpg", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def _text(message: str, status: int = 200) -> PlainTextResponse:
    return PlainTextResponse(message if message.endswith("\n") else message + "\n", status)


class RefereeApp:
    """The ASGI application (``.app``) around one :class:`Referee`, under the body size and
    limits of its :class:`RefereeConfig` (``max_body_bytes``, ``gate``, ``conns``)."""

    def __init__(self, referee: Referee) -> None:
        self.ref = referee
        self.max_body = referee.cfg.max_body_bytes
        self.conns = conns = referee.cfg.conns
        self.gate = LoginGate(verifier(referee.store), referee.cfg.gate, referee.announce,
                              "lpirc referee")
        self.protocol, self._sweep = guarded_protocol(conns, referee.announce)
        self._page: tuple[float, str] = (-1e9, "")
        self._page_task: asyncio.Future | None = None
        self.scorer = ThreadPoolExecutor(1, thread_name_prefix="lpirc-score")
        calls = {
            "/login": self.login, "/get_token": self.login, "/verify": self.verify,
            "/logout": self.logout, "/no_of_images": self.no_of_images, "/image": self.image,
            "/zipimages": self.zipimages, "/result": self.result, "/energy": self.energy,
            "/status": self.status, "/answered": self.answered, "/powermeter": self.powermeter,
            "/help": self.help,
            "/": self.leaderboard, "/leaderboard": self.leaderboard,
        }
        routes = [Route(path, self._endpoint(fn), methods=["GET", "POST"])
                  for path, fn in calls.items()]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    # --- plumbing ----------------------------------------------------------------------------

    def _endpoint(self, fn):
        async def handle(request: Request) -> Response:
            try:
                return await fn(request)
            except ProtocolError as e:
                return _text(e.message, e.status)
            except Refused as e:  # the login gate: no hashing was done; held, then 429
                await hold(e)
                return PlainTextResponse(e.message + "\n", 429,
                                         headers={"Retry-After": str(e.retry_after_s)})
            except sqlite3.Error as e:  # a full disk, say: nothing was stored; clients retry 5xx
                return _text(f"Database unavailable, nothing stored: {e}", 503)
            except Exception as e:  # a bug of ours: one line to the client, the trace to the log
                traceback.print_exc(file=sys.stderr)
                return _text(f"Internal error in {request.url.path}: {type(e).__name__}; "
                             "see the referee's log", 500)
        handle.__name__ = fn.__name__
        return handle

    async def fields(self, request: Request) -> P.Fields:
        """The request's form fields, the body read up to the size limit (413 beyond it) and
        within the body timeout (408 beyond it: a client that trickles its body)."""
        try:
            async with asyncio.timeout(self.conns.body_timeout_s):
                return await self._fields(request)
        except TimeoutError:
            raise ProtocolError(408, f"Request body not received within "
                                     f"{self.conns.body_timeout_s:g} s") from None

    async def _fields(self, request: Request) -> P.Fields:
        too_big = ProtocolError(413, f"Request body too large: the limit is {self.max_body} bytes")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise too_big
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            if not length.isdigit():
                raise ProtocolError(411, "multipart form without Content-Length")
            try:
                form = await request.form(max_fields=P.MAX_FIELDS, max_files=0)
            except HTTPException as e:  # python-multipart's parse error (Starlette's 400)
                raise ProtocolError(406, f"Malformed multipart form: {e.detail}") from None
            out = P.parse_fields(b"", request.url.query)
            for k, v in form.multi_items():
                out.setdefault(k, []).append(str(v))
            return out
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body:
                raise too_big
        if len(body) > 65536:  # a big post is parsed off the event loop (images keep flowing)
            return await run_in_threadpool(P.parse_fields, bytes(body), request.url.query)
        return P.parse_fields(bytes(body), request.url.query)

    async def session(self, request: Request, kind: str = "team") -> tuple[P.Fields, Live, float]:
        f = await self.fields(request)
        now = self.ref.clock()
        token = (f.get("token") or [None])[0]
        return f, self.ref.session_for(token, now, kind), now

    @asynccontextmanager
    async def _lifespan(self, app):
        self.scorer.submit(self._score)  # sessions that ended while the server was down
        tasks = [asyncio.create_task(self._tick()), asyncio.create_task(self._sweep())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            self.gate.close()
            await run_in_threadpool(self.scorer.shutdown, True)

    async def _tick(self) -> None:
        """Close sessions past their time limit and score ended ones, forever."""
        while True:
            await asyncio.sleep(TICK_S)
            now = self.ref.clock()
            if any(now >= lv.row.deadline for lv in list(self.ref.live.values())):
                await run_in_threadpool(self.ref.expire, now)
            if self.ref.unscored:
                self.ref.unscored = False
                self.scorer.submit(self._score)

    def _score(self) -> None:
        try:
            self.ref.score_pending()
        except Exception as e:  # the server goes on; the session stays unscored, retried later
            print(f"lpirc referee: error: scoring failed ({type(e).__name__}: {e})",
                  file=sys.stderr, flush=True)

    # --- the calls ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        f = await self.fields(request)
        if not f.get("username") or not f.get("password"):
            raise ProtocolError(401, P.MISSING_LOGIN)
        client = request.client.host if request.client else "?"
        team = await self.gate.check(client, f["username"][0], f["password"][0])
        if team is None:
            raise ProtocolError(401, P.BAD_LOGIN)
        token = await run_in_threadpool(self.ref.login, team, self.ref.clock())
        return PlainTextResponse(token)

    async def verify(self, request: Request) -> Response:
        f = await self.fields(request)
        token = (f.get("token") or [None])[0]
        try:
            self.ref.session_for(token, self.ref.clock(), "team")
        except ProtocolError as e:
            if e.status != 403:  # the meter's token is valid too
                raise ProtocolError(401, P.INVALID_TOKEN) from None
        return _text(P.VALID_TOKEN)

    async def logout(self, request: Request) -> Response:
        f = await self.fields(request)
        token = (f.get("token") or [None])[0]
        now = self.ref.clock()
        try:
            live = self.ref.session_for(token, now, "team")
        except ProtocolError as e:
            if e.status != 403:
                raise
            live = self.ref.session_for(token, now, "meter")
        await run_in_threadpool(self.ref.close, live.row.id, now, "logout")
        return _text(P.LOGOUT_OK)

    async def no_of_images(self, request: Request) -> Response:
        await self.session(request)
        return PlainTextResponse(str(self.ref.count))

    async def image(self, request: Request) -> Response:
        f, live, _ = await self.session(request)
        k = P.image_index(P.one(f, "image_name"), self.ref.count)
        path = self.ref.image_path(live, k)
        if not path.is_file():
            raise ProtocolError(404, f"Image {k} is missing on the referee (the holdout changed "
                                     "while serving)")
        return FileResponse(path, media_type="image/jpeg", filename=f"{k}.jpg")

    async def zipimages(self, request: Request) -> Response:
        f, live, _ = await self.session(request)
        k = P.image_index(P.one(f, "image_name"), self.ref.count, zip_start=True)
        try:
            data = await run_in_threadpool(build_zip, self.ref.zip_members(live, k))
        except OSError as e:
            raise ProtocolError(404, f"Zip {k}: an image is missing on the referee "
                                     f"({e.strerror or e})") from None
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{k}.zip"'})

    async def result(self, request: Request) -> Response:
        f, live, now = await self.session(request)
        answers = await run_in_threadpool(P.parse_answers, f, self.ref.count,
                                          live.row.class_base, scoring.synset_index)
        new, dup = await run_in_threadpool(self.ref.add_answers, live, answers, now)
        return _text(f"{P.RESULT_STORED}: {new} new, {dup} duplicate(s) (an image's first "
                     "answer counts)")

    async def energy(self, request: Request) -> Response:
        f = await self.fields(request)
        now, token = self.ref.clock(), (f.get("token") or [None])[0]
        try:
            live, refused = self.ref.session_for(token, now), None
        except ProtocolError as e:
            if e.status != 401:
                raise
            live, refused = None, e  # a session the time limit closed a moment ago may post
        wh = P.number("energy_wh", P.one(f, "energy_wh"), min_value=0)
        method = (f.get("method") or ["not said"])[0][:200]
        if live is not None:
            await run_in_threadpool(self.ref.set_self_energy, live, wh, method)
            return _text(f"Energy stored: {wh:g} Wh, self-reported ({method})")
        if not await run_in_threadpool(self.ref.late_energy, token, wh, method, now):
            raise refused
        return _text(f"Energy stored: {wh:g} Wh, self-reported ({method}), after the time "
                     "limit (answers are not)")

    async def status(self, request: Request) -> Response:
        _, live, now = await self.session(request)
        kept, dups = await run_in_threadpool(self.ref.store.counts, live.row.id)
        r = live.row
        return _text(f"team {r.team}\nattempt {r.attempt} of {self.ref.cfg.attempts}\n"
                     f"images {r.image_count}\nanswers {kept}\nduplicates {dups}\n"
                     f"time_left_s {max(0.0, r.deadline - now):.3f}\n")

    async def answered(self, request: Request) -> Response:
        _, live, _ = await self.session(request)
        held = await run_in_threadpool(self.ref.store.answered, live.row.id)
        return _text(f"{len(held)}\n{P.ranges(held)}\n")

    async def powermeter(self, request: Request) -> Response:
        f, _, now = await self.session(request, kind="meter")
        player, readings = P.parse_power(f, now)
        n = await run_in_threadpool(self.ref.add_power, player, readings, "meter")
        again = len(readings) - n
        return _text(f"{P.POWER_STORED}: {n} reading(s) for {player}"
                     + (f", {again} already stored (same time and watts)" if again else ""))

    async def help(self, request: Request) -> Response:
        numbering = ("0..999, the sorted ILSVRC-2012 synsets (-1 = background)"
                     if self.ref.cfg.class_base == 0 else
                     "1..1000, the sorted ILSVRC-2012 synsets + 1 (0 = background)")
        return _text(P.HELP.format(version=__version__, energy_grace_s=P.ENERGY_GRACE_S,
                                   numbering=numbering
                                   + "; a synset ID such as n01440764 is accepted too"))

    async def leaderboard(self, request: Request) -> Response:
        if time.monotonic() - self._page[0] >= PAGE_TTL_S:
            if self._page_task is None or self._page_task.done():  # one build for all waiters
                self._page_task = asyncio.ensure_future(run_in_threadpool(
                    standings_html, self.ref.store, self.ref.live, self.ref.clock()))
            self._page = (time.monotonic(), await asyncio.shield(self._page_task))
        return HTMLResponse(self._page[1])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port). OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(cfg: RefereeConfig, host: str = "127.0.0.1", port: int = 8000, announce=print) -> None:
    """Run the referee until Ctrl-C or SIGTERM (uvicorn shuts down cleanly, then re-raises the
    signal). ``announce`` gets one line with the URL once the socket is bound. The body size,
    login and connection limits are ``cfg``'s; ``cfg.conns.max_connections`` is lowered to the
    file-descriptor limit less 64 where that is lower (after raising it to its hard limit)."""
    import uvicorn

    fds = raise_fd_limit()
    if fds < cfg.conns.max_connections + 64:
        cfg = dataclasses.replace(cfg, conns=dataclasses.replace(
            cfg.conns, max_connections=max(16, fds - 64)))

    lock_path = Path(str(cfg.db) + ".lock")
    made_lock = not lock_path.exists()
    lock = _lock_db(Path(cfg.db))  # held until the process ends, kill -9 included
    try:
        referee = Referee(cfg, announce)
        try:
            sock = bind(host, port)
        except OSError as e:
            raise InputError(f"{host}:{port}: cannot listen ({e.strerror or e})") from None
    except Exception:
        # a referee that never started (bad input, the address in use) leaves no lock file
        if made_lock:
            lock_path.unlink(missing_ok=True)
        lock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    announce(f"lpirc referee: listening on http://{shown}:{bound} ({referee.count} images from "
             f"{cfg.holdout}, time limit {cfg.time_limit_s:g} s, rules {cfg.rules}, "
             f"{cfg.attempts} attempt(s) per team, CLASS_ID from {cfg.class_base}, db {cfg.db})")
    for line in referee.resumed(referee.clock()):
        announce(line)
    app = RefereeApp(referee)
    # h11 always (httptools, where installed, would be picked by "auto"): the guard is its
    # subclass. limit_concurrency: requests under way at once, beyond which uvicorn answers 503
    config = uvicorn.Config(app.app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, http=app.protocol,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
                            limit_concurrency=cfg.conns.max_connections + 64)
    # uvicorn shuts down cleanly on SIGTERM, then re-raises it under the handler it found:
    # make that an ordinary exit 0 (Ctrl-C stays KeyboardInterrupt: lpirc's exit 130)
    signal.signal(signal.SIGTERM, _exit_ok)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:  # SIGTERM and Ctrl-C come back through here, after uvicorn's clean shutdown
        left = sum(lv.row.kind == "team" for lv in list(referee.live.values()))
        announce(f"lpirc referee: stopped; {left} open session(s) continue on their own clocks "
                 f"when it is started again on {cfg.db}")
        lock.close()


def _lock_db(db: Path, who: str = "lpirc referee"):
    """An exclusive lock on ``DB.lock``: two referees serving one database would each hold the
    open sessions in memory (two ``lpirc online`` services, ``who``, would run its queue twice).
    InputError when another holds it."""
    import fcntl

    f = os.fdopen(os.open(str(db) + ".lock", os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise InputError(f"{db}: another {who} is serving this database") from None
    return f


def _exit_ok(signum, frame) -> None:
    raise SystemExit(0)
