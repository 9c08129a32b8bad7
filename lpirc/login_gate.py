"""The login gate both servers put in front of their password checks (``lpirc referee`` and
``lpirc online``): hashing off the request threads and bounded, failed logins rate-limited per
client address and per account name, a refused login answered 429 with Retry-After before any
hashing. One rule in one place: each server passes its own password check (``verify``) and
answers :class:`Refused` in its own protocol (plain text for the referee, JSON or an HTML page
for the online service), held :data:`TARPIT_S` first (:func:`hold`).

It runs on the server's event loop (no locks). Figures (the referee's, ``bench/referee_load.py
--login-flood 60`` on the shared 2-core machine; the table is in docs/referee.md, "Under
abuse"): before the gate, 60 connections posting wrong passwords held every worker thread and
one device's /zipimages fell to 7 images/s and its login took 8-20 s; with it (and the 2 s hold
of each 429), 1,736-3,829 images/s and 0.22-0.26 s.
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
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

#: How long a refused login's 429 is held before it is sent (at most its Retry-After): a
#: sleeping coroutine costs no CPU, and a flooding connection then asks at most once per
#: TARPIT_S instead of as fast as the server can answer 429s (about 900 a second had taken the
#: referee's event loop from everyone and delayed a team's login to 0.7-2.9 s).
TARPIT_S = 2.0


async def hold(refused: "Refused") -> None:
    """Wait before sending a refused login's 429 (:data:`TARPIT_S`, at most its Retry-After)."""
    await asyncio.sleep(min(TARPIT_S, refused.retry_after_s))


@dataclass(frozen=True)
class GateLimits:
    """The login gate's settings.

    hash_workers: password checks at once (scrypt: ~50 ms and 16 MB each). One leaves the other
      core(s) to serving images; 20 checks/s is far more than the teams' own logins need.
    queue: logins waiting for a hash at most; beyond, 429. Logins from clients with no recent
      failure go first, and displace a waiting login from a client that has failed.
    client_burst, client_every_s: failed logins one client address may make at once, and then
      one per this many seconds (a token bucket); beyond, 429 with Retry-After, no hashing.
    account_burst, account_every_s: the same per account name, applied to clients that have
      failed themselves (a client with a clean record is never locked out by others' failures).
    """

    hash_workers: int = 1
    queue: int = 32
    client_burst: int = 5
    client_every_s: float = 6.0
    account_burst: int = 10
    account_every_s: float = 3.0


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


class LoginGate(Generic[T]):
    """Checks logins with a bounded hashing budget. ``await check(client, name, password)``
    returns what ``verify(name, password)`` returns (the account), or None for a wrong name or
    password; raises :class:`Refused` (429) when the client or the account is over its
    failed-login rate or the queue is full. ``verify`` runs on the gate's own threads
    (``hash_workers``) and must take the same time for an unknown name as for a wrong password
    (``lpirc.referee.store.verify_login``). A name and password that logged in before are
    recognised by a keyed digest in memory and not hashed again.

    ``log`` gets one line, starting with ``server`` (``lpirc referee``), when a client or an
    account is first refused, then at most one per 10 s with the count refused meanwhile."""

    def __init__(self, verify: Callable[[str, str], T | None],
                 limits: GateLimits = GateLimits(), log=print,
                 server: str = "lpirc referee") -> None:
        self.verify, self.limits, self.log, self.server = verify, limits, log, server
        self.pool = ThreadPoolExecutor(limits.hash_workers, thread_name_prefix="lpirc-login")
        self._key = secrets.token_bytes(32)
        self._known: dict[bytes, T] = {}  # digest of (name, password) -> account, logged in
        self._clients: dict[str, _Bucket] = {}
        self._accounts: dict[str, _Bucket] = {}
        self._busy = 0
        self._waiting: list = []  # heap of (priority, seq, future)
        self._seq = itertools.count()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def check(self, client: str, name: str, password: str) -> T | None:
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
                self.pool, self.verify, name, password)
        finally:
            self._release()
        if team is None:
            self._failed(name, time.monotonic())
        else:
            self._refund(client, time.monotonic())
            if len(self._known) < 10_000:
                self._known[key] = team
        return team

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
            self.log(f"{self.server}: login: {who} over its failed-login rate "
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
