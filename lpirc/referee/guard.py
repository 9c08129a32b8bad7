"""What keeps one client from starving the others: the login gate (password hashing off the
request threads, bounded, failed logins rate-limited) and the connection guard (idle and slow
connections closed, connections per client and in all capped).

Both run on the server's event loop (no locks): :class:`LoginGate` decides, before any hashing,
whether a login is hashed now, queued, or refused with 429; :func:`guarded_protocol` is
uvicorn's h11 protocol with accept-time caps and a request timeout. Their settings,
:class:`GateLimits` and :class:`ConnLimits`, are in :mod:`lpirc.referee.config`.

Figures (``bench/referee_load.py --login-flood 60`` on the shared 2-core machine; the table is
in docs/referee.md, "Under abuse"): before the gate, 60 connections posting wrong passwords held
every worker thread and one device's /zipimages fell to 7 images/s and its login took 8-20 s;
with it (and the server's 2 s hold of each 429), 1,736-3,829 images/s and 0.22-0.26 s.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from lpirc.referee.config import ConnLimits, GateLimits
from lpirc.referee.store import Store, Team, check_password, hash_password


class Refused(Exception):
    """A login refused without hashing: 429, ``retry_after_s``, one-line ``message``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = max(1, int(retry_after_s + 0.999))


@dataclass
class _Bucket:
    """Failures allowed: ``tokens`` (refilled one per ``every_s`` up to ``burst``)."""

    burst: int
    every_s: float
    tokens: float = 0.0
    at: float = 0.0
    refused: int = 0  # since the last log line
    logged: float = field(default=-1e9)

    def level(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every_s)
        self.at = now
        return self.tokens

    def wait_s(self, now: float) -> float:
        return max(0.0, (1 - self.level(now)) * self.every_s)


class LoginGate:
    """Checks logins with a bounded hashing budget. ``await check(client, name, password)``
    returns the Team, or None for a wrong name or password (the same work and time for both:
    an unknown name is hashed against a dummy); raises :class:`Refused` (429) when the client
    or the account is over its failed-login rate or the queue is full. A name and password
    that logged in before are recognised by a keyed digest in memory and not hashed again.

    ``log`` gets one line when a client or an account is first refused, then at most one per
    10 s with the count refused meanwhile."""

    def __init__(self, store: Store, limits: GateLimits = GateLimits(), log=print) -> None:
        self.store, self.limits, self.log = store, limits, log
        self.pool = ThreadPoolExecutor(limits.hash_workers, thread_name_prefix="lpirc-login")
        self._key = secrets.token_bytes(32)
        self._known: dict[bytes, Team] = {}  # digest of (name, password) -> team, logged in
        self._dummy = hash_password(secrets.token_hex(8))
        self._clients: dict[str, _Bucket] = {}
        self._accounts: dict[str, _Bucket] = {}
        self._busy = 0
        self._waiting: list = []  # heap of (priority, seq, future)
        self._seq = itertools.count()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def check(self, client: str, name: str, password: str) -> Team | None:
        key = hmac.new(self._key, name.encode() + b"\0" + password.encode(),
                       hashlib.sha256).digest()
        team = self._known.get(key)
        if team is not None:
            return team
        now = time.monotonic()
        suspect = self._admit(client, name, now)  # takes one of the client's tokens
        try:
            await self._slot(1 if suspect else 0)
        except BaseException:
            self._refund(client, time.monotonic())
            raise
        try:
            team = await asyncio.get_running_loop().run_in_executor(
                self.pool, self._verify, name, password)
        finally:
            self._release()
        if team is None:
            self._failed(name, time.monotonic())
        else:
            self._refund(client, time.monotonic())
            if len(self._known) < 10_000:
                self._known[key] = team
        return team

    def _verify(self, name: str, password: str) -> Team | None:
        found = self.store.login_record(name)
        if found is None:
            check_password(password, self._dummy)  # the same work as a wrong password
            return None
        team, stored = found
        return team if check_password(password, stored) else None

    # --- rate limits ---------------------------------------------------------------------------

    def _bucket(self, table: dict, key: str, burst: int, every_s: float, now: float) -> _Bucket:
        b = table.get(key)
        if b is None:
            if len(table) > 50_000:  # forget buckets that are full again
                for k in [k for k, v in table.items() if v.level(now) >= v.burst][:25_000]:
                    del table[k]
            b = table[key] = _Bucket(burst, every_s, float(burst), now)
        return b

    def _admit(self, client: str, name: str, now: float) -> bool:
        """Take one of the client's tokens for this login (given back if it succeeds), or
        raise Refused. True when the client has failed, or has logins under way: it waits
        behind clients with a clean record, and the account's limit applies to it."""
        lim = self.limits
        c = self._bucket(self._clients, client, lim.client_burst, lim.client_every_s, now)
        if c.level(now) < 1:
            self._note_refused(c, f"client {client}", now)
            raise Refused(f"Too many failed logins from {client}: retry in "
                          f"{c.wait_s(now):.0f} s", c.wait_s(now))
        suspect = c.tokens < c.burst
        if suspect:
            a = self._bucket(self._accounts, name, lim.account_burst, lim.account_every_s, now)
            if a.level(now) < 1:
                self._note_refused(a, f"account {name[:64]!r}", now)
                raise Refused(f"Too many failed logins for this account: retry in "
                              f"{a.wait_s(now):.0f} s", a.wait_s(now))
        c.tokens -= 1
        return suspect

    def _refund(self, client: str, now: float) -> None:
        c = self._clients.get(client)
        if c is not None:
            c.level(now)
            c.tokens = min(c.burst, c.tokens + 1)

    def _failed(self, name: str, now: float) -> None:
        """A wrong login: the client's token stays taken; one of the account's is taken."""
        lim = self.limits
        a = self._bucket(self._accounts, name, lim.account_burst, lim.account_every_s, now)
        a.level(now)
        a.tokens = max(0.0, a.tokens - 1)

    def _note_refused(self, b: _Bucket, who: str, now: float) -> None:
        b.refused += 1
        if now - b.logged >= 10.0:
            self.log(f"lpirc referee: login: {who} over its failed-login rate "
                     f"({b.burst} at once, then one per {b.every_s:g} s): {b.refused} login(s) "
                     f"refused with 429 " + ("(first)" if b.logged < 0 else "in the last 10 s"))
            b.refused, b.logged = 0, now

    # --- the hashing slots -----------------------------------------------------------------------

    async def _slot(self, priority: int) -> None:
        if self._busy < self.limits.hash_workers and not self._waiting:
            self._busy += 1
            return
        if len(self._waiting) >= self.limits.queue:
            worst = max(self._waiting)
            if priority == 0 and worst[0] == 1:  # a clean client displaces a failing one
                self._waiting.remove(worst)
                heapq.heapify(self._waiting)
                worst[2].set_exception(Refused("Too many logins waiting: retry in 1 s", 1))
            else:
                raise Refused("Too many logins waiting: retry in 1 s", 1)
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._seq), fut))
        try:
            await fut  # set by _release: the slot is handed over, _busy unchanged
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release()  # handed a slot as the client went away
            else:
                self._waiting = [w for w in self._waiting if w[2] is not fut]
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self._busy -= 1


# --- connections -------------------------------------------------------------------------------


def guarded_protocol(limits: ConnLimits, log=print):
    """uvicorn's H11Protocol with the :class:`ConnLimits` caps and timeouts (pass the class as
    ``uvicorn.Config(http=...)``), and a ``sweep`` coroutine to run on the server's loop."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    per_client: dict[str, int] = {}
    alive: set = set()
    noted: dict[str, list] = {}  # kind -> [last logged (monotonic s), closed since]

    def note(kind: str, why: str) -> None:
        """One line for the first connection closed for ``kind``, then at most one per 10 s."""
        last = noted.setdefault(kind, [-1e9, 0])
        last[1] += 1
        now = time.monotonic()
        if now - last[0] >= 10.0:
            log(f"lpirc referee: connections: {why}; {last[1]} connection(s) closed for it "
                + ("(first)" if last[0] < 0 else "in the last 10 s"))
            last[0], last[1] = now, 0

    class Guarded(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._seen, self._mark, self._counted = None, time.monotonic(), False
            host = (self.client or ("?",))[0]
            if per_client.get(host, 0) >= limits.per_client:
                note("client", f"{host} has {limits.per_client} open (the per-client limit)")
                self.transport.close()
                return
            if len(alive) >= limits.max_connections:
                idle = [c for c in alive if c._idle()]
                if not idle:
                    note("full", f"{len(alive)} open, none idle (the limit)")
                    self.transport.close()
                    return
                min(idle, key=lambda c: c._mark).transport.close()
                note("evict", f"{len(alive)} open (the limit): the longest idle closed")
            per_client[host] = per_client.get(host, 0) + 1
            self._host, self._counted = host, True
            alive.add(self)

        def connection_lost(self, exc) -> None:
            if self._counted:
                self._counted = False
                alive.discard(self)
                left = per_client.get(self._host, 1) - 1
                if left:
                    per_client[self._host] = left
                else:
                    per_client.pop(self._host, None)
            super().connection_lost(exc)

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _check(self, now: float) -> None:
            if self.cycle is not self._seen:  # a new request since the last look
                self._seen, self._mark = self.cycle, now
                self._done = False
            if self._idle():
                if self.cycle is not None and not getattr(self, "_done", False):
                    self._done, self._mark = True, now  # its reply went out: idle from now
                if now - self._mark >= limits.request_timeout_s:
                    note("timeout", f"a connection from {self._host} sent no complete "
                                    f"request in {limits.request_timeout_s:g} s")
                    self.transport.close()

    async def sweep() -> None:
        while True:
            await asyncio.sleep(min(1.0, limits.request_timeout_s / 4))
            now = time.monotonic()
            for conn in list(alive):
                conn._check(now)

    return Guarded, sweep


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else max(soft, 65536), hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
