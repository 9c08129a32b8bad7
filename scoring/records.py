"""The shapes of what a run logs, defined once: lpirc writes them, the scorer reads them.

- :class:`Answer`: one image's answer, as a worker sends it to the parent (no name: the
  parent knows which image each index is).
- :class:`Record`: one line of ``results.jsonl``; its field names, in file order, are
  :data:`RECORD_KEYS`.
- ``M_*``: the keys of ``manifest.json`` that more than one module reads or writes.

Standard library only (the scorer stays numpy + stdlib).
"""

from __future__ import annotations

from typing import NamedTuple


class Answer(NamedTuple):
    """One image's answer, worker -> parent.

    Attributes:
      index: the image's position in the run order (the parent maps it to a name).
      top5: up to 5 ILSVRC-2012 class indices 0..999, best first (a 1001-class model's
        background is -1); ``[]`` when ``error`` is set.
      scores: the model's dequantized output values for ``top5``.
      error: None, or why the image is answered wrong (e.g. ``decode: image file is truncated``).
      latency_ms: decode + preprocess + inference in the worker, ms.
      inference_ms: the invoke time alone, ms (per image: a batch's time / its images).
    """

    index: int
    top5: list[int]
    scores: list[float]
    error: str | None
    latency_ms: float
    inference_ms: float


class Record(NamedTuple):
    """One line of ``results.jsonl``: an :class:`Answer` plus what the parent knows.

    Attributes:
      image: the file name, relative to the holdout folder.
      index, top5, scores, error, latency_ms, inference_ms: as in :class:`Answer`.
      t_s: seconds since the run started when the parent received the answer.
      worker: the id of the worker process that answered.
      late: logged after the run's deadline (does not count).
    """

    image: str
    index: int
    top5: list[int]
    scores: list[float]
    error: str | None
    t_s: float
    latency_ms: float
    inference_ms: float
    worker: int
    late: bool

    @classmethod
    def of(cls, image: str, a: Answer, t_s: float, worker: int, late: bool) -> Record:
        return cls(image, a.index, a.top5, a.scores, a.error, t_s, a.latency_ms, a.inference_ms,
                   worker, late)

    def to_json(self) -> dict:
        """The ``results.jsonl`` object, keys in :data:`RECORD_KEYS` order."""
        return dict(zip(RECORD_KEYS, self))


#: The keys of one ``results.jsonl`` line, in the order lpirc writes them.
RECORD_KEYS: tuple[str, ...] = Record._fields

# --- manifest.json keys shared by lpirc (writer) and the scorer / tools (readers) -------------
M_STATUS = "status"
M_MODEL = "model"
M_HOLDOUT = "holdout"
M_SETTINGS = "settings"
M_BUDGET = "budget"
M_ENERGY = "energy"
M_WALL_TIME_S = "wall_time_s"
M_INFERENCE_TIME_S = "inference_time_s"
M_FIRST_ANSWER_S = "first_answer_s"
M_IMAGES_LOGGED = "images_logged"
M_IMAGES_ANSWERED = "images_answered"
M_IMAGES_FAILED = "images_failed"
M_IMAGES_LATE = "images_late"
M_PREPROCESS = "preprocess"
M_NOTES = "notes"

__all__ = ["Answer", "Record", "RECORD_KEYS"] + [k for k in dir() if k.startswith("M_")]
