"""decode -> preprocess -> inference in worker processes, under a time budget.

Worker side: :func:`_worker_main` / :func:`_serve` load the model (:class:`WorkerJob` says
how), report :class:`WorkerReady`, then answer each :class:`Work` chunk with a :class:`Done`
of :class:`~scoring.records.Answer` tuples until :class:`Stop`; a failure is one :class:`Fatal`.

Parent side: :class:`Dispatcher` takes names from an :class:`~lpirc.sources.ImageSource`,
hands them out in chunks over one pipe per worker, and is the only writer of results. A pipe
per worker (not one shared queue) means a worker killed mid-write breaks only its own pipe, so
the parent can tell exactly which images it held and retry them elsewhere.
:func:`run_pipeline` is the same over a list of names (what ``lpirc tune`` runs per trial).

Workers never see the ground truth: they get file names and send back answers.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from lpirc import runtime
from lpirc.clock import Budget, Stopwatch
from lpirc.decoding import take_decoder_counts
from lpirc.errors import DelegateError, LpircError, ModelError
from lpirc.preprocess import (ImageError, InputShapeError, PreprocessOptions,
                              float_feed_problem, load_image, preprocess_json, raw_codes_problem)
from lpirc.settings import RunSettings
from lpirc.sources import FolderSource, ImageSource
from scoring.records import Answer, Record

#: Images per chunk handed to a worker at batch 1 when the run starts and near its end: large
#: enough that pipe overhead is noise, small enough that the first answer comes soon and the
#: last chunks of a run spread over all workers.
MIN_CHUNK = 4
#: Images per chunk in between. A worker decodes a chunk, then invokes its images in a row:
#: 16 in a row keep the model's weights in cache better than 4 (the worker's path cost 0.3-3.6 %
#: less CPU per image in 8 of 9 alternated measurements, mobilenet_v2 on ImageNet-sized JPEGs;
#: about 5 MB more memory per worker; see bench/README.md).
MAX_CHUNK = 16
#: Chunks a worker holds at once, so it never waits for the parent between chunks.
IN_FLIGHT = 2


# --- worker side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs; picklable, so the pipeline also works with the spawn start method."""

    worker_id: int
    model: str
    holdout: str
    threads: int
    batch: int
    delegate: str
    decode_threads: int
    preprocess: PreprocessOptions  # checked once, in RunSettings
    gated: bool = False  # wait for Go (or Stop) before loading the model


# --- messages over a worker's pipe (picklable; the parent and the worker share these types) ---


@dataclass(frozen=True)
class WorkerReady:
    """worker -> parent, once: the model is loaded and this is how it will be run.

    Attributes:
      model: the model's ModelInfo as JSON (``input``/``output`` shapes, dtypes and
        quantization, ``num_classes``, ``ops``).
      runtime: ``{"name", "version"}`` of the runtime loaded.
      delegate_ran: the delegate that actually runs (``xnnpack``, ``edgetpu``, ...).
      batch: images per invoke (1 when the model's batch could not be resized).
      note: a fallback worth reporting (batch, delegate), or None.
      pid: the worker's process id.
      preprocess: the preprocessing as the manifest records it (``resize_backend`` included).
      answer_notes: what bears on the answers whatever the settings (the output chosen among
        several; raw pixel codes that do not fit the input's quantization), also in ``note``.
    """

    model: dict
    runtime: dict
    delegate_ran: str
    batch: int
    note: str | None
    pid: int
    preprocess: dict
    answer_notes: tuple[str, ...] = ()

    @property
    def input_hw(self) -> tuple[int, int] | None:
        """(H, W) of the model's input, or None when its shape has no such dimensions."""
        shape = (self.model.get("input") or {}).get("shape") or []
        return (int(shape[1]), int(shape[2])) if len(shape) >= 3 else None


class Work(NamedTuple):
    """parent -> worker: answer these ``(index, name)`` images as chunk ``chunk_id``."""

    chunk_id: int
    items: list[tuple[int, str]]


class Go(NamedTuple):
    """parent -> a gated worker: load the model now (the run's clock has started)."""


class Stop(NamedTuple):
    """parent -> worker: finish the chunk in hand (if any time is left) and exit."""


class Done(NamedTuple):
    """worker -> parent: the answers of chunk ``chunk_id``, in the chunk's order, and how many
    images each decoder read since the worker's last Done (``(("pillow", 1), ...)``)."""

    chunk_id: int
    answers: list[Answer]
    decoded_by: tuple = ()


class Fatal(NamedTuple):
    """worker -> parent: the worker cannot go on; ``kind`` is ``model``, ``delegate`` or
    ``other`` (see :func:`lpirc.preflight.failure_error`)."""

    kind: str
    message: str


def die_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGKILL when the run that started it dies, even by SIGKILL (an
    out-of-memory kill, a fleet's device lost). A forked worker holds both ends of every pipe
    the run made before it, so it would never see end-of-file and would wait forever. (Linux
    signals the death of the parent *thread* that started the worker: a pool must not outlive
    the thread that started it, and none does: start, respawns and stop run in the run's.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the run died before the prctl: no signal will come
        os._exit(0)


def _worker_main(job: WorkerJob, conn: Connection, parent_pid: int | None = None) -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        die_with_parent(parent_pid)
    try:
        _serve(job, conn)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as e:  # a bug must still end as one line in the parent, not a traceback here
        try:
            conn.send(Fatal("model", f"{Path(job.model).name}: worker {job.worker_id} failed "
                                     f"({type(e).__name__}: {' '.join(str(e).split())})"))
        except (OSError, ValueError):
            pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def _serve(job: WorkerJob, conn: Connection) -> None:
    if job.gated and isinstance(conn.recv(), Stop):  # the run never started
        return
    try:
        rt = runtime.load_runtime()
        model = runtime.open_model(job.model, threads=job.threads, delegate=job.delegate,
                                   batch=job.batch, runtime=rt, output=job.preprocess.output,
                                   input_size=job.preprocess.input_size)
    except DelegateError as e:
        conn.send(Fatal("delegate", str(e)))
        return
    except ModelError as e:
        conn.send(Fatal("model", str(e)))
        return
    except LpircError as e:
        conn.send(Fatal("other", str(e)))
        return
    except Exception as e:  # an unexpected runtime failure is still the model's problem
        conn.send(Fatal("model", f"{job.model}: {type(e).__name__}: {e}"))
        return

    info = model.info
    try:
        spec = job.preprocess.spec_for_model(info)
    except InputShapeError as e:  # an input lpirc cannot feed, or not 1000 classes
        conn.send(Fatal("model", f"{Path(job.model).name}: {e}"))
        return
    given = job.preprocess.mean is not None or job.preprocess.std is not None
    answer_notes = tuple(n for n in (info.output_note, _feed_note(info, spec, given)) if n)
    conn.send(WorkerReady(
        model=info.to_json(), runtime=rt.to_json(),
        delegate_ran=getattr(model, "delegate_ran", job.delegate),
        batch=getattr(model, "batch", 1),
        note=_join_notes(getattr(model, "note", None), *answer_notes), pid=os.getpid(),
        answer_notes=answer_notes,
        preprocess=preprocess_json(spec),
    ))

    root = Path(job.holdout)
    pool = None
    if job.decode_threads > 1:
        pool = ThreadPoolExecutor(job.decode_threads)
    pending: deque = deque()  # (chunk_id, items, decoded-or-futures)
    while True:
        # Take every chunk already waiting so their decoding can start in the pool while
        # the oldest one is inferred.
        while not pending or conn.poll():
            msg = conn.recv()
            if isinstance(msg, Stop):
                return
            chunk_id, items = msg
            if pool is not None:
                futs = [pool.submit(_load, root / name, spec) for _, name in items]
                pending.append((chunk_id, items, futs))
            else:
                pending.append((chunk_id, items, None))
        chunk_id, items, futs = pending.popleft()
        loaded = [f.result() for f in futs] if futs is not None else [_load(root / n, spec) for _, n in items]
        try:
            answers = _infer(model, items, loaded, runtime)
        except ModelError as e:
            conn.send(Fatal("model", str(e)))
            return
        except Exception as e:
            conn.send(Fatal("model", f"{job.model}: fails on invoke ({type(e).__name__}: {e})"))
            return
        conn.send(Done(chunk_id, answers, take_decoder_counts()))


def _feed_note(info, spec, given: bool = False) -> str | None:
    """The note for a quantized input fed raw pixel codes that do not fit its quantization
    (preprocess.raw_codes_problem), or for a float input fed the default (pixel - 127.5) / 127.5
    whose first op quantizes to a range that shows another normalisation
    (preprocess.float_feed_problem): the rules `submission check`'s normalise check applies.
    ``given``: mean/std were given (then the feed is what was asked for)."""
    t = info.input
    if t.dtype == "float32":
        q = getattr(info, "input_quantize", None)
        problem = None if given or q is None else float_feed_problem(q.dtype, q.scale,
                                                                      q.zero_point)
    elif spec.quantize is not None:
        return None
    else:
        problem = raw_codes_problem(t.dtype, t.scale, t.zero_point)
    return f"answers are likely wrong: {problem[0]}" if problem else None


def _join_notes(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _load(path: Path, spec) -> tuple[Any, str | None, float]:
    """Decode and preprocess one image: (array or None, error reason or None, ms taken)."""
    t = time.perf_counter()
    try:
        arr, err = load_image(path, spec), None
    except ImageError as e:
        arr, err = None, str(e)
    except MemoryError:
        arr, err = None, "decode: out of memory"
    except Exception as e:  # a broken file must cost one answer, never the run
        arr, err = None, f"decode: {type(e).__name__}: {e}"
    return arr, err, (time.perf_counter() - t) * 1000.0


def _infer(model, items, loaded, runtime) -> list[Answer]:
    answers: list[Answer] = []
    good = [i for i, (arr, _, _) in enumerate(loaded) if arr is not None]
    per_image_ms = {}
    top = {}
    b = max(1, getattr(model, "batch", 1))
    for start in range(0, len(good), b):
        group = good[start:start + b]
        x = np.stack([loaded[i][0] for i in group])  # predict pads a short last batch
        t = time.perf_counter()
        out = runtime.predict(model, x)
        ms = (time.perf_counter() - t) * 1000.0 / len(group)
        for j, i in enumerate(group):
            per_image_ms[i] = ms
            top[i] = runtime.top_k(out[j], 5, model.info.num_classes)
    for i, (idx, _name) in enumerate(items):
        arr, err, load_ms = loaded[i]
        if err is not None:
            answers.append(Answer(idx, [], [], err, round(load_ms, 3), 0.0))
        else:
            ids, vals = top[i]
            answers.append(Answer(idx, [int(k) for k in ids], [round(float(v), 6) for v in vals],
                                  None, round(load_ms + per_image_ms[i], 3),
                                  round(per_image_ms[i], 3)))
    return answers


# --- parent side -----------------------------------------------------------------------------


@dataclass
class _Worker:
    wid: int
    proc: Any
    conn: Connection
    ready: bool = False
    chunks: dict[int, list] = field(default_factory=dict)  # in flight: chunk id -> items
    sent: int = 0  # chunks handed to it so far


@dataclass
class PipelineOutcome:
    """What happened: the answers themselves are already in the result log."""

    status: str  # complete | budget_exhausted | interrupted | failed
    wall_time_s: float
    inference_time_s: float
    answered: int
    failed: int
    late: int
    ready: WorkerReady | None  # the first worker's: model, runtime, delegate, batch
    error: Fatal | None = None  # (kind, message) of a fatal failure
    notes: list[str] = field(default_factory=list)
    first_answer_s: float | None = None
    images_taken: int = 0  # images taken from the source (the count a growing feed reached)
    decoded_by: dict = field(default_factory=dict)  # decoder -> images it read
    budget: Budget | None = None  # the budget at the end (a growing feed's counts its images)


ProgressFn = Callable[[int, float, float], None]  # (answers so far, wall s, inference s)


def process_context() -> mp.context.BaseContext:
    """How lpirc starts its processes (workers, the ground-truth check)."""
    # fork starts a worker in milliseconds (first answer sooner); the parent never loads the
    # runtime, so there are no runtime threads to inherit.
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def plan_workers(settings: RunSettings, exclusive: bool) -> tuple[int, int]:
    """(inference processes, decode threads per process). A device only one process may own
    (the Edge TPU) gets one inference process, fed by decode threads (Pillow drops the GIL
    while decoding and resizing)."""
    if exclusive:
        return 1, max(2, settings.workers)
    return max(1, settings.workers), max(0, settings.decode_threads)


@dataclass
class WorkerPool:
    """Worker processes, started before the holdout is listed so that the workers do not
    inherit (by fork) the parent's list of file names (nor the ground truth it checks)."""

    ctx: Any
    settings: RunSettings
    root: Path
    decode_threads: int
    workers: dict[int, _Worker] = field(default_factory=dict)
    next_wid: int = 0


def start_workers(settings: RunSettings, root: Path, exclusive: bool = False,
                  max_workers: int | None = None, gated: bool = False) -> WorkerPool:
    """Start the inference processes; each loads the model and reports "ready" (``gated``:
    once :func:`release_workers` says so; the run's clock starts then)."""
    nproc, decode_threads = plan_workers(settings, exclusive)
    if max_workers is not None:
        nproc = max(1, min(nproc, max_workers))
    pool = WorkerPool(process_context(), settings, Path(root), decode_threads)
    for _ in range(nproc):
        _spawn(pool, gated)
    return pool


def release_workers(pool: WorkerPool) -> None:
    """Let a gated pool's workers load the model (a worker already gone is left to the
    dispatcher, which sees it die)."""
    for w in pool.workers.values():
        try:
            w.conn.send(Go())
        except (BrokenPipeError, OSError):
            pass


def stop_workers(pool: WorkerPool) -> None:
    """Stop a pool that will not be used (the run could not start)."""
    _stop(pool.workers, pool.settings.grace_s, lambda w, items, msg: None, "failed")


def _spawn(pool: WorkerPool, gated: bool = False) -> None:
    st = pool.settings
    job = WorkerJob(
        worker_id=pool.next_wid, model=str(st.model), holdout=str(pool.root),
        threads=st.threads, batch=st.batch, delegate=st.delegate,
        decode_threads=pool.decode_threads, preprocess=st.preprocess, gated=gated,
    )
    parent_end, child_end = pool.ctx.Pipe(duplex=True)
    proc = pool.ctx.Process(target=_worker_main, args=(job, child_end, os.getpid()),
                            daemon=True, name=f"lpirc-worker-{pool.next_wid}")
    proc.start()
    child_end.close()
    pool.workers[pool.next_wid] = _Worker(pool.next_wid, proc, parent_end)
    pool.next_wid += 1


RecordsFn = Callable[[list[Record]], None]


def chunk_size(batch: int, images: int = MIN_CHUNK) -> int:
    """Images per chunk handed to a worker: a whole number of batches, at least ``images``."""
    return max(1, batch) * max(1, math.ceil(images / max(1, batch)))


class Dispatcher:
    """Hands a source's images to a pool's workers within a budget and collects their answers.

    The parent's side of a run, as an object: its state is the attributes below, one method
    per event (a worker's message, a worker's exit), and the respawn policy is
    :meth:`should_respawn`. Every answer becomes a :class:`~scoring.records.Record` passed to
    ``on_records`` (in arrival order, one call per chunk), so a caller can log it, post it, or
    both. Images are numbered (``Record.index``) in the order they are taken from the source.

    Args:
      settings: the run's settings (batch, grace_s, model for messages).
      source: an :class:`~lpirc.sources.ImageSource`; may grow while the run goes.
      budget: the time budget. With ``source.total`` None (a feed of unknown length) the
        inference-clock budget is ``ms_per_image`` x the images taken so far.
      clock: the run's stopwatch (``t_s`` of every record).
      pool: started workers (:func:`start_workers`).
      on_records: called with each chunk's records as they arrive.
      progress: called as ``progress(answers so far, wall s, inference s)`` every round.
    """

    #: seconds between looks at a growing source while a worker waits for images
    HUNGRY_POLL_S = 0.02

    def __init__(self, settings: RunSettings, source: ImageSource, budget: Budget,
                 clock: Stopwatch, pool: WorkerPool, on_records: RecordsFn,
                 progress: ProgressFn | None = None) -> None:
        self.settings, self.source, self.budget, self.clock = settings, source, budget, clock
        self.pool, self.workers = pool, pool.workers
        self.on_records, self.progress = on_records, progress
        self.small_chunk = chunk_size(settings.batch, MIN_CHUNK)
        self.big_chunk = chunk_size(settings.batch, MAX_CHUNK)
        self.retry: deque[tuple[int, str]] = deque()  # images of a dead worker, to retry once
        self.retried: set[int] = set()
        self.taken = 0  # images taken from the source: the next image's index
        self.next_chunk = 0
        # Replacements for dead workers: a few in a row, and the count starts again whenever
        # an image was answered since the last death (see should_respawn).
        self.max_respawns = max(2, len(self.workers))
        self.respawns_left = self.max_respawns
        self.deaths = 0
        self.answered_at_last_death = 0
        self.answered = self.failed = self.late = 0
        self.inference_ms = 0.0  # summed in answer order, as the scorer sums them
        self.ready_info: WorkerReady | None = None
        self.fatal: Fatal | None = None  # the first fatal failure: every worker runs the model
        self.notes: list[str] = []
        self.first_answer_s: float | None = None
        self.decoded_by: dict[str, int] = {}
        self.status = "complete"

    # --- images ------------------------------------------------------------------------------

    def images_remain(self) -> bool:
        """Images still to hand out: retries, or a source not yet exhausted."""
        return bool(self.retry) or not self.source.exhausted()

    def _take(self, n: int) -> list[tuple[int, str]]:
        items = [self.retry.popleft() for _ in range(min(n, len(self.retry)))]
        if len(items) < n:
            names = self.source.take(n - len(items), 0.0)
            items += [(self.taken + i, name) for i, name in enumerate(names)]
            self.taken += len(names)
            if names and self.source.total is None:
                self.budget = dataclasses.replace(self.budget, images=self.taken)
        return items

    @property
    def inference_s(self) -> float:
        """Summed invoke time so far, s (for progress and the outcome)."""
        return self.inference_ms / 1000.0

    def over_budget(self) -> bool:
        return self.budget.exhausted(self.clock(), self.inference_ms)

    def chunk_for(self, w: _Worker) -> int:
        """Images for ``w``'s next chunk: small for a worker's first chunks (the first answer
        comes soon), when the images left would not keep every worker busy at the large size
        (the last chunks spread over all workers), and when what is left of an inference-clock
        budget would not cover them (so little work is done past it); else large."""
        if w.sent < IN_FLIGHT:
            return self.small_chunk
        ahead = self.big_chunk * IN_FLIGHT * 2 * max(1, len(self.workers))  # images
        if self.source.total is not None:
            if self.source.total - self.taken + len(self.retry) < ahead:
                return self.small_chunk
        limit, done = self.budget.inference_budget_ms, self.answered + self.failed
        if limit is not None and (not done or limit - self.inference_ms
                                  < self.inference_ms / done * ahead):
            return self.small_chunk
        return self.big_chunk

    def feed(self, w: _Worker) -> None:
        """Top ``w`` up to IN_FLIGHT chunks, if the budget allows and images are ready."""
        if not w.ready or self.over_budget():
            return  # at the deadline no new work starts, not even to a worker just freed
        while len(w.chunks) < IN_FLIGHT and self.images_remain():
            items = self._take(self.chunk_for(w))
            if not items:
                return  # a growing source with nothing ready yet
            w.chunks[self.next_chunk] = items
            w.sent += 1
            try:
                w.conn.send(Work(self.next_chunk, items))
            except (BrokenPipeError, OSError):
                return  # its death is handled when its sentinel fires
            self.next_chunk += 1

    # --- answers -----------------------------------------------------------------------------

    def record(self, w: _Worker, items: list[tuple[int, str]], answers: list,
               decoded_by: tuple = ()) -> None:
        """Turn a chunk's answers into records (late past the budget) and pass them on."""
        for name, n in decoded_by:
            self.decoded_by[name] = self.decoded_by.get(name, 0) + n
        t = round(self.clock(), 4)
        if self.first_answer_s is None and answers:
            self.first_answer_s = t
        names = dict(items)
        recs = []
        for a in answers:
            self.inference_ms += a.inference_ms
            # per image, by the scorer's own rules on the t_s logged and the inference summed in
            # ms in answer order: the answer that takes the summed invoke time past the budget
            # is late, not the whole chunk after it
            is_late = self.budget.late(t, self.inference_ms)
            recs.append(Record.of(names[a.index], a, t, w.wid, is_late))
            if a.error is None:
                self.answered += 1
            else:
                self.failed += 1
            self.late += is_late
        self.on_records(recs)

    def bury(self, w: _Worker, reason: str) -> None:
        """A worker died: retry its images once, elsewhere; a second death answers them wrong."""
        lost = [it for items in w.chunks.values() for it in items]
        w.chunks.clear()
        again = [it for it in lost if it[0] not in self.retried]
        given_up = [it for it in lost if it[0] in self.retried]
        self.retried.update(idx for idx, _ in again)
        self.retry.extendleft(reversed(again))
        if given_up:
            self.record(w, given_up, [Answer(idx, [], [], f"{reason}; also on retry", 0.0, 0.0)
                                      for idx, _ in given_up])
        if lost:
            self.notes.append(f"worker {w.wid} {reason} holding {len(lost)} images: "
                              f"{len(again)} retried, {len(given_up)} answered wrong")
        else:
            self.notes.append(f"worker {w.wid} {reason}")
        try:
            w.conn.close()
        except OSError:
            pass
        w.proc.join(timeout=0.1)
        del self.workers[w.wid]

    def should_respawn(self) -> bool:
        """The respawn policy, asked after each death of a worker that had started.

        Replace it while images remain and fewer than ``max_respawns`` (at least 2, else one
        per worker) deaths came in a row with no image answered in between: an OOM kill now
        and then, or a few images that crash the runtime, do not end a 10-minute run, but a
        model that crashes on every image does."""
        self.deaths += 1
        if self.answered > self.answered_at_last_death:
            self.respawns_left = self.max_respawns
        self.answered_at_last_death = self.answered
        if self.respawns_left > 0 and self.images_remain():
            self.respawns_left -= 1
            return True
        return False

    # --- events ------------------------------------------------------------------------------

    def on_message(self, w: _Worker, msg: WorkerReady | Done | Fatal) -> None:
        if isinstance(msg, Done):
            items = w.chunks.pop(msg.chunk_id, None)
            if items is not None:
                self.record(w, items, msg.answers, msg.decoded_by)
            self.feed(w)
        elif isinstance(msg, WorkerReady):
            w.ready = True
            if self.ready_info is None:
                self.ready_info = msg
                if msg.note:
                    self.notes.append(msg.note)
            self.feed(w)
        elif isinstance(msg, Fatal):
            self.fatal = self.fatal or msg
            # the worker returns after a fatal message; its sentinel fires next

    def on_exit(self, w: _Worker) -> None:
        w.proc.join(timeout=0.5)
        code = w.proc.exitcode
        if self.fatal is not None:
            self.bury(w, "stopped on a model error" if w.ready else "could not start")
            return
        reason = (f"died (signal {-code})" if code is not None and code < 0
                  else f"exited with code {code}")
        was_ready = w.ready
        self.bury(w, reason)
        if not was_ready and self.ready_info is None:
            how = f"signal {-code}" if code and code < 0 else f"exit code {code}"
            self.fatal = Fatal("model", f"{self.settings.model}: the runtime crashed loading it "
                                        f"({how})")
            return
        if self.should_respawn():
            _spawn(self.pool)

    # --- the loop ----------------------------------------------------------------------------

    def _hungry(self) -> bool:
        """A started worker waits for images a growing source has not given yet."""
        return (not self.retry and not self.source.exhausted()
                and any(w.ready and len(w.chunks) < IN_FLIGHT for w in self.workers.values()))

    def _end_reason(self) -> str | None:
        if not self.images_remain() and not any(w.chunks for w in self.workers.values()):
            return "complete"
        if self.over_budget():
            return "budget_exhausted"
        if not self.workers:
            if self.fatal is None:
                done = self.answered + self.failed
                self.fatal = Fatal("model", f"{self.settings.model}: every worker died "
                                   "before answering" if self.answered == 0 else
                                   f"{self.settings.model}: workers kept dying ({self.deaths} "
                                   "deaths, the last ones with no answer in between); stopped "
                                   f"with {done} of {self.taken} images logged")
            return "failed"
        return None

    def step(self) -> str | None:
        """Wait for one round of events and handle them; the end status when the run ends."""
        end = self._end_reason()
        if end is not None:
            return end
        for w in list(self.workers.values()):
            if w.ready and len(w.chunks) < IN_FLIGHT:
                self.feed(w)  # a growing source may have images for a waiting worker now
        by_obj: dict[Any, _Worker] = {}
        for w in self.workers.values():
            by_obj[w.conn] = by_obj[w.proc.sentinel] = w
        timeout = min(self.HUNGRY_POLL_S if self._hungry() else 0.2,
                      self.budget.wall_left_s(self.clock()))
        for obj in wait(list(by_obj), timeout=timeout):
            w = by_obj[obj]
            if w.wid not in self.workers:
                continue  # already buried this round
            if obj is w.conn:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    continue  # the sentinel reports the death
                self.on_message(w, msg)
            else:
                self.on_exit(w)
        if self.fatal is not None:  # every worker runs the same model: one failure is all
            return "failed"
        if self.progress is not None:
            self.progress(self.answered + self.failed, self.clock(), self.inference_s)
        return None

    def run(self) -> PipelineOutcome:
        """Dispatch until every image is answered, the budget runs out, the workers fail, or
        KeyboardInterrupt (status ``interrupted``); the workers are always stopped (killed
        after ``settings.grace_s``) before it returns."""
        try:
            status = None
            while status is None:
                status = self.step()
            self.status = status
        except KeyboardInterrupt:
            self.status = "interrupted"
        finally:
            _stop(self.workers, self.settings.grace_s,
                  lambda w, items, msg: self.record(w, items, msg.answers, msg.decoded_by),
                  self.status)
        if self.progress is not None:
            self.progress(self.answered + self.failed, self.clock(), self.inference_s)
        return PipelineOutcome(
            status=self.status, wall_time_s=self.clock(), inference_time_s=self.inference_s,
            answered=self.answered, failed=self.failed, late=self.late, ready=self.ready_info,
            error=self.fatal, notes=self.notes, first_answer_s=self.first_answer_s,
            images_taken=self.taken, budget=self.budget, decoded_by=dict(self.decoded_by))


def run_pipeline(settings: RunSettings, root: Path, files: tuple[str, ...], budget: Budget,
                 write: Callable[[list[dict]], None], clock: Stopwatch,
                 exclusive: bool = False, progress: ProgressFn | None = None,
                 pool: WorkerPool | None = None) -> PipelineOutcome:
    """Answer ``files`` of ``root`` (in order) within ``budget``; each answer's results.jsonl
    object goes through ``write`` (a list per chunk).

    A convenience over :class:`Dispatcher` with a :class:`~lpirc.sources.FolderSource` of the
    given names (``lpirc tune`` runs its trials through it). Uses ``pool`` when given (see
    :func:`start_workers`), else starts one. Returns as :meth:`Dispatcher.run` does.
    """
    if pool is None:
        pool = start_workers(settings, root, exclusive, max_workers=len(files))
    source = FolderSource.of_names(root, files)
    return Dispatcher(settings, source, budget, clock, pool,
                      lambda recs: write([r.to_json() for r in recs]), progress).run()


def _stop(workers: dict[int, _Worker], grace_s: float, on_answers, status: str) -> None:
    """Ask every worker to stop, keep what arrives within the grace period, then kill.

    The workers are killed and joined whatever happens meanwhile (Ctrl-C, or ``on_answers``
    raising); an error ``on_answers`` raised is raised again once they are gone."""
    for w in workers.values():
        try:
            w.conn.send(Stop())
        except (BrokenPipeError, OSError):
            pass
    error: BaseException | None = None
    try:
        deadline = time.monotonic() + grace_s
        live = dict(workers)
        while live and time.monotonic() < deadline:
            by_obj: dict[Any, _Worker] = {w.proc.sentinel: w for w in live.values()}
            by_obj.update({w.conn: w for w in live.values() if not w.conn.closed})
            for obj in wait(list(by_obj), timeout=max(0.0, deadline - time.monotonic())):
                w = by_obj[obj]
                if obj is not w.conn:
                    live.pop(w.wid, None)
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    w.conn.close()
                    continue
                items = w.chunks.pop(msg.chunk_id, None) if isinstance(msg, Done) else None
                if items is not None and status != "failed":
                    try:
                        on_answers(w, items, msg)
                    except Exception as e:  # the workers are stopped first
                        error = error or e
    finally:
        for w in workers.values():
            if w.proc.is_alive():
                w.proc.kill()
        for w in workers.values():
            w.proc.join(timeout=1.0)
            try:
                w.conn.close()
            except OSError:
                pass
    if error is not None:
        raise error
