"""``lpirc run --referee URL``: a device's side of the LPIRC referee protocol.

Read the referee's CLASS_ID numbering from ``/help`` (before any clock runs), log in (the
referee's clock starts), read the count, download zips ahead of the workers into a
scratch folder and feed their images to the same pipeline ``lpirc run`` uses
(:class:`lpirc.sources.GrowingSource`), post the answers in batches as they come, post the
run's own energy figure (self-reported), log out. The local run folder is kept as for a local
run, plus ``referee_posts.jsonl`` (each answer's post status) and a ``referee`` section in
``manifest.json``.

Network faults: every call is retried with exponential backoff (0.1 s doubling to 2 s) until
the session's end by the referee's clock (``/status`` at login; the run's own
``--time-limit-s`` where the referee does not say); a referee that restarts mid-run keeps the
session (its token secret and clock are in its database), so nothing is lost; a reply lost
after the referee stored a batch makes the retry a duplicate, which the referee counts and
ignores (the first answer counts).

A login again that gives another token (a referee restarted on a new database, say) is a new
session with a new image order: the client posts nothing more (every answer it holds is for the
old numbering), stops, and exits 1 saying so; run it again to answer the new session from its
first image. A run started while the session is open (after a crash) asks the referee which
images it holds answers for (``/answered``) and answers only the others; its energy figure then
covers only this run, and says so.

Exit codes (``lpirc run --referee``): 0 when every answer made in time was stored; 1 when the
login is refused or the referee cannot be reached, when answers made in time were never
stored (no reply before the session's end, or the session lost), or when every posted answer
was refused.

Only the calls of the original referee are needed (``/energy``, ``/status`` and ``/answered``
are skipped where unknown; the bounding-box fields, whole-image boxes, are sent where its
``/help`` does not say it is lpirc's), so a team can rehearse against either.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lpirc.errors import EXIT_FAILED, LpircError
from lpirc.results import MANIFEST, new_run_dir, write_json
from lpirc.runner import run
from lpirc.sources import GrowingSource

ZIP = 100
BACKOFF_S = (0.1, 2.0)  # first retry delay, cap
LOGIN_WAIT_S = 30.0  # how long a login retries a referee that does not answer (then exit 1)
#: The run's own budget ends this long before the session's (at most 10 % of what is left), so
#: that the answers of its last moments are posted before the referee closes the session.
POST_MARGIN_S = 1.0
#: Within this long of the session's end, every answer is posted as soon as it is made.
FLUSH_S = 2.0
#: How long after the session's end the energy figure may still be posted (the referee takes it
#: up to 30 s after a time limit; lpirc.referee.protocol.ENERGY_GRACE_S).
ENERGY_AFTER_S = 25.0
LOST = -1  # Reply.status of any call after the session was lost (a new session at login)
SCRATCH_PREFIX = "lpirc-referee-"


class RefereeError(LpircError):
    """The referee refused the login or could not be reached (exit 1)."""


@dataclass(frozen=True)
class Reply:
    """A referee's answer to one call: status (0 = no reply before the deadline) and body."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace").strip()

    def reason(self) -> str:
        """The reply in one short line: ``no reply from the referee (ConnectError: ...)``,
        ``HTTP 502: Bad Gateway`` (an HTML page: its title, or its text without tags)."""
        if self.status <= 0:
            return _one_line(self.text, 160)
        text = self.text
        if "<" in text[:200] and re.search(r"<(html|head|body|title|h1|p)\b", text, re.I):
            title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
            text = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
            text = html.unescape(text) + " (an HTML page)"
        else:  # the referee's one-line reasons: their first clause
            text = re.split(r": |; ", text, maxsplit=1)[0]
        return f"HTTP {self.status}: {_one_line(text, 100)}"


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RefereeClient:
    """The referee's calls over one keep-alive connection (httpx), retried until ``deadline``
    (time.monotonic() seconds) on connection errors, timeouts and 5xx replies.

    Args:
      url: the referee, e.g. ``http://127.0.0.1:8000``.
      user, password: the team's account.
      deadline: when to stop retrying (monotonic seconds); default: never.
    """

    def __init__(self, url: str, user: str, password: str, deadline: float | None = None,
                 timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.user, self.password = user, password
        self.deadline = deadline if deadline is not None else float("inf")
        self.http = httpx.Client(timeout=timeout_s, trust_env=False)
        self.token = ""
        self.retries = 0
        self.lost: str | None = None  # why the session was lost (a login again, a new one)
        self._lock = threading.Lock()  # one request at a time on a client
        self._relogin = threading.Lock()

    def call(self, path: str, fields: dict, deadline: float | None = None) -> Reply:
        """POST URL-encoded ``fields`` (lists repeat); retried as the class says (a 429 after
        its Retry-After), until ``deadline`` (monotonic seconds) when given, else the
        client's. A reply of status 0 says why none came."""
        delay, why = BACKOFF_S[0], ""
        deadline = self.deadline if deadline is None else deadline
        while True:
            wait = None
            try:
                with self._lock:
                    r = self.http.post(self.url + path, data=fields)
                if r.status_code == 429:  # the referee's login gate: wait as it says
                    after = r.headers.get("retry-after", "")
                    wait = min(float(after), 30.0) if after.isdigit() else delay
                    why = f"HTTP 429: {_one_line(r.text, 80)}"
                elif r.status_code < 500:
                    return Reply(r.status_code, r.content)
                else:
                    why = Reply(r.status_code, r.content).reason()
            except httpx.HTTPError as e:
                why = _one_line(f"{type(e).__name__}: {e}", 100)
            wait = delay if wait is None else wait
            if time.monotonic() + wait > deadline:
                return Reply(0, f"no reply from the referee ({why})".encode())
            self.retries += 1
            time.sleep(wait)
            delay = min(delay * 2, BACKOFF_S[1])

    def authed(self, path: str, fields: dict, deadline: float | None = None) -> Reply:
        """A call with the token; after a bare 401 ``Invalid Token`` (a referee that restarted
        with a new secret), log in once more and retry. A session that ended (time limit,
        logout) is not logged into again: that would start a new attempt. When the login again
        gives another token, it is another session (a new image order): the session is lost,
        and this call and every later one return status LOST without asking the referee."""
        if self.lost:
            return Reply(LOST, self.lost.encode())
        used = self.token
        r = self.call(path, {"token": used, **fields}, deadline)
        if r.status == 401 and r.text == "Invalid Token" and path != "/logout":
            with self._relogin:  # one login again for the threads that all got a 401
                if not self.lost and self.token == used:
                    try:
                        token = self._login(wait_s=None)
                    except RefereeError as e:
                        self.lost = f"the login again was refused ({e})"
                    else:
                        if token != used:  # never kept: nothing is ever sent under it
                            self.lost = ("the referee gave a new session at a login again "
                                         "(restarted on a new database?): its images are "
                                         "numbered anew, so no answer of this run was posted "
                                         "to it")
                if self.lost:
                    return Reply(LOST, self.lost.encode())
            r = self.call(path, {"token": self.token, **fields}, deadline)
        return r

    def login(self, wait_s: float | None = LOGIN_WAIT_S) -> str:
        """Log in (the referee's clock starts) and keep the token. A referee that cannot be
        reached is retried for ``wait_s`` at most (None: until the client's deadline).
        RefereeError (exit 1) when it refuses the login or never replies."""
        self.token = self._login(wait_s)
        return self.token

    def _login(self, wait_s: float | None) -> str:
        t0 = time.monotonic()
        r = self.call("/login", {"username": self.user, "password": self.password},
                      deadline=None if wait_s is None else t0 + wait_s)
        if r.status == 0:
            raise RefereeError(f"{self.url}/login: cannot reach the referee (tried for "
                               f"{time.monotonic() - t0:.1f} s): {r.reason()}")
        if r.status != 200:
            raise RefereeError(f"{self.url}/login: {r.reason()}")
        return r.text

    def class_base(self) -> int | None:
        """The CLASS_ID numbering the referee says it takes in ``/help`` (lpirc's referee:
        "CLASS_ID numbering: 0..999" or "1..1000"); None where it does not say (the original).
        Asked before the login: no clock runs yet. RefereeError when it cannot be reached."""
        t0 = time.monotonic()
        r = self.call("/help", {}, deadline=t0 + LOGIN_WAIT_S)
        if r.status == 0:
            raise RefereeError(f"{self.url}/help: cannot reach the referee (tried for "
                               f"{time.monotonic() - t0:.1f} s): {r.reason()}")
        m = re.search(r"CLASS_ID numbering: (0\.\.999|1\.\.1000)", r.text) if r.status == 200 else None
        return None if m is None else int(m.group(1)[0])

    def count(self) -> int:
        r = self.authed("/no_of_images", {})
        if r.status != 200 or not r.text.isdigit():
            raise RefereeError(f"{self.url}/no_of_images: {r.reason()}")
        return int(r.text)

    def time_left_s(self) -> float | None:
        """Seconds left in the session by the referee's clock (``/status``, lpirc's referee);
        None where the referee does not say (the original has no /status)."""
        r = self.authed("/status", {})
        for line in r.text.splitlines() if r.status == 200 else []:
            if line.startswith("time_left_s "):
                try:
                    return float(line.split()[1])
                except ValueError:
                    return None
        return None

    def answered(self) -> set[int] | None:
        """The image numbers the referee holds answers for in this session (``/answered``,
        lpirc's referee: ``N`` then ranges ``1-100,105``); None where it does not say."""
        r = self.authed("/answered", {})
        if r.status != 200:
            return None
        lines = r.text.splitlines()
        held: set[int] = set()
        for part in (lines[1] if len(lines) > 1 else "").split(","):
            a, _, b = part.partition("-")
            if a.isdigit():
                held.update(range(int(a), int(b or a) + 1))
        return held

    def close(self) -> None:
        self.http.close()


@dataclass
class PostLog:
    """What happened to each answer: ``posted`` (200), ``refused`` (4xx, with the reason),
    ``not posted`` (made in time, never stored: no reply, the session lost or closed) or
    ``skipped`` (not for the referee: made after the run's time limit, or failed locally)."""

    lines: list[dict] = field(default_factory=list)
    posted: int = 0
    refused: int = 0
    skipped: int = 0
    unposted: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # why not posted / refused -> count

    def add(self, images: list[str], status: str, detail: str = "") -> None:
        for name in images:
            self.lines.append({"image": name, "post": status, "detail": detail})
        if status == "posted":
            self.posted += len(images)
        elif status == "skipped":
            self.skipped += len(images)
        else:
            if status == "refused":
                self.refused += len(images)
            else:
                self.unposted += images
            self.reasons[detail] = self.reasons.get(detail, 0) + len(images)


class Downloader(threading.Thread):
    """Fetches zip 1, 101, 201, ... into ``folder`` as ``k.jpg`` and adds them to ``feed``,
    staying at most ``ahead`` images ahead of the answers (bounded disk), deleting each image
    once answered. Images in ``held`` (answered already, by an earlier run of the session) are
    neither written nor fed; a zip of held images only is not asked for."""

    def __init__(self, client: RefereeClient, feed, folder: Path, count: int, ahead: int,
                 held: set[int] | None = None) -> None:
        super().__init__(name="lpirc-referee-download", daemon=True)
        self.client, self.feed, self.folder, self.count = client, feed, folder, count
        self.ahead = max(ahead, ZIP)
        self.held = held or set()
        self.cond = threading.Condition()
        self.answered = 0
        self.downloaded = 0
        self.stop = threading.Event()
        self.error: str | None = None

    def on_answered(self, names: list[str]) -> None:
        for name in names:
            (self.folder / name).unlink(missing_ok=True)
        with self.cond:
            self.answered += len(names)
            self.cond.notify_all()

    def run(self) -> None:
        try:
            for first in range(1, self.count + 1, ZIP):
                if all(k in self.held for k in range(first, min(first + ZIP, self.count + 1))):
                    continue
                with self.cond:
                    while self.downloaded - self.answered >= self.ahead and not self.stop.is_set():
                        self.cond.wait(0.2)
                if self.stop.is_set() or not self._fetch(first):
                    break
        except Exception as e:  # a full disk, say: the run answers what it has, and says why
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.feed.close()

    def _fetch(self, first: int) -> bool:
        r = self.client.authed("/zipimages", {"image_name": str(first)})
        if r.status != 200:
            self.error = f"/zipimages {first}: {r.reason()}"
            return False
        names = []
        try:
            with zipfile.ZipFile(io.BytesIO(r.body)) as z:
                for member in z.namelist():
                    stem = Path(member).name
                    if not stem[:-4].isdigit() or int(stem[:-4]) in self.held:
                        continue  # only flat k.jpg members: nothing is written elsewhere
                    (self.folder / stem).write_bytes(z.read(member))
                    names.append(stem)
        except zipfile.BadZipFile:
            self.error = f"/zipimages {first}: not a zip file"
            return False
        names.sort(key=lambda n: int(n[:-4]))
        self.downloaded += len(names)
        if not self.stop.is_set():
            self.feed.add(names)
        return True


class Poster(threading.Thread):
    """Posts answers in batches (up to ``batch`` per /result, or what came within 0.2 s; within
    FLUSH_S of the session's end, each chunk as it comes). ``end``: the session's end
    (monotonic s). ``boxes``: send whole-image bounding boxes (the original referee wants
    them); the sizes come with the records."""

    def __init__(self, client: RefereeClient, log: PostLog, batch: int, class_base: int,
                 end: float = float("inf"), boxes: bool = False) -> None:
        super().__init__(name="lpirc-referee-post", daemon=True)
        self.client, self.log, self.batch, self.class_base = client, log, batch, class_base
        self.end, self.boxes = end, boxes
        self.q: queue.Queue = queue.Queue()
        self.closed = ""  # why the referee will take no more (time limit, session ended, lost)

    def submit(self, records, sizes: dict | None = None) -> None:
        self.q.put([(r, (sizes or {}).get(r.image)) for r in records])

    def finish(self) -> None:
        self.q.put(None)
        self.join()

    def run(self) -> None:
        pending: list = []
        done = False
        while not done or pending:
            try:
                first: list | None = [self.q.get(timeout=0.2 if pending else None)]
            except queue.Empty:  # 0.2 s with nothing new: post what is pending
                first = None
            items = first or []
            # and every chunk that came while the last post was in flight: one /result for
            # them all (up to ``batch``), not one per chunk. Near the session's end (each chunk
            # posted as it comes) a post per chunk fell behind the answers on a loaded machine:
            # 400 answers made in time were still queued when a 1 s session ended
            items += self._drain()
            done = done or None in items
            pending += [x for it in items if it is not None for x in it]
            if (first is not None and len(pending) < self.batch and not done
                    and time.monotonic() < self.end - FLUSH_S):
                continue
            while pending:
                self._post(pending[:self.batch])
                pending = pending[self.batch:]

    def _drain(self) -> list:
        """Every chunk already queued, without waiting."""
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out

    def _post(self, items) -> None:
        ok = []
        for rec, size in items:
            if rec.error or not rec.top5:
                self.log.add([rec.image], "skipped", f"answered wrong locally: {rec.error}")
            elif rec.late:
                self.log.add([rec.image], "skipped", "made after the run's own time limit")
            else:
                ok.append((rec, size))
        if not ok:
            return
        names = [r.image for r, _ in ok]
        if self.closed:
            self.log.add(names, "not posted", self.closed)
            return
        fields = {"image_name": [n[:-4] for n in names],
                  "CLASS_ID": [str(r.top5[0] + self.class_base if r.top5[0] >= 0
                                   else self.class_base - 1) for r, _ in ok],
                  "confidence": [f"{float(r.scores[0]):.6g}" if r.scores else "0" for r, _ in ok]}
        if self.boxes:  # the whole image: (0, 0, width, height)
            fields.update(xmin=["0"] * len(ok), ymin=["0"] * len(ok),
                          xmax=[str(sz[0] if sz else 0) for _, sz in ok],
                          ymax=[str(sz[1] if sz else 0) for _, sz in ok])
        r = self.client.authed("/result", fields, deadline=self.end)
        if r.status == 200:
            self.log.add(names, "posted")
        elif r.status in (0, LOST):
            self.log.add(names, "not posted", r.reason())
            if r.status == LOST:
                self.closed = r.reason()
        else:
            self.log.add(names, "refused", r.reason())
            if r.status == 401:
                self.closed = f"the referee had closed the session ({r.reason()})"


def jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's header, or None."""
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(path.read_bytes())
        return w, h
    except (OSError, ValueError):
        return None


class _Relay:
    """The run's answers callback: each chunk to the poster (with the images' sizes when it
    sends boxes), its images off the disk."""

    def __init__(self, poster: Poster, down: Downloader) -> None:
        self.poster, self.down = poster, down

    def __call__(self, records) -> None:
        sizes = ({r.image: jpeg_size(self.down.folder / r.image) for r in records}
                 if self.poster.boxes else None)
        self.poster.submit(records, sizes)
        self.down.on_answered([r.image for r in records])


@dataclass
class Session:
    """The session as the client found it at login: images, the referee's numbering, when it
    ends (monotonic s; None where the referee does not say) and what it holds already."""

    count: int
    class_base: int
    numbering: str
    end: float | None
    held: set[int]
    lpirc_referee: bool


def _join(client: RefereeClient, asked_base: int | None) -> Session:
    class_base, numbering, told = _numbering(client, asked_base)
    client.login()
    count = client.count()
    left = client.time_left_s()
    end = None if left is None else time.monotonic() + left
    if end is not None:
        client.deadline = min(client.deadline, end)
    held = client.answered() or set()
    return Session(count, class_base, numbering, end, held, told)


def clean_stale_scratch(base: Path | None = None) -> int:
    """Remove scratch folders of referee runs whose process is gone (a crash, kill -9): named
    ``lpirc-referee-PID-*`` in the temp folder, PID not running. Returns how many."""
    base = Path(base or tempfile.gettempdir())
    n = 0
    for d in base.glob(SCRATCH_PREFIX + "*-*"):
        pid = d.name[len(SCRATCH_PREFIX):].split("-")[0]
        if not pid.isdigit() or not d.is_dir() or d.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(d, ignore_errors=True)
        n += 1
    return n


def run_with_referee(settings, url: str, user: str, password: str, *, ahead: int = 1000,
                     batch: int = 100, class_base: int | None = None, progress: bool = True):
    """``lpirc run`` fed by a referee. Returns (RunOutcome, report dict); the outcome's exit
    code is 1 when answers made in time were not stored (see the module's exit codes).

    Raises RefereeError when the login or the count fails, LpircError as ``lpirc.runner.run``."""
    client = RefereeClient(url, user, password, time.monotonic() + settings.time_limit_s)
    cleaned = clean_stale_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    try:
        ses = _join(client, class_base)
        if ses.end is not None:  # the referee's clock rules, less the time to post the last
            left = ses.end - time.monotonic()
            margin = min(POST_MARGIN_S, 0.1 * left)
            settings = dataclasses.replace(
                settings, time_limit_s=min(settings.time_limit_s, max(0.1, left - margin)),
                ends_at_monotonic=ses.end - margin)  # the run's own clock starts later
        feed = GrowingSource(scratch, total=ses.count - len(ses.held))
        log = PostLog()
        down = Downloader(client, feed, scratch, ses.count, ahead, ses.held)
        poster = Poster(client, log, batch, ses.class_base,
                        ses.end if ses.end is not None else client.deadline,
                        boxes=not ses.lpirc_referee)
        out = Path(settings.out) if settings.out else new_run_dir(Path(settings.model))
        settings = dataclasses.replace(settings, holdout=scratch, ground_truth=None, out=out)

        down.start()
        poster.start()
        try:
            outcome = run(settings, progress=progress, source=feed,
                          on_answers=_Relay(poster, down))
        finally:
            down.stop.set()
            with down.cond:
                down.cond.notify_all()
            poster.finish()
        report = dict(_finish(client, outcome, log, down, ses), class_base=ses.class_base,
                      class_base_from=ses.numbering, stale_scratch_removed=cleaned)
        (outcome.out_dir / "referee_posts.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in log.lines), encoding="utf-8")
        manifest = dict(outcome.manifest, referee=report)
        write_json(outcome.out_dir / MANIFEST, manifest)
        outcome = dataclasses.replace(outcome, manifest=manifest)
        if report["failed"] and outcome.exit_code == 0:
            outcome = dataclasses.replace(outcome, exit_code=EXIT_FAILED)
        return outcome, report
    finally:
        client.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _numbering(client: RefereeClient, asked: int | None) -> tuple[int, str, bool]:
    """The CLASS_ID base to post with, where it came from, and whether the referee stated it
    (lpirc's referee does in ``/help``; the original does not): the referee's word (when
    ``asked`` is None, or to check ``asked``), else ``asked``, else 0. RefereeError (before any
    login) when ``asked`` contradicts what the referee says: every answer would be off by one."""
    told = client.class_base()
    if asked is not None and told is not None and asked != told:
        raise RefereeError(f"{client.url}: the referee numbers CLASS_ID from {told} (its /help), "
                           f"not from {asked} (--referee-class-base): every answer would be "
                           "off by one")
    if told is not None:
        return told, "the referee's /help", True
    if asked is not None:
        return asked, "--referee-class-base", False
    return 0, "default: the referee does not say (give --referee-class-base)", False


def _finish(client: RefereeClient, outcome, log: PostLog, down: Downloader,
            ses: Session) -> dict:
    """Post the run's energy (self-reported), log out (unless the session was lost: the new
    one stays open for a rerun), and say what happened; ``failed`` says why the run is exit 1."""
    e = outcome.manifest.get("energy") or {}
    energy = "not posted: " + ("the session was lost" if client.lost else "no figure")
    held = len(ses.held)
    if e.get("wh") is not None and not client.lost:
        method = f"{e.get('source')}: {e.get('method')}"
        if held:  # an earlier run of this session answered some images: its energy is gone
            method = (f"covers this run only, not the earlier run(s) of the session that "
                      f"answered {held} image(s); {method}")
        deadline = None if ses.end is None else ses.end + ENERGY_AFTER_S
        r = client.authed("/energy", {"energy_wh": repr(float(e["wh"])), "method": method[:200]},
                          deadline=deadline)
        energy = ("posted" + (" (covers this run only: labelled so)" if held else "")
                  if r.status == 200 else f"not accepted ({r.reason()})")
    if client.lost:
        r = Reply(LOST, client.lost.encode())
        logout = f"not done: the session was lost ({client.lost}); run again to answer the " \
                 "new session from its first image"
    else:
        r = client.authed("/logout", {})
        logout = ("ok" if r.status == 200 else
                  f"none needed: the session had already ended ({r.reason()})"
                  if r.status == 401 else f"failed ({r.reason()})")
    failed = None
    if client.lost:
        failed = "the session was lost: " + client.lost
    elif log.unposted:
        failed = f"{len(log.unposted)} answer(s) made in time were never stored by the referee"
    elif log.refused and not log.posted:
        failed = f"the referee refused every answer posted ({log.refused})"
    budget = (outcome.manifest.get("budget") or {}).get("time_limit_s")
    return {"url": client.url, "user": client.user, "images": ses.count,
            "held_before": held, "time_limit_s": budget,
            "session_end": "the referee's /status" if ses.end is not None else
                           "the run's --time-limit-s (the referee does not say)",
            "downloaded": down.downloaded, "download_error": down.error,
            "posted": log.posted, "refused": log.refused, "not_posted": len(log.unposted),
            "skipped": log.skipped, "not_posted_images": log.unposted[:1000],
            "reasons": dict(sorted(log.reasons.items(), key=lambda kv: -kv[1])[:5]),
            "boxes_sent": not ses.lpirc_referee, "retries": client.retries,
            "energy": energy, "logout": r.status == 200, "logout_reply": logout,
            "failed": failed}


def format_report(report: dict) -> str:
    """The lines printed after the run's summary (one line each, reasons in a few words)."""
    lines = [f"referee         {report['url']} as {report['user']}: {report['images']} images, "
             f"{report['downloaded']} downloaded, {report['posted']} answers posted (200), "
             f"{report['refused']} refused, {report['not_posted']} never posted",
             f"referee budget  {report['time_limit_s'] or 0:.1f} s wall: to the session's end by "
             f"{report.get('session_end', 'the referee')}, less the time to post the last answers",
             f"referee energy  {report['energy']} (self-reported: the referee's meter, if any, "
             "takes precedence)",
             f"referee logout  {report.get('logout_reply', 'ok' if report['logout'] else 'failed')}"
             f"; {report['retries']} call(s) retried; the referee scores the session "
             "(lpirc referee results)"]
    if "class_base" in report:
        lines[0] += f"; CLASS_ID from {report['class_base']} ({report['class_base_from']})"
    if report.get("held_before"):
        lines.append(f"referee resumed the session held {report['held_before']} answer(s) from an "
                     "earlier run: only the other images were asked for")
    if report.get("skipped"):
        lines.append(f"referee skipped {report['skipped']} answer(s) not sent: made after the "
                     "run's time limit, or failed locally")
    if report["download_error"]:
        lines.append(f"referee note    downloads stopped: {report['download_error']}")
    for why, n in (report.get("reasons") or {}).items():
        lines.append(f"not stored      {n}: {why}")
    if report["not_posted"]:
        shown = ", ".join(report["not_posted_images"][:10])
        lines.append(f"never posted    {shown}" + (" ..." if report["not_posted"] > 10 else "")
                     + " (all in referee_posts.jsonl)")
    if report.get("failed"):
        lines.append(f"referee FAILED  {report['failed']} (exit 1)")
    return "\n".join(lines)


__all__ = ["RefereeClient", "RefereeError", "format_report", "run_with_referee"]
