"""What keeps one client from starving the others: the login gate (:mod:`lpirc.login_gate`,
shared with ``lpirc online``; here the referee's password check for it) and the connection
guard (idle and slow connections closed, connections per client and in all capped).

:func:`guarded_protocol` is uvicorn's h11 protocol with accept-time caps and a request timeout;
it runs on the server's event loop (no locks). Its settings, :class:`ConnLimits`, are in
:mod:`lpirc.referee.config` with the rest of what ``lpirc referee serve`` is started with.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from lpirc.referee.config import ConnLimits
from lpirc.referee.store import Store, Team, verify_login


def verifier(store: Store) -> Callable[[str, str], Team | None]:
    """The referee's password check for the login gate (:class:`lpirc.login_gate.LoginGate`):
    the account, or None for an unknown name or a wrong password (the same work for both)."""
    return lambda name, password: verify_login(store.login_record(name), password)


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
