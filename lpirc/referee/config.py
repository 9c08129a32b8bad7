"""What ``lpirc referee serve`` is started with, in one place: :class:`RefereeConfig` (the
sessions' rules and where things go) and :class:`ConnLimits` (the connection guard), with their
defaults; the login gate's, :class:`~lpirc.login_gate.GateLimits`, are in
:mod:`lpirc.login_gate` (shared with ``lpirc online``; standard library only).

No module of the ``referee`` extra is imported here (itsdangerous, Starlette, uvicorn): the
command line reads every default shown by ``lpirc referee serve --help`` from these dataclasses
(:func:`lpirc.cli._options.setting`) without the extra installed. The code that applies them is
:mod:`~lpirc.referee.core` (sessions), :mod:`lpirc.login_gate` and :mod:`~lpirc.referee.guard`
(limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import scoring
from lpirc.login_gate import GateLimits

MIB = 1024 * 1024


@dataclass(frozen=True)
class ConnLimits:
    """The connection guard's settings (:func:`lpirc.referee.guard.guarded_protocol`).

    request_timeout_s: a connection must complete a request's headers within this many seconds
      of connecting or of its previous reply, and its body within ``body_timeout_s`` (the
      server answers 408); else it is closed (slowloris). uvicorn's own keep-alive timer is
      cancelled by the first byte of a request, so it does not cover a request that never ends.
    max_connections: open connections in all; a new one beyond closes the longest-idle
      connection (one with no request under way), or itself when none is idle. Kept well under
      the process's file-descriptor limit (raised to its hard limit at start).
    per_client: open connections from one client address; beyond, a new one is closed at once.
    """

    request_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 512
    per_client: int = 64


@dataclass(frozen=True)
class RefereeConfig:
    """What ``lpirc referee serve`` is started with.

    time_limit_s: seconds from a team's login to the end of its session (LPIRC: 600).
    attempts: sessions each team may start (every one is kept and scored).
    class_base: 0 = CLASS_ID 0..999 (lpirc's sorted synsets), 1 = 1..1000.
    runs_dir: where each scored session's run folder goes (default: ``<db>.runs/`` beside it).
    standings_db: lpirc's standings database (``lpirc.leaderboard``) to add each scored session
      to, or None.
    max_body_bytes: the largest request body accepted (413 beyond); a ``/result`` of 20,000
      answers is about 1.2 MB.
    gate, conns: the login gate's and the connection guard's limits.
    """

    holdout: Path
    ground_truth: Path
    db: Path
    time_limit_s: float = scoring.DEFAULT_TIME_LIMIT_S
    rules: str = scoring.DEFAULT_RULES
    attempts: int = 1
    class_base: int = 0
    runs_dir: Path | None = None
    standings_db: Path | None = None
    max_body_bytes: int = 4 * MIB
    gate: GateLimits = field(default_factory=GateLimits)
    conns: ConnLimits = field(default_factory=ConnLimits)

    def runs_path(self) -> Path:
        return Path(self.runs_dir) if self.runs_dir else Path(str(self.db) + ".runs")
