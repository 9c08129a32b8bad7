"""decode -> preprocess -> inference in worker processes, under a time budget.

The parent hands out work in small chunks over one pipe per worker and is the only writer of
results. A pipe per worker (not one shared queue) means a worker killed mid-write breaks only its
own pipe, so the parent can tell exactly which images it held and retry them elsewhere.

Workers never see the ground truth: they get file names and send back answers.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

from lpirc.clock import Budget, Stopwatch
from lpirc.preprocess import PreprocessOptions
from lpirc.settings import RunSettings

#: Images per chunk handed to a worker at batch 1: large enough that pipe overhead is noise,
#: small enough that the last chunks of a run spread over all workers.
MIN_CHUNK = 4
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


def _worker_main(job: WorkerJob, conn: Connection) -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(job, conn)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as e:  # a bug must still end as one line in the parent, not a traceback here
        try:
            conn.send(("fatal", "model", f"{Path(job.model).name}: worker {job.worker_id} failed "
                                         f"({type(e).__name__}: {' '.join(str(e).split())})"))
        except (OSError, ValueError):
            pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def _serve(job: WorkerJob, conn: Connection) -> None:
    import PIL

    from lpirc.errors import DelegateError, LpircError, ModelError
    from lpirc.preprocess import InputShapeError, resize_backend

    try:
        from lpirc import runtime

        rt = runtime.load_runtime()
        model = runtime.open_model(job.model, threads=job.threads, delegate=job.delegate,
                                   batch=job.batch, runtime=rt, output=job.preprocess.output,
                                   input_size=job.preprocess.input_size)
    except DelegateError as e:
        conn.send(("fatal", "delegate", str(e)))
        return
    except ModelError as e:
        conn.send(("fatal", "model", str(e)))
        return
    except LpircError as e:
        conn.send(("fatal", "other", str(e)))
        return
    except Exception as e:  # an unexpected runtime failure is still the model's problem
        conn.send(("fatal", "model", f"{job.model}: {type(e).__name__}: {e}"))
        return

    info = model.info
    try:
        spec = job.preprocess.spec_for_model(info)
    except InputShapeError as e:  # an input lpirc cannot feed, or not 1000 classes
        conn.send(("fatal", "model", f"{Path(job.model).name}: {e}"))
        return
    import dataclasses

    conn.send(("ready", {
        "model": _jsonable(dataclasses.asdict(info)),
        "runtime": {"name": rt.name, "version": rt.version},
        "delegate_ran": getattr(model, "delegate_ran", job.delegate),
        "batch": getattr(model, "batch", 1),
        "note": _join_notes(getattr(model, "note", None), info.output_note),
        "pid": os.getpid(),
        "preprocess": dict(spec.to_json(),
                           resize_backend=resize_backend() if spec.resize == "bilinear"
                           else f"pillow {PIL.__version__} resize(BILINEAR)",
                           decode=f"pillow {PIL.__version__} ({spec.decode})"),
    }))

    root = Path(job.holdout)
    pool = None
    if job.decode_threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(job.decode_threads)
    pending: deque = deque()  # (chunk_id, items, decoded-or-futures)
    while True:
        # Take every chunk already waiting so their decoding can start in the pool while
        # the oldest one is inferred.
        while not pending or conn.poll():
            msg = conn.recv()
            if msg[0] == "stop":
                return
            _, chunk_id, items = msg
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
            conn.send(("fatal", "model", str(e)))
            return
        except Exception as e:
            conn.send(("fatal", "model", f"{job.model}: fails on invoke ({type(e).__name__}: {e})"))
            return
        conn.send(("done", chunk_id, answers))


def _join_notes(*notes: str | None) -> str | None:
    return "; ".join(n for n in notes if n) or None


def _load(path: Path, spec) -> tuple[Any, str | None, float]:
    """Decode and preprocess one image: (array or None, error reason or None, ms taken)."""
    from lpirc.preprocess import ImageError, load_image

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


def _infer(model, items, loaded, runtime) -> list[tuple]:
    import numpy as np

    answers: list[tuple] = []
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
            answers.append((idx, [], [], err, round(load_ms, 3), 0.0))
        else:
            ids, vals = top[i]
            answers.append((idx, [int(k) for k in ids], [round(float(v), 6) for v in vals], None,
                            round(load_ms + per_image_ms[i], 3), round(per_image_ms[i], 3)))
    return answers


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    return obj


# --- parent side -----------------------------------------------------------------------------


@dataclass
class _Worker:
    wid: int
    proc: Any
    conn: Connection
    ready: bool = False
    chunks: dict[int, list] = field(default_factory=dict)


@dataclass
class PipelineOutcome:
    """What happened: the answers themselves are already in the result log."""

    status: str  # complete | budget_exhausted | interrupted | failed
    wall_time_s: float
    inference_time_s: float
    answered: int
    failed: int
    late: int
    ready: dict | None  # the first worker's "ready" info: model, runtime, delegate
    error: tuple[str, str] | None = None  # (kind, message) of a fatal failure
    notes: list[str] = field(default_factory=list)
    first_answer_s: float | None = None


ProgressFn = Callable[[int, float, float], None]  # (answers so far, wall s, inference s)


def _context() -> mp.context.BaseContext:
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
    """Worker processes, started before the holdout is listed so that model loading overlaps
    the listing and the workers do not inherit (by fork) the parent's list of file names."""

    ctx: Any
    settings: RunSettings
    root: Path
    decode_threads: int
    workers: dict[int, _Worker] = field(default_factory=dict)
    next_wid: int = 0


def start_workers(settings: RunSettings, root: Path, exclusive: bool = False,
                  max_workers: int | None = None) -> WorkerPool:
    """Start the inference processes; each loads the model and reports "ready"."""
    nproc, decode_threads = plan_workers(settings, exclusive)
    if max_workers is not None:
        nproc = max(1, min(nproc, max_workers))
    pool = WorkerPool(_context(), settings, Path(root), decode_threads)
    for _ in range(nproc):
        _spawn(pool)
    return pool


def stop_workers(pool: WorkerPool) -> None:
    """Stop a pool that will not be used (the run could not start)."""
    _stop(pool.workers, pool.settings.grace_s, lambda w, answers: None, "failed")


def _spawn(pool: WorkerPool) -> None:
    st = pool.settings
    job = WorkerJob(
        worker_id=pool.next_wid, model=str(st.model), holdout=str(pool.root),
        threads=st.threads, batch=st.batch, delegate=st.delegate,
        decode_threads=pool.decode_threads, preprocess=st.preprocess,
    )
    parent_end, child_end = pool.ctx.Pipe(duplex=True)
    proc = pool.ctx.Process(target=_worker_main, args=(job, child_end), daemon=True,
                            name=f"lpirc-worker-{pool.next_wid}")
    proc.start()
    child_end.close()
    pool.workers[pool.next_wid] = _Worker(pool.next_wid, proc, parent_end)
    pool.next_wid += 1


def run_pipeline(settings: RunSettings, root: Path, files: tuple[str, ...], budget: Budget,
                 write: Callable[[list[dict]], None], clock: Stopwatch,
                 exclusive: bool = False, progress: ProgressFn | None = None,
                 pool: WorkerPool | None = None) -> PipelineOutcome:
    """Answer ``files`` (in order) within ``budget``; every answer goes through ``write``.

    Uses ``pool`` when given (see :func:`start_workers`), else starts one. Returns when every
    image is answered, the budget runs out, all workers fail, or on KeyboardInterrupt (status
    ``interrupted``): in every case workers are stopped (killed after ``settings.grace_s``)
    before returning.
    """
    if pool is None:
        pool = start_workers(settings, root, exclusive, max_workers=len(files))
    workers = pool.workers
    chunk = max(settings.batch, MIN_CHUNK)
    if settings.batch > 1:
        chunk = settings.batch * max(1, math.ceil(MIN_CHUNK / settings.batch))
    # A cursor into ``files`` rather than a queue of every (index, name): the parent's memory
    # must not grow with the holdout. Images of a dead worker wait in ``retry``.
    cursor = 0
    retry: deque = deque()
    retried: set[int] = set()
    # Replacements for dead workers: a few in a row, and the count starts again whenever an
    # image was answered since the last death, so an OOM kill now and then or a few images that
    # crash the runtime do not end a 10-minute run, but a model that crashes on everything does.
    max_respawns = max(2, len(workers))
    respawns_left = max_respawns
    deaths = 0
    answered_at_last_death = 0
    next_chunk = 0
    answered = failed = late = 0
    inference_s = 0.0
    ready_info: dict | None = None
    fatal: tuple[str, str] | None = None
    notes: list[str] = []
    first_answer_s: float | None = None
    status = "complete"

    def left() -> bool:
        return bool(retry) or cursor < len(files)

    def take(n: int) -> list[tuple[int, str]]:
        nonlocal cursor
        items = [retry.popleft() for _ in range(min(n, len(retry)))]
        if len(items) < n and cursor < len(files):
            stop = min(len(files), cursor + n - len(items))
            items += [(i, files[i]) for i in range(cursor, stop)]
            cursor = stop
        return items

    def feed(w: _Worker) -> None:
        nonlocal next_chunk
        if budget.exhausted(clock(), inference_s):
            return  # at the deadline no new work starts, not even to a worker just freed
        while len(w.chunks) < IN_FLIGHT and left():
            items = take(chunk)
            w.chunks[next_chunk] = items
            try:
                w.conn.send(("work", next_chunk, items))
            except (BrokenPipeError, OSError):
                return  # its death is handled when its sentinel fires
            next_chunk += 1

    def record(w: _Worker, answers: list[tuple], over: bool) -> None:
        nonlocal answered, failed, late, inference_s, first_answer_s
        t = round(clock(), 4)
        if first_answer_s is None and answers:
            first_answer_s = t
        recs = []
        limit = budget.inference_budget_s
        for idx, top5, scores, err, lat_ms, inf_ms in answers:
            inference_s += inf_ms / 1000.0
            # per image, as the scorer judges it: the answer that takes the summed invoke time
            # past the inference budget is late, not the whole chunk after it
            is_late = over or (limit is not None and inference_s > limit)
            recs.append({"image": files[idx], "index": idx, "top5": top5, "scores": scores,
                         "error": err, "t_s": t, "latency_ms": lat_ms, "inference_ms": inf_ms,
                         "worker": w.wid, "late": is_late})
            if err is None:
                answered += 1
            else:
                failed += 1
            late += is_late
        write(recs)

    def bury(w: _Worker, reason: str) -> None:
        """A worker died: retry its images once, elsewhere; a second death answers them wrong."""
        lost = [it for items in w.chunks.values() for it in items]
        w.chunks.clear()
        again = [it for it in lost if it[0] not in retried]
        given_up = [it for it in lost if it[0] in retried]
        retried.update(idx for idx, _ in again)
        retry.extendleft(reversed(again))
        if given_up:
            record(w, [(idx, [], [], f"{reason}; also on retry", 0.0, 0.0) for idx, _ in given_up],
                   False)
        if lost:
            notes.append(f"worker {w.wid} {reason} holding {len(lost)} images: "
                         f"{len(again)} retried, {len(given_up)} answered wrong")
        else:
            notes.append(f"worker {w.wid} {reason}")
        try:
            w.conn.close()
        except OSError:
            pass
        w.proc.join(timeout=0.1)
        del workers[w.wid]

    try:
        while True:
            if not left() and not any(w.chunks for w in workers.values()):
                break
            if budget.exhausted(clock(), inference_s):
                status = "budget_exhausted"
                break
            if not workers:
                if fatal is None:
                    done = answered + failed
                    fatal = ("model", f"{settings.model}: every worker died before answering"
                             if answered == 0 else
                             f"{settings.model}: workers kept dying ({deaths} deaths, the last "
                             f"ones with no answer in between); stopped with {done} of "
                             f"{len(files)} images logged")
                status = "failed"
                break
            waitables: list[Any] = []
            for w in workers.values():
                waitables += [w.conn, w.proc.sentinel]
            timeout = min(0.2, budget.wall_left_s(clock()))
            for obj in wait(waitables, timeout=timeout):
                w = next((w for w in workers.values()
                          if obj is w.conn or obj == w.proc.sentinel), None)
                if w is None:
                    continue  # already buried this round
                if obj is w.conn:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        continue  # the sentinel reports the death
                    kind = msg[0]
                    if kind == "ready":
                        w.ready = True
                        if ready_info is None:
                            ready_info = msg[1]
                            if ready_info.get("note"):
                                notes.append(ready_info["note"])
                        feed(w)
                    elif kind == "done":
                        items = w.chunks.pop(msg[1], None)
                        if items is not None:
                            record(w, msg[2], budget.exhausted(clock(), inference_s))
                        feed(w)
                    elif kind == "fatal":
                        fatal = fatal or (msg[1], msg[2])
                        # the worker returns after a fatal message; its sentinel fires next
                else:
                    w.proc.join(timeout=0.5)
                    code = w.proc.exitcode
                    if fatal is not None and not w.ready:
                        bury(w, "could not start")
                        continue
                    if fatal is not None:
                        bury(w, "stopped on a model error")
                        continue
                    reason = (f"died (signal {-code})" if code is not None and code < 0
                              else f"exited with code {code}")
                    was_ready = w.ready
                    bury(w, reason)
                    if not was_ready and ready_info is None:
                        fatal = ("model", f"{settings.model}: the runtime crashed loading it "
                                 f"({'signal ' + str(-code) if code and code < 0 else 'exit code ' + str(code)})")
                        continue
                    deaths += 1
                    if answered > answered_at_last_death:
                        respawns_left = max_respawns
                    answered_at_last_death = answered
                    if respawns_left > 0 and left():
                        respawns_left -= 1
                        _spawn(pool)
            if fatal is not None:  # every worker runs the same model: one failure is all
                status = "failed"
                break
            if progress is not None:
                progress(answered + failed, clock(), inference_s)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        late_now = status == "budget_exhausted"
        _stop(workers, settings.grace_s, lambda w, answers: record(w, answers, late_now), status)
    if progress is not None:
        progress(answered + failed, clock(), inference_s)
    return PipelineOutcome(status=status, wall_time_s=clock(), inference_time_s=inference_s,
                           answered=answered, failed=failed, late=late, ready=ready_info,
                           error=fatal, notes=notes, first_answer_s=first_answer_s)


def _stop(workers: dict[int, _Worker], grace_s: float, on_answers, status: str) -> None:
    """Ask every worker to stop, keep what arrives within the grace period, then kill."""
    for w in workers.values():
        try:
            w.conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
    deadline = time.monotonic() + grace_s
    live = dict(workers)
    while live and time.monotonic() < deadline:
        conns = [w.conn for w in live.values() if not w.conn.closed]
        sentinels = [w.proc.sentinel for w in live.values()]
        for obj in wait(conns + sentinels, timeout=max(0.0, deadline - time.monotonic())):
            w = next((w for w in live.values() if obj is w.conn or obj == w.proc.sentinel), None)
            if w is None:
                continue
            if obj is w.conn:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    w.conn.close()
                    continue
                if msg[0] == "done" and status != "failed":
                    if w.chunks.pop(msg[1], None) is not None:
                        on_answers(w, msg[2])
            else:
                live.pop(w.wid, None)
    for w in workers.values():
        if w.proc.is_alive():
            w.proc.kill()
    for w in workers.values():
        w.proc.join(timeout=1.0)
        try:
            w.conn.close()
        except OSError:
            pass
