"""``lpirc run --referee URL``: a device's side of the LPIRC referee protocol.

Read the referee's CLASS_ID numbering from ``/help`` (before any clock runs), log in (the
referee's clock starts), read the count, download zips ahead of the workers into a
scratch folder and feed their images to the same pipeline ``lpirc run`` uses
(:class:`lpirc.sources.GrowingSource`), post the answers in batches as they come, post the
run's own energy figure (self-reported), log out. The local run folder is kept as for a local
run, plus ``referee_posts.jsonl`` (each answer's post status) and a ``referee`` section in
``manifest.json``.

Network faults: every call is retried with exponential backoff (0.1 s doubling to 2 s) until
the run's time limit; a referee that restarts mid-run keeps the session (its token secret and
clock are in its database), so nothing is lost; a reply lost after the referee stored a batch
makes the retry a duplicate, which the referee counts and ignores (the first answer counts).
Only the calls of the original referee are needed (``/energy`` is skipped where it is
unknown), so a team can rehearse against either.
"""

from __future__ import annotations

import dataclasses
import io
import json
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

from lpirc.errors import LpircError
from lpirc.results import MANIFEST, new_run_dir, write_json
from lpirc.runner import run
from lpirc.sources import GrowingSource

ZIP = 100
BACKOFF_S = (0.1, 2.0)  # first retry delay, cap
LOGIN_WAIT_S = 30.0  # how long a login retries a referee that does not answer (then exit 1)


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
        self._lock = threading.Lock()  # one request at a time on a client

    def call(self, path: str, fields: dict, deadline: float | None = None) -> Reply:
        """POST URL-encoded ``fields`` (lists repeat); retried as the class says, until
        ``deadline`` (monotonic seconds) when given, else the client's."""
        delay, why = BACKOFF_S[0], ""
        deadline = self.deadline if deadline is None else min(deadline, self.deadline)
        while True:
            try:
                with self._lock:
                    r = self.http.post(self.url + path, data=fields)
                if r.status_code < 500:
                    return Reply(r.status_code, r.content)
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
            if time.monotonic() + delay > deadline:
                return Reply(0, f"no reply from the referee ({why})".encode())
            self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_S[1])

    def authed(self, path: str, fields: dict) -> Reply:
        """A call with the token; after a bare 401 ``Invalid Token`` (a referee that restarted
        with a new secret), log in once more and retry. A session that ended (time limit,
        logout) is not logged into again: that would start a new attempt."""
        r = self.call(path, {"token": self.token, **fields})
        if r.status == 401 and r.text == "Invalid Token" and path != "/logout":
            self.login(wait_s=None)
            r = self.call(path, {"token": self.token, **fields})
        return r

    def login(self, wait_s: float | None = LOGIN_WAIT_S) -> str:
        """Log in (the referee's clock starts). A referee that cannot be reached is retried
        for ``wait_s`` at most (None: until the client's deadline, as for a login again
        mid-run). RefereeError (exit 1) when it refuses the login or never replies."""
        t0 = time.monotonic()
        r = self.call("/login", {"username": self.user, "password": self.password},
                      deadline=None if wait_s is None else t0 + wait_s)
        if r.status == 0:
            raise RefereeError(f"{self.url}/login: cannot reach the referee (tried for "
                               f"{time.monotonic() - t0:.1f} s): {r.text[:200]}")
        if r.status != 200:
            raise RefereeError(f"{self.url}/login: {r.status} {r.text[:200]}")
        self.token = r.text
        return self.token

    def class_base(self) -> int | None:
        """The CLASS_ID numbering the referee says it takes in ``/help`` (lpirc's referee:
        "CLASS_ID numbering: 0..999" or "1..1000"); None where it does not say (the original).
        Asked before the login: no clock runs yet. RefereeError when it cannot be reached."""
        t0 = time.monotonic()
        r = self.call("/help", {}, deadline=t0 + LOGIN_WAIT_S)
        if r.status == 0:
            raise RefereeError(f"{self.url}/help: cannot reach the referee (tried for "
                               f"{time.monotonic() - t0:.1f} s): {r.text[:200]}")
        m = re.search(r"CLASS_ID numbering: (0\.\.999|1\.\.1000)", r.text) if r.status == 200 else None
        return None if m is None else int(m.group(1)[0])

    def count(self) -> int:
        r = self.authed("/no_of_images", {})
        if r.status != 200 or not r.text.isdigit():
            raise RefereeError(f"{self.url}/no_of_images: {r.status} {r.text[:200]}")
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

    def close(self) -> None:
        self.http.close()


@dataclass
class PostLog:
    """What happened to each answer: posted (200), refused (4xx, with the reason), or never
    posted (the reason)."""

    lines: list[dict] = field(default_factory=list)
    posted: int = 0
    refused: int = 0
    unposted: list[str] = field(default_factory=list)

    def add(self, images: list[str], status: str, detail: str = "") -> None:
        for name in images:
            self.lines.append({"image": name, "post": status, "detail": detail})
        if status == "posted":
            self.posted += len(images)
        elif status == "refused":
            self.refused += len(images)
        else:
            self.unposted += images


class Downloader(threading.Thread):
    """Fetches zip 1, 101, 201, ... into ``folder`` as ``k.jpg`` and adds them to ``feed``,
    staying at most ``ahead`` images ahead of the answers (bounded disk), deleting each image
    once answered."""

    def __init__(self, client: RefereeClient, feed, folder: Path, count: int, ahead: int) -> None:
        super().__init__(name="lpirc-referee-download", daemon=True)
        self.client, self.feed, self.folder, self.count = client, feed, folder, count
        self.ahead = max(ahead, ZIP)
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
            self.error = f"/zipimages {first}: {r.status or 'no reply'} {r.text[:200]}"
            return False
        names = []
        try:
            with zipfile.ZipFile(io.BytesIO(r.body)) as z:
                for member in z.namelist():
                    stem = Path(member).name
                    if not stem[:-4].isdigit():
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
    """Posts answers in batches (up to ``batch`` per /result, or what came within 0.2 s)."""

    def __init__(self, client: RefereeClient, log: PostLog, batch: int, class_base: int) -> None:
        super().__init__(name="lpirc-referee-post", daemon=True)
        self.client, self.log, self.batch, self.class_base = client, log, batch, class_base
        self.q: queue.Queue = queue.Queue()
        self.closed = False  # the referee refused a post for good (time limit, session ended)

    def submit(self, records) -> None:
        self.q.put(list(records))

    def finish(self) -> None:
        self.q.put(None)
        self.join()

    def run(self) -> None:
        pending: list = []
        done = False
        while not done or pending:
            try:
                item = self.q.get(timeout=0.2 if pending else None)
                if item is None:
                    done = True
                else:
                    pending += item
                    if len(pending) < self.batch and not done:
                        continue
            except queue.Empty:
                pass
            while pending:
                self._post(pending[:self.batch])
                pending = pending[self.batch:]

    def _post(self, records) -> None:
        ok, skip = [], []
        for rec in records:
            if rec.error or not rec.top5:
                skip.append((rec.image, f"answered wrong locally: {rec.error}"))
            elif rec.late:
                skip.append((rec.image, "after the run's own time limit"))
            else:
                ok.append(rec)
        for name, why in skip:
            self.log.add([name], "not posted", why)
        if not ok:
            return
        names = [r.image for r in ok]
        if self.closed:
            self.log.add(names, "not posted", "the referee had closed the session")
            return
        fields = {"image_name": [n[:-4] for n in names],
                  "CLASS_ID": [str(r.top5[0] + self.class_base if r.top5[0] >= 0
                                   else self.class_base - 1) for r in ok],
                  "confidence": [f"{float(r.scores[0]):.6g}" if r.scores else "0" for r in ok]}
        r = self.client.authed("/result", fields)
        if r.status == 200:
            self.log.add(names, "posted")
        elif r.status == 0:
            self.log.add(names, "not posted", r.text)
        else:
            self.log.add(names, "refused", f"{r.status} {r.text[:200]}")
            self.closed = r.status == 401


class _Relay:
    """The run's answers callback: each chunk to the poster, its images off the disk."""

    def __init__(self, poster: Poster, down: Downloader) -> None:
        self.poster, self.down = poster, down

    def __call__(self, records) -> None:
        self.poster.submit(records)
        self.down.on_answered([r.image for r in records])


def run_with_referee(settings, url: str, user: str, password: str, *, ahead: int = 1000,
                     batch: int = 100, class_base: int | None = None, progress: bool = True):
    """``lpirc run`` fed by a referee. Returns (RunOutcome, report dict).

    Raises RefereeError when the login or the count fails, LpircError as ``lpirc.runner.run``."""
    deadline = time.monotonic() + settings.time_limit_s
    client = RefereeClient(url, user, password, deadline)
    scratch = Path(tempfile.mkdtemp(prefix="lpirc-referee-"))
    try:
        class_base, numbering = _numbering(client, class_base)
        client.login()
        count = client.count()
        left = client.time_left_s()
        if left is not None and left < settings.time_limit_s:  # the referee's clock rules
            settings = dataclasses.replace(settings, time_limit_s=max(0.1, left))
        feed = GrowingSource(scratch, total=count)
        log = PostLog()
        down = Downloader(client, feed, scratch, count, ahead)
        poster = Poster(client, log, batch, class_base)
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
        report = dict(_finish(client, outcome, log, down, count), class_base=class_base,
                      class_base_from=numbering)
        (outcome.out_dir / "referee_posts.jsonl").write_text(
            "".join(json.dumps(x) + "\n" for x in log.lines), encoding="utf-8")
        manifest = dict(outcome.manifest, referee=report)
        write_json(outcome.out_dir / MANIFEST, manifest)
        return dataclasses.replace(outcome, manifest=manifest), report
    finally:
        client.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _numbering(client: RefereeClient, asked: int | None) -> tuple[int, str]:
    """The CLASS_ID base to post with, and where it came from: the referee's ``/help`` (when
    ``asked`` is None, or to check ``asked``), else ``asked``, else 0. RefereeError (before any
    login) when ``asked`` contradicts what the referee says: every answer would be off by one."""
    told = client.class_base()
    if asked is not None and told is not None and asked != told:
        raise RefereeError(f"{client.url}: the referee numbers CLASS_ID from {told} (its /help), "
                           f"not from {asked} (--referee-class-base): every answer would be "
                           "off by one")
    if told is not None:
        return told, "the referee's /help"
    if asked is not None:
        return asked, "--referee-class-base"
    return 0, "default: the referee does not say (give --referee-class-base)"


def _finish(client: RefereeClient, outcome, log: PostLog, down: Downloader, count: int) -> dict:
    """Post the run's energy (self-reported), log out, and say what happened."""
    e = outcome.manifest.get("energy") or {}
    energy = "not posted (no figure)"
    if e.get("wh") is not None:
        r = client.authed("/energy", {"energy_wh": repr(float(e["wh"])),
                                      "method": f"{e.get('source')}: {e.get('method')}"[:200]})
        energy = "posted" if r.status == 200 else f"not accepted ({_reason(r)})"
    r = client.authed("/logout", {})
    budget = (outcome.manifest.get("budget") or {}).get("time_limit_s")
    return {"url": client.url, "user": client.user, "images": count, "time_limit_s": budget,
            "downloaded": down.downloaded, "download_error": down.error,
            "posted": log.posted, "refused": log.refused, "not_posted": len(log.unposted),
            "not_posted_images": log.unposted[:1000], "retries": client.retries,
            "energy": energy, "logout": r.status == 200,
            "logout_reply": "ok" if r.status == 200 else (
                f"none needed: the session had already ended ({_reason(r)})"
                if r.status == 401 else f"failed ({_reason(r)})")}


def _reason(r: Reply) -> str:
    """A refusal in a few words: its status and the reply's first clause."""
    return f"{r.status or 'no reply'} {r.text.split(':')[0][:80]}"


def format_report(report: dict) -> str:
    """The lines printed after the run's summary."""
    lines = [f"referee         {report['url']} as {report['user']}: {report['images']} images, "
             f"{report['downloaded']} downloaded, {report['posted']} answers posted (200), "
             f"{report['refused']} refused, {report['not_posted']} never posted",
             f"referee budget  {report['time_limit_s']} s wall (--time-limit-s, or the referee's "
             "time left at login when shorter)",
             f"referee energy  {report['energy']} (self-reported: the referee's meter, if any, "
             "takes precedence)",
             f"referee logout  {report.get('logout_reply', 'ok' if report['logout'] else 'failed')}"
             f"; {report['retries']} call(s) retried; the referee scores the session "
             "(lpirc referee results)"]
    if "class_base" in report:
        lines[0] += f"; CLASS_ID from {report['class_base']} ({report['class_base_from']})"
    if report["download_error"]:
        lines.append(f"referee note    downloads stopped: {report['download_error']}")
    if report["not_posted"]:
        shown = ", ".join(report["not_posted_images"][:10])
        lines.append(f"never posted    {shown}" + (" ..." if report["not_posted"] > 10 else "")
                     + " (all in referee_posts.jsonl)")
    return "\n".join(lines)


__all__ = ["RefereeClient", "RefereeError", "format_report", "run_with_referee"]
