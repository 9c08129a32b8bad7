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


@dataclass(frozen=True)
class Budget:
    clock: str
    time_limit_s: float
    ms_per_image: float
    images: int

    @property
    def inference_budget_s(self) -> float | None:
        if self.clock != "inference":
            return None
        return self.ms_per_image * self.images / 1000.0

    def exhausted(self, wall_s: float, inference_s: float) -> bool:
        if wall_s >= self.time_limit_s:
            return True
        limit = self.inference_budget_s
        # images 0: a feed that has given none yet (its budget grows with the images taken)
        return limit is not None and self.images > 0 and inference_s >= limit

    def wall_left_s(self, wall_s: float) -> float:
        return max(0.0, self.time_limit_s - wall_s)

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
