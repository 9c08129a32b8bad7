"""The shapes of what a run logs, defined once: lpirc writes them, the scorer reads them.

- :class:`Answer`: one image's answer, as a worker sends it to the parent (no name: the
  parent knows which image each index is).
- :class:`Record`: one line of ``results.jsonl``; its field names, in file order, are
  :data:`RECORD_KEYS`.
- :class:`Manifest`: ``manifest.json``; its keys are :data:`MANIFEST_KEYS`.

Standard library only (the scorer stays numpy + stdlib).
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict


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

# --- manifest.json ------------------------------------------------------------------------------


class Manifest(TypedDict, total=False):
    """``manifest.json`` of a run folder: written by ``lpirc run`` when the run starts (status
    ``running``) and rewritten at its end; read by the scorer, ``lpirc score``, the CLI summary
    and the benchmark. The keys are defined here once (:data:`MANIFEST_KEYS`)."""

    lpirc_version: str
    status: str  # running | complete | budget_exhausted | interrupted | failed
    runtime: dict | None  # {"name", "version"} of the runtime the workers loaded
    delegate: dict  # {"requested", "ran", "note", "exclusive"}
    model: dict  # {"path", "size_bytes", "sha256"} + the model's "input", "output", "num_classes", "ops"
    holdout: dict  # {"path", "source", "image_count", "order_seed", "files_sha256", "names_sha256", "ground_truth"}
    settings: dict  # every RunSettings field
    budget: dict  # {"clock", "time_limit_s", "ms_per_image", "inference_budget_s"}
    start_utc: str
    end_utc: str | None
    wall_time_s: float | None  # measured: start of the run to the last answer
    inference_time_s: float | None  # measured: summed model invoke time
    first_answer_s: float | None
    energy: dict  # {"wh", "source", "method", ...}
    machine: dict  # CPU, cores, memory, OS
    images_logged: int  # lines in results.jsonl
    images_answered: int  # with a top-5 (late ones included)
    images_failed: int  # logged with an error: count as wrong
    images_late: int
    batch_used: int | None
    preprocess: dict | None  # the worker's preprocessing, resize_backend included
    notes: list  # worker deaths, batch fallback, ground-truth coverage, why a run stopped
    error: dict  # {"kind", "message"} of a fatal failure, when there was one


#: The keys ``manifest.json`` may have, in the order ``lpirc run`` writes them.
MANIFEST_KEYS: tuple[str, ...] = tuple(Manifest.__annotations__)

__all__ = ["Answer", "MANIFEST_KEYS", "Manifest", "RECORD_KEYS", "Record"]
