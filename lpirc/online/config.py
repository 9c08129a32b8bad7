"""What ``lpirc online serve`` is started with: one dataclass, every default here.

Phases: ``dev`` (the development phase, scored on the public holdout, scores shown at once)
and ``final`` (the hidden holdout; scores hidden from teams until the organiser publishes
them). The phase uploads go to is chosen by the organiser (``lpirc online phase``) and kept in
the database, so it survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import scoring
from lpirc.login_gate import GateLimits

PHASES = ("dev", "final")
COUNTS = ("best", "latest")  # which scored submission of a team counts in a phase's standings
FAILURE_CLASSES = ("format", "model", "runtime", "timeout", "infrastructure")
#: a submission's states, in order: waiting for a device, on a device, its result being scored
#: on the service (with the service's ground truth; the report drawn), then scored or failed
STATES = ("queued", "running", "scoring", "scored", "failed")
DEFAULT_COUNTS = {"dev": "best", "final": "latest"}


@dataclass(frozen=True)
class PhaseData:
    """One phase's holdout folder and the ground truth the service keeps (never sent to a
    device)."""

    name: str
    holdout: Path
    ground_truth: Path


@dataclass(frozen=True)
class OnlineConfig:
    """Everything ``lpirc online serve`` decides.

    db: the service's SQLite database; its files (uploads, run folders) go to ``<db>.d/``.
    phases: ``dev`` and optionally ``final`` (:class:`PhaseData`).
    per_team_per_day: submissions a team may have charged per UTC day (None: no limit).
    per_team_at_once: submissions a team may have queued or running at once (None: no limit).
    max_model_bytes: the largest upload taken (413 beyond); max_sidecar_bytes likewise.
    devices: devices of the local pool or local Ray instance; address: a Ray cluster.
    executor: ``local`` (``lpirc run`` processes on this machine) or ``ray`` (the fleet).
    rules, time_limit_s, clock, ms_per_image: passed to every ``lpirc run`` and to the scorer.
    hang_margin_s: a run silent this long past its time limit is ended: failure ``timeout``.
    max_attempts: tries of a submission whose device was lost or whose run the service's
        restart interrupted (failure ``infrastructure`` after that; never charged).
    counts: per phase, ``best`` or ``latest`` scored submission counts in the standings.
    check_timeout_s: seconds the upload check may take to load and invoke a model.
    login: the login gate's limits (:class:`lpirc.login_gate.GateLimits`, the referee's
        defaults): password checks at once and waiting, failed logins per client address and
        per account name; beyond, 429 with Retry-After.
    """

    db: Path
    phases: dict[str, PhaseData]
    per_team_per_day: int | None = None
    per_team_at_once: int | None = None
    max_model_bytes: int = 64 * 1024 * 1024
    max_sidecar_bytes: int = 64 * 1024
    devices: int = 2
    address: str | None = None
    executor: str = "local"
    rules: str = scoring.DEFAULT_RULES
    time_limit_s: float = scoring.DEFAULT_TIME_LIMIT_S
    clock: str = "wall"
    ms_per_image: float = scoring.DEFAULT_MS_PER_IMAGE
    hang_margin_s: float = 120.0
    max_attempts: int = 3
    counts: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    check_timeout_s: float = 60.0
    login: GateLimits = GateLimits()

    @property
    def files(self) -> Path:
        """Where uploads and run folders live: ``<db>.d/`` beside the database."""
        return Path(str(self.db) + ".d")

    def run_args(self) -> tuple[str, ...]:
        """The ``lpirc run`` options of every job besides --model, --holdout and --out (no
        report on the device: the service writes it, scored with the ground truth it keeps)."""
        return ("--no-report", "--time-limit-s", repr(self.time_limit_s), "--clock", self.clock,
                "--ms-per-image", repr(self.ms_per_image), "--rules", self.rules)

    def budget_s(self) -> float:
        """Seconds after which a run that has not ended is stuck (its time limit, plus the
        margin; an inference clock's budget is bounded by the wall limit as well)."""
        return self.time_limit_s + self.hang_margin_s
