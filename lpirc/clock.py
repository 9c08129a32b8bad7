"""The time budget of a run, by LPIRC's two clocks.

``wall``: LPIRC on-site rule. Everything from the start of the run (workers launched, model
loading included) to the last answer counts against ``time_limit_s``.

``inference``: LPIRC Track 1 / OVIC rule. Only the summed model-invoke time counts, against
``ms_per_image`` x number of images. The wall limit still applies, as a safety net, so a run
never outlasts ``time_limit_s`` whatever the model does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from scoring.rules import inference_budget_ms, past_time_limit, within_inference_budget


@dataclass(frozen=True)
class Budget:
    """``ends_at``: a time.monotonic() by which the run ends whatever its own clock says (a
    referee session's end); None: only ``time_limit_s`` on the run's clock."""

    clock: str
    time_limit_s: float
    ms_per_image: float
    images: int
    ends_at: float | None = None

    @property
    def inference_budget_ms(self) -> float | None:
        """Summed invoke time allowed under the inference clock, ms (the scorer's own rule,
        ``scoring.rules.inference_budget_ms``); None under the wall clock."""
        if self.clock != "inference":
            return None
        return inference_budget_ms(self.ms_per_image, self.images)

    @property
    def inference_budget_s(self) -> float | None:
        """:attr:`inference_budget_ms` in seconds, for people and the manifest."""
        ms = self.inference_budget_ms
        return None if ms is None else ms / 1000.0

    def exhausted(self, wall_s: float, inference_ms: float) -> bool:
        """True once the run must stop: ``wall_s`` (s) past the wall limit, the session's end
        reached, or ``inference_ms`` (summed invoke time, ms) at the inference budget."""
        if wall_s >= self.time_limit_s or self.session_ended():
            return True
        limit = self.inference_budget_ms
        # images 0: a feed that has given none yet (its budget grows with the images taken)
        return limit is not None and self.images > 0 and inference_ms >= limit

    def late(self, t_s: float, summed_ms: float) -> bool:
        """Whether an answer logged at ``t_s`` (s on the run's clock, as logged), with
        ``summed_ms`` of invoke time summed up to and including it, is logged ``late``: past the
        wall limit or the inference budget by the scorer's own rules
        (``scoring.rules.past_time_limit``, ``within_inference_budget``), or after the
        session's end (``ends_at``, which the scorer learns only through this flag)."""
        if past_time_limit(t_s, self.time_limit_s) or self.session_ended():
            return True
        limit = self.inference_budget_ms
        return limit is not None and not within_inference_budget(summed_ms, limit)

    def session_ended(self) -> bool:
        """True once ``ends_at`` (a referee session's end, time.monotonic()) has passed."""
        return self.ends_at is not None and time.monotonic() >= self.ends_at

    def wall_left_s(self, wall_s: float) -> float:
        left = self.time_limit_s - wall_s
        if self.ends_at is not None:
            left = min(left, self.ends_at - time.monotonic())
        return max(0.0, left)

    def to_json(self) -> dict:
        return {
            "clock": self.clock,
            "time_limit_s": self.time_limit_s,
            "ms_per_image": self.ms_per_image,
            "inference_budget_s": self.inference_budget_s,
        }


class Stopwatch:
    """Monotonic seconds since construction; the run's ``t_s`` axis."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


#: A file holding seconds to add to the wall clock (a test hook: a test writes it to step the
#: clock of a server process it started, as an NTP correction or an operator would).
WALL_OFFSET_ENV = "LPIRC_WALL_OFFSET_FILE"


def wall_time() -> float:
    """Unix seconds from the system clock (which NTP or a person may step), plus the offset in
    the file named by ``$LPIRC_WALL_OFFSET_FILE`` when set (tests). For people and records,
    never for budgets: a step would lengthen or cut them."""
    import os

    path = os.environ.get(WALL_OFFSET_ENV)
    offset = 0.0
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                offset = float(f.read().strip() or 0)
        except (OSError, ValueError):
            offset = 0.0
    return time.time() + offset


class SteadyWall:
    """Unix seconds that advance with ``time.monotonic()``: the wall clock read once, at
    construction, plus the monotonic time since. Deadlines set and checked on it are immune to
    a wall-clock step while the process runs (a -300 s step no longer gives 5 more minutes, a
    +700 s one no longer ends a session early); its readings stay close to wall time for the
    people who read them (they drift from it by whatever steps happened since the start).

    A new process reads the wall clock again: a step made while the referee was stopped moves
    the deadlines of the sessions it resumes (they are stored as unix seconds)."""

    def __init__(self) -> None:
        self.wall0 = wall_time()
        self.mono0 = time.monotonic()

    def __call__(self) -> float:
        return self.wall0 + (time.monotonic() - self.mono0)
