#!/usr/bin/env python3
"""Benchmark ``lpirc run`` against a hand-written loop and against the machine's limit.

One run of this script measures, on one holdout, interleaving the contenders round by round so
that machine drift (other jobs, thermal, page cache) hits them alike:

1. the hand-written single-process loop a user writes in ten minutes (Pillow decode, central
   crop, resize, one interpreter with 2 threads), in this file (``_hand_loop``);
2. ``lpirc run`` with default settings, and with ``lpirc tune``'s best settings (``--config``);
3. the limit: decode+preprocess cost per image alone (one process, one thread), inference cost
   per image alone (one interpreter, one thread, inputs in memory), the end-to-end limit they
   imply for the core count, and pure-inference throughput (one 1-thread process per core);
4. peak RSS of the whole ``lpirc run`` process tree (polled with psutil every 50 ms) for the
   holdout and for a 10x larger one made of hard links (default 20,000 and 200,000 images);
5. time from ``lpirc run`` process start to the first line of results.jsonl;
6. ``lpirc score`` time for a log of one answer per holdout image (CLI wall time and
   in-process ``scoring.score_path``).

It prints a table of figures and the ratios lpirc / hand-written loop, lpirc / end-to-end
limit, lpirc / pure inference, then the goals and whether each holds. ``--out FILE`` writes
every figure as JSON. Every contender runs in its own process; this process only launches,
polls and reads their output.

Usage (from the repository root)::

    python bench/run_bench.py                         # default: 20,000-image holdout, ~8 min
    python bench/run_bench.py --holdout DIR --time-limit-s 20 --repeats 3 --out bench.json
    python bench/run_bench.py --quick                 # tiny sizes, ~1 min (smoke test)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_SRC = SHARED / "imagenet-dev"
DEFAULT_MODEL = SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite"
DEFAULT_CACHE = REPO / "bench" / ".cache"

GOALS = {
    "tuned_vs_hand": 1.4,
    "tuned_vs_limit": 0.95,
    "cpu_vs_parts": 1.05,
    "peak_rss_mb": 400.0,
    "rss_growth": 0.10,
    "first_answer_s": 1.5,
    "score_s": 1.0,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =============================================================================================
# Contenders run in child processes: `run_bench.py --child KIND '{json args}'` prints one JSON
# line. Nothing below imports lpirc, Pillow or the runtime at module level.
# =============================================================================================


def _list_images(root: Path) -> list[str]:
    """The images below ``root`` by lpirc's one listing rule (lpirc.holdout.scan_images), so
    the contenders and lpirc run answer the same files."""
    try:  # imported here: the module level stays lpirc-free
        from lpirc.holdout import scan_images
    except ImportError:  # an lpirc from before scan_images, measured for a before/after
        from lpirc.holdout import list_images

        return list_images(root)
    return scan_images(root).files


def _interpreter(model: str, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - other runtimes
        from lpirc.runtime import load_runtime

        Interpreter = load_runtime().module.Interpreter
    it = Interpreter(model_path=model, num_threads=threads)
    it.allocate_tensors()
    return it


def _as_input(pixels, dtype):
    """uint8 pixels as the model's input type: int8 models take pixel - 128."""
    import numpy as np

    if dtype == np.int8:
        return (pixels.astype(np.int16) - 128).astype(np.int8)
    if dtype == np.float32:
        return (pixels.astype(np.float32) - 127.5) / 127.5
    return pixels


def _hand_loop(a: dict) -> dict:
    """The loop a user writes in ten minutes: one process, Pillow, one 2-thread interpreter."""
    t0 = time.perf_counter()
    import numpy as np
    from PIL import Image

    it = _interpreter(a["model"], a.get("threads", 2))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    _, h, w, _ = inp["shape"]
    background = 1 if out["shape"][-1] == 1001 else 0  # 1001 classes: index 0 is background
    root = Path(a["holdout"])
    files = _list_images(root)
    limit = a.get("images") or len(files)
    t_ready = time.perf_counter() - t0
    stamps = []
    deadline = t0 + a["time_limit_s"]
    with open(a["results"], "w") as f:
        for name in files[:limit]:
            img = Image.open(root / name).convert("RGB")
            W, H = img.size
            cw, ch = W * 0.875, H * 0.875
            box = ((W - cw) / 2, (H - ch) / 2, (W + cw) / 2, (H + ch) / 2)
            img = img.resize((w, h), Image.BILINEAR, box=box)
            it.set_tensor(inp["index"], _as_input(np.asarray(img, dtype=np.uint8), inp["dtype"])[None])
            it.invoke()
            scores = it.get_tensor(out["index"])[0]
            top5 = np.argsort(scores)[::-1][:5] - background
            f.write(json.dumps({"image": name, "top5": top5.tolist()}) + "\n")
            now = time.perf_counter()
            stamps.append(now - t0)
            if now >= deadline:
                break
    elapsed = time.perf_counter() - t0
    cpu = os.times()
    return {"images": len(stamps), "elapsed_s": elapsed, "ready_s": t_ready,
            "cpu_ms_per_image": (cpu.user + cpu.system) * 1000.0 / max(1, len(stamps)),
            "first_answer_s": stamps[0] if stamps else None, "steady_ips": _steady(stamps)}


def _steady(stamps: list[float]) -> float | None:
    """Images/s between the first and the last answer (start-up excluded)."""
    if len(stamps) < 3 or stamps[-1] <= stamps[0]:
        return None
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _preprocess_cost(a: dict) -> dict:
    """ms per image of decode + crop + resize alone, one process, one thread.

    mode "lpirc": lpirc.preprocess.load_image (what `lpirc run` does, TF-exact bilinear);
    mode "pillow": the hand-written loop's Image.open/convert/resize(BILINEAR, box).
    """
    import numpy as np
    from PIL import Image

    root = Path(a["holdout"])
    files = _list_images(root)[: a.get("distinct", 500)]
    mode = a["mode"]
    # the model's input size and type: a 224-pixel cost says nothing of a 64-pixel submission
    inp = _interpreter(a["model"], 1).get_input_details()[0]
    _, h, w, _ = (int(x) for x in inp["shape"])
    dtype = np.dtype(inp["dtype"])
    backend = "Pillow resize(BILINEAR)"
    if mode == "lpirc":
        from lpirc.preprocess import PreprocessSpec, load_image, resize_backend

        spec = PreprocessSpec(h, w, dtype.name, decode=a.get("decode", "exact"))
        backend = resize_backend()

        def one(p):
            return load_image(p, spec)
    else:
        def one(p):
            img = Image.open(p).convert("RGB")
            W, H = img.size
            cw, ch = W * 0.875, H * 0.875
            box = ((W - cw) / 2, (H - ch) / 2, (W + cw) / 2, (H + ch) / 2)
            return _as_input(np.asarray(img.resize((w, h), Image.BILINEAR, box=box)), dtype)
    one(root / files[0])  # warm imports
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    deadline = t0 + a["time_limit_s"]
    while True:
        one(root / files[n % len(files)])
        n += 1
        if time.perf_counter() >= deadline and n >= min(len(files), a.get("min_images", 1)):
            break
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images": n, "elapsed_s": el, "ms_per_image": el * 1000.0 / n,
            "cpu_ms_per_image": cpu * 1000.0 / n,
            "input": [h, w, dtype.name], "resize_backend": backend}


def _inference(a: dict) -> dict:
    """Invoke on inputs already in memory, one interpreter of ``threads`` threads, from
    ``start_at`` (time.time()) for ``time_limit_s``: images and ms per image."""
    import numpy as np

    it = _interpreter(a["model"], a.get("threads", 1))
    inp = it.get_input_details()[0]
    rng = np.random.default_rng(a.get("seed", 0))
    xs = [_as_input(rng.integers(0, 256, size=tuple(inp["shape"]), dtype=np.uint8), inp["dtype"])
          for _ in range(8)]
    it.set_tensor(inp["index"], xs[0])
    it.invoke()  # warm-up
    start_at = a.get("start_at")
    if start_at:
        time.sleep(max(0.0, start_at - time.time()))
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    deadline = t0 + a["time_limit_s"]
    while True:
        it.set_tensor(inp["index"], xs[n % len(xs)])
        it.invoke()
        n += 1
        if time.perf_counter() >= deadline:
            break
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images": n, "elapsed_s": el, "ms_per_image": el * 1000.0 / n,
            "cpu_ms_per_image": cpu * 1000.0 / n}


def _worker_path(a: dict) -> dict:
    """CPU ms per image, in one process, of three ways to do the same work on the same images,
    alternated ``rounds`` times so that other load hits them alike (medians):

    apart        decode + preprocess every image, then invoke them all (the "sum" the run is
                 compared with: each part alone, caches warm for it);
    interleaved  one image after the other: decode + preprocess, invoke (any pipeline that does
                 both on one core);
    worker       lpirc's own worker functions (``pipeline._load``, ``pipeline._infer``: top-5,
                 answer tuples) on chunks of the size the code hands out in steady state;
    worker_small the same on chunks of ``MIN_CHUNK`` (4).
    """
    import numpy as np

    from lpirc import pipeline, runtime
    from lpirc.preprocess import PreprocessSpec, load_image

    root = Path(a["holdout"])
    files = _list_images(root)[: a.get("distinct", 200)]
    rt = runtime.load_runtime()
    m = runtime.open_model(a["model"], threads=1, delegate="cpu", batch=1, runtime=rt)
    _, h, w, _ = (int(x) for x in m.info.input.shape)
    spec = PreprocessSpec(h, w, np.dtype(m.info.input.dtype).name)
    chunk = getattr(pipeline, "MAX_CHUNK", None) or pipeline.MIN_CHUNK
    paths = [root / f for f in files]

    def invoke(x):
        runtime.predict(m, x[None])

    def apart():
        xs = [load_image(p, spec) for p in paths]
        for x in xs:
            invoke(x)

    def interleaved():
        for p in paths:
            invoke(load_image(p, spec))

    def worker(size: int = chunk):
        for i in range(0, len(paths), size):
            items = [(i + j, f) for j, f in enumerate(files[i:i + size])]
            loaded = [pipeline._load(root / f, spec) for _, f in items]
            pipeline._infer(m, items, loaded, runtime)

    apart()  # warm: page cache, first invokes
    ways = {"apart": apart, "interleaved": interleaved, "worker": worker,
            # the chunk the code hands out first and last (the only size before chunks grew)
            "worker_small": lambda: worker(pipeline.MIN_CHUNK)}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(a.get("rounds", 3)):
        for name in (list(ways) if r % 2 == 0 else list(reversed(ways))):
            c0 = time.process_time()
            ways[name]()
            cpu[name].append((time.process_time() - c0) * 1000.0 / len(paths))
    return {k: statistics.median(v) for k, v in cpu.items()} | {"chunk": chunk,
                                                                  "images": len(paths)}


CHILDREN = {"hand": _hand_loop, "preprocess": _preprocess_cost, "inference": _inference,
            "path": _worker_path}


class BenchError(Exception):
    """A contender or a step could not run: one line for the user, no traceback."""


CHILD_NAMES = {"hand": "hand-written loop", "preprocess": "preprocess cost",
               "inference": "inference cost", "path": "worker path cost"}


def _child_main(kind: str, args_json: str) -> None:
    try:
        res = CHILDREN[kind](json.loads(args_json))
    except Exception as e:  # noqa: BLE001  (reported to the parent as one line)
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"ERROR {type(e).__name__}: {first}", flush=True)
        sys.exit(1)
    print("RESULT " + json.dumps(res), flush=True)


def _spawn_child(kind: str, args: dict) -> subprocess.Popen:
    # this checkout's lpirc, as `python -m lpirc` (run from REPO) uses, not an installed one
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=env)


def _collect(p: subprocess.Popen, what: str) -> dict:
    out, err = p.communicate()
    why = _last_line(err)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
        if line.startswith("ERROR "):
            why = line[6:]
    raise BenchError(f"{CHILD_NAMES.get(what, what)} failed (exit {p.returncode}): {why}")


def _last_line(text: str | None) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no output"


def run_child(kind: str, args: dict) -> dict:
    return _collect(_spawn_child(kind, args), _child_label(kind, args))


def _child_label(kind: str, args: dict) -> str:
    """What failed, naming the model it ran."""
    name = CHILD_NAMES.get(kind, kind)
    return f"{name} on {Path(args['model']).name}" if args.get("model") else name


# =============================================================================================
# Holdouts
# =============================================================================================


def _holdout_make_available() -> bool:
    r = subprocess.run([sys.executable, "-m", "lpirc", "holdout", "make", "--help"],
                       capture_output=True, text=True, cwd=str(REPO))
    return r.returncode == 0


def _link_holdout(src: Path, out: Path, count: int, seed: int) -> None:
    """Fallback for `lpirc holdout make`: ``count`` hard links to the source images (cycled in
    a seeded order) named img_NNNNNNN.JPEG, and ground_truth.csv with the synset prefix."""
    names = _list_images(src)
    if not names:
        raise SystemExit(f"{src}: no images")
    random.Random(seed).shuffle(names)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    for i in range(count):
        name = names[i % len(names)]
        ext = os.path.splitext(name)[1]
        dst = f"img_{i:07d}{ext}"
        try:
            os.link(src / name, tmp / dst)
        except OSError:
            shutil.copyfile(src / name, tmp / dst)
        rows.append((dst, name.split("_", 1)[0]))
    with open(tmp / "ground_truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        w.writerows(rows)
    os.replace(tmp, out)


def make_holdout(src: Path, cache: Path, count: int, seed: int) -> tuple[Path, str]:
    """A cached holdout of ``count`` images from ``src``: (path, how it was made)."""
    out = cache / f"holdout-{count}-s{seed}"
    if (out / "ground_truth.csv").is_file():
        return out, "cached"
    cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if _holdout_make_available():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "lpirc", "holdout", "make", str(src), str(tmp),
                            "--count", str(count), "--seed", str(seed), "--quiet"],
                           capture_output=True, text=True, cwd=str(REPO))
        if r.returncode == 0 and (tmp / "ground_truth.csv").is_file():
            os.replace(tmp, out)
            how = f"lpirc holdout make ({time.perf_counter() - t:.1f} s)"
            return out, how
        log(f"lpirc holdout make failed (exit {r.returncode}): {r.stderr.strip()[-300:]}; "
            f"using hard links")
    _link_holdout(src, out, count, seed)
    return out, f"hard links ({time.perf_counter() - t:.1f} s)"


def enlarge_holdout(base: Path, cache: Path, factor: int) -> Path:
    """``factor`` x ``base`` as hard links to base's files (names r<k>_<name>), with a ground
    truth: shows whether memory grows with the holdout size."""
    names = _list_images(base)
    out = cache / f"{base.name}-x{factor}"
    if (out / "ground_truth.csv").is_file() and len(_list_images(out)) == factor * len(names):
        return out
    gt = _read_gt(base / "ground_truth.csv")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    for k in range(factor):
        for n in names:
            dst = f"r{k}_{n.replace('/', '_')}"
            try:
                os.link(base / n, tmp / dst)
            except OSError:
                shutil.copyfile(base / n, tmp / dst)
            if n in gt:
                rows.append((dst, gt[n]))
    with open(tmp / "ground_truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        w.writerows(rows)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _read_gt(path: Path) -> dict[str, str]:
    gt = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0] != "filename":
                gt[row[0]] = row[1]
    return gt


# =============================================================================================
# lpirc run, watched: peak RSS of the process tree and time to the first answer
# =============================================================================================


class TreeWatch(threading.Thread):
    """Polls a process tree: summed RSS every ``interval`` s, results.jsonl every 5 ms until
    its first line appears."""

    def __init__(self, pid: int, results: Path, t_start: float, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.results, self.t_start, self.interval = pid, results, t_start, interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self.cpu_s: dict[int, float] = {}  # last seen user+system CPU seconds per pid
        # (epoch s, tree CPU s, root process CPU s) at each poll: the CPU spent between two
        # moments (the run's clock: manifest start_utc to end_utc), to within one poll
        self.samples: list[tuple[float, float, float]] = []
        self.first_answer_s: float | None = None
        self._halt = threading.Event()

    def _rss(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return
        total = pss = 0
        for p in procs:
            try:
                m = p.memory_full_info()  # rss, and pss (shared pages split between sharers)
                c = p.cpu_times()
            except psutil.Error:
                continue
            total += m.rss
            pss += getattr(m, "pss", m.rss)
            self.cpu_s[p.pid] = c.user + c.system
        self.samples.append((time.time(), sum(self.cpu_s.values()), self.cpu_s.get(self.pid, 0.0)))
        self.peak_rss = max(self.peak_rss, total)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(procs))

    def run(self) -> None:
        next_rss = 0.0
        while not self._halt.is_set():
            now = time.perf_counter()
            if self.first_answer_s is None:
                try:
                    if self.results.stat().st_size > 0:
                        self.first_answer_s = now - self.t_start
                except FileNotFoundError:
                    pass
            if now >= next_rss:
                self._rss()
                next_rss = now + self.interval
            time.sleep(0.005 if self.first_answer_s is None else self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def cpu_at(self, epoch: float) -> tuple[float, float] | None:
        """(tree, root process) CPU seconds at wall time ``epoch``, interpolated between polls;
        None outside the polled span."""
        xs = self.samples
        for (t0, c0, r0), (t1, c1, r1) in zip(xs, xs[1:]):
            if t0 <= epoch <= t1:
                f = (epoch - t0) / (t1 - t0) if t1 > t0 else 0.0
                return c0 + (c1 - c0) * f, r0 + (r1 - r0) * f
        return None


def _epoch(utc: str | None) -> float | None:
    """A manifest's ``start_utc``/``end_utc`` as seconds since the epoch."""
    if not utc:
        return None
    return dt.datetime.strptime(utc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=dt.timezone.utc).timestamp()


def _clock_cpu(watch: TreeWatch, man: dict, n: int) -> dict:
    """CPU ms per answer spent while the run's clock ran (manifest start_utc to end_utc: model
    loading, answering, stopping the workers), whole tree and parent alone; and the parent's
    over its whole life (imports, listing, ground truth, scoring after the run included)."""
    out = {"cpu_run_ms_per_image": None, "parent_cpu_run_ms_per_image": None,
           "parent_cpu_ms_per_image": None}
    if not n:
        return out
    parent = watch.cpu_s.get(watch.pid)
    if parent is not None:
        out["parent_cpu_ms_per_image"] = parent * 1000.0 / n
    a, b = _epoch(man.get("start_utc")), _epoch(man.get("end_utc"))
    ca, cb = (watch.cpu_at(a), watch.cpu_at(b)) if a and b else (None, None)
    if ca and cb:
        out["cpu_run_ms_per_image"] = (cb[0] - ca[0]) * 1000.0 / n
        out["parent_cpu_run_ms_per_image"] = (cb[1] - ca[1]) * 1000.0 / n
    return out


_NO_REPORT: list[bool] = []


def _run_has_no_report() -> bool:
    """Whether this lpirc's `run` has --no-report (asked once)."""
    if not _NO_REPORT:
        r = subprocess.run([sys.executable, "-m", "lpirc", "run", "--help"], capture_output=True,
                           text=True, cwd=str(REPO))
        _NO_REPORT.append("--no-report" in r.stdout)
    return _NO_REPORT[0]


def lpirc_run(model: Path, holdout: Path, out: Path, time_limit_s: float,
              config: Path | None = None, extra: list[str] | None = None) -> dict:
    """One `lpirc run` subprocess, watched. Images/s from its manifest and log."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "lpirc", "run", "--model", str(model), "--holdout", str(holdout),
           "--out", str(out), "--time-limit-s", str(time_limit_s), "--quiet"]
    if _run_has_no_report():
        # the HTML report is written after the run, from its log: not part of answering (and
        # not in lpirc versions from before it existed, which this script also measures)
        cmd.append("--no-report")
    if config is not None:
        cmd += ["--config", str(config)]
    cmd += extra or []
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=str(REPO))
    watch = TreeWatch(p.pid, out / "results.jsonl", t0)
    watch.start()
    stdout, stderr = p.communicate()
    process_s = time.perf_counter() - t0
    watch.stop()
    if p.returncode != 0:
        raise BenchError(f"lpirc run failed (exit {p.returncode}): "
                         f"{_last_line(stderr or stdout)}")
    man = json.loads((out / "manifest.json").read_text())
    stamps, lat, inf = [], [], []
    with open(out / "results.jsonl") as f:
        for line in f:
            try:
                r = json.loads(line)
                stamps.append(r["t_s"])
                if r.get("error") is None:
                    lat.append(float(r["latency_ms"]))
                    inf.append(float(r["inference_ms"]))
            except (ValueError, KeyError, TypeError):
                pass
    n = int(man.get("images_logged") or len(stamps))
    wall = float(man["wall_time_s"])
    return {
        "images": n, "wall_s": wall, "process_s": process_s, "ips": n / wall if wall else 0.0,
        "steady_ips": _steady_t(stamps), "status": man["status"],
        "first_answer_s": watch.first_answer_s, "first_answer_run_clock_s": man.get("first_answer_s"),
        "peak_rss_mb": watch.peak_rss / 2**20, "peak_pss_mb": watch.peak_pss / 2**20,
        "processes": watch.peak_procs,
        "cpu_ms_per_image": sum(watch.cpu_s.values()) * 1000.0 / n if n else None,
        **_clock_cpu(watch, man, n),
        "settings": {k: man["settings"].get(k) for k in
                     ("workers", "threads", "batch", "decode", "decode_threads")},
        "holdout_images": man["holdout"]["image_count"],
        # measured in the workers, per answered image: the invoke alone, and decode +
        # preprocess + invoke (the parts as they cost inside the run, under its parallel load)
        "run_inference_ms": statistics.fmean(inf) if inf else None,
        "run_latency_ms": statistics.fmean(lat) if lat else None,
        # which implementation of the resize the workers used (OpenCV or the numpy fallback)
        "resize_backend": (man.get("preprocess") or {}).get("resize_backend"),
    }


def _steady_t(stamps: list[float]) -> float | None:
    """Images/s from the first answer's arrival to the last one's (start-up excluded): answers
    arrive in chunks, so the first chunk's images are not counted."""
    if len(stamps) < 3:
        return None
    first, last = stamps[0], stamps[-1]
    after = sum(1 for s in stamps if s > first)
    return after / (last - first) if last > first else None


# =============================================================================================
# lpirc tune and lpirc score
# =============================================================================================


def tune(model: Path, holdout: Path, cache: Path, budget_s: float) -> tuple[Path | None, str]:
    """Run `lpirc tune` if it exists; returns (best.json, note)."""
    r = subprocess.run([sys.executable, "-m", "lpirc", "tune", "--help"], capture_output=True,
                       text=True, cwd=str(REPO))
    if r.returncode != 0:
        return None, "lpirc tune is not available (python -m lpirc tune --help failed): skipped"
    help_text = r.stdout
    out = cache / "tune"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "lpirc", "tune", "--model", str(model), "--holdout", str(holdout)]
    if "--out" in help_text:
        cmd += ["--out", str(out)]
    if "--max-time-s" in help_text:
        cmd += ["--max-time-s", str(budget_s)]
    if "--no-compare-defaults" in help_text:  # this benchmark compares them itself
        cmd += ["--no-compare-defaults"]
    if "--quiet" in help_text:
        cmd += ["--quiet"]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO),
                           timeout=budget_s * 2 + 60)
    except subprocess.TimeoutExpired:
        return None, f"lpirc tune did not finish in {budget_s * 2 + 60:.0f} s: skipped"
    took = time.perf_counter() - t
    if r.returncode != 0:
        last = ((r.stderr or r.stdout).strip().splitlines() or ["?"])[-1]
        return None, f"lpirc tune failed (exit {r.returncode}: {last}): skipped"
    best = sorted(list(out.rglob("best.json")) if out.exists() else [],
                  key=lambda p: p.stat().st_mtime)
    if not best:  # default location: runs/tune-*/best.json
        best = sorted((REPO / "runs").glob("tune-*/best.json"), key=lambda p: p.stat().st_mtime)
        best = [b for b in best if b.stat().st_mtime >= time.time() - took - 5]
    if not best:
        return None, "lpirc tune wrote no best.json: skipped"
    return best[-1], f"lpirc tune took {took:.0f} s -> {best[-1]}"


def synth_log(run_dir: Path, holdout: Path, out: Path) -> Path:
    """A run folder with one answer per holdout image (real answers where `run_dir` has them,
    the same answers repeated for the rest), to time scoring of a full-size log."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    man = json.loads((run_dir / "manifest.json").read_text())
    real = []
    with open(run_dir / "results.jsonl") as f:
        for line in f:
            try:
                real.append(json.loads(line))
            except ValueError:
                pass
    names = _list_images(holdout)
    t_per = (man["wall_time_s"] or 1.0) / max(1, len(real))
    with open(out / "results.jsonl", "w") as f:
        for i, name in enumerate(names):
            r = dict(real[i % len(real)])
            r.update(image=name, index=i, t_s=round(i * t_per, 4))
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    man.update(status="complete", images_logged=len(names))
    man["holdout"]["image_count"] = len(names)
    man["holdout"]["ground_truth"] = str((holdout / "ground_truth.csv").resolve())
    man["budget"]["time_limit_s"] = 600.0
    (out / "manifest.json").write_text(json.dumps(man, indent=2))
    return out


def score_times(run_dir: Path) -> dict:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lpirc", "score", str(run_dir), "--format", "json"],
                       capture_output=True, text=True, cwd=str(REPO))
    cli_s = time.perf_counter() - t
    if r.returncode != 0:
        raise BenchError(f"lpirc score failed (exit {r.returncode}): {_last_line(r.stderr)}")
    res = json.loads(r.stdout)
    sys.path.insert(0, str(REPO))
    import scoring

    t = time.perf_counter()
    scoring.score_path(run_dir)
    inproc_s = time.perf_counter() - t
    return {"answers": res.get("images_answered"), "images_total": res.get("images_total"),
            "top1": res.get("top1"), "cli_s": cli_s, "in_process_s": inproc_s}


# =============================================================================================
# The benchmark
# =============================================================================================


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except ImportError:
        mem = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    versions = {}
    for dist in ("ai-edge-litert", "pillow", "numpy"):
        try:
            import importlib.metadata as md

            versions[dist] = md.version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = None
    return {"cpu": cpu, "cores": cores(), "memory_gb": round(mem / 2**30, 1) if mem else None,
            "python": platform.python_version(), "os": platform.platform(),
            "loadavg_at_start": load, "versions": versions}


def med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def limit_round(model: Path, holdout: Path, t: float, ncores: int) -> dict:
    """The machine's limit, measured now: per-image costs alone, and pure-inference throughput."""
    pre = run_child("preprocess", {"holdout": str(holdout), "mode": "lpirc", "time_limit_s": t,
                                   "model": str(model)})
    pre_pil = run_child("preprocess", {"holdout": str(holdout), "mode": "pillow",
                                       "time_limit_s": t, "model": str(model)})
    inf = run_child("inference", {"model": str(model), "threads": 1, "time_limit_s": t})
    path = run_child("path", {"model": str(model), "holdout": str(holdout),
                              "distinct": max(24, min(200, int(t * 40))), "rounds": 3})
    start_at = time.time() + 2.5  # all processes loaded before the clock starts
    procs = [_spawn_child("inference", {"model": str(model), "threads": 1, "time_limit_s": t,
                                        "start_at": start_at, "seed": i}) for i in range(ncores)]
    par = [_collect(p, f"pure inference on {model.name}") for p in procs]
    pure = sum(r["images"] / r["elapsed_s"] for r in par)
    return {
        "preprocess_ms": pre["ms_per_image"], "preprocess_pillow_ms": pre_pil["ms_per_image"],
        "inference_ms": inf["ms_per_image"], "pure_inference_ips": pure,
        "preprocess_resize_backend": pre.get("resize_backend"),
        "path_apart_cpu_ms": path["apart"], "path_interleaved_cpu_ms": path["interleaved"],
        "path_worker_cpu_ms": path["worker"], "path_chunk": path["chunk"],
        "path_worker_small_cpu_ms": path["worker_small"],
        # CPU time per image (process_time): what the CPU-per-answer ratio compares with, as
        # robust as that figure to other processes sharing the cores (wall time is not)
        "preprocess_cpu_ms": pre.get("cpu_ms_per_image"),
        "preprocess_pillow_cpu_ms": pre_pil.get("cpu_ms_per_image"),
        "inference_cpu_ms": inf.get("cpu_ms_per_image"),
        "limit_ips": ncores * 1000.0 / (pre["ms_per_image"] + inf["ms_per_image"]),
        "limit_pillow_ips": ncores * 1000.0 / (pre_pil["ms_per_image"] + inf["ms_per_image"]),
        # the same limit from the measured parallel inference rate instead of cores x one core:
        # what the cores actually delivered to parallel processes right now (robust to other
        # load on the machine, which single-process costs do not see)
        "limit_parallel_ips": pure * inf["ms_per_image"]
        / (pre["ms_per_image"] + inf["ms_per_image"]),
    }


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {v}")
        return v
    return parse


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout", type=Path, help="Holdout folder (with ground_truth.csv). Default:"
                    " --count images made from --src into --cache-dir.")
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="Images to make the default "
                    "holdout from [../shared/data/imagenet-dev].")
    ap.add_argument("--count", type=_count(1), default=20_000, help="Default holdout size [20000].")
    ap.add_argument("--big-factor", type=_count(0), default=10, help="The memory check's large "
                    "holdout is this many times the holdout, as hard links [10]; 0 = skip.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the default holdout [0].")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="Submission .tflite "
                    "[../shared/data/models/mobilenet_v2_1.0_224_quant.tflite].")
    ap.add_argument("--images", type=_count(1), help="Hand-written loop: at most this many images "
                    "(default: as many as fit in --time-limit-s).")
    ap.add_argument("--time-limit-s", type=_seconds, default=25.0, help="Wall budget of each lpirc "
                    "run and of the hand-written loop; images/s = answers / wall time [25].")
    ap.add_argument("--limit-s", type=_seconds, default=4.0, help="Seconds for each limit "
                    "measurement (preprocess alone, inference alone, pure inference) [4].")
    ap.add_argument("--repeats", type=_count(1), default=2, help="Interleaved rounds [2]; medians "
                    "are reported.")
    ap.add_argument("--tune-budget-s", type=_seconds, default=60.0,
                    help="Passed to `lpirc tune --max-time-s` [60].")
    ap.add_argument("--tuned-config", type=Path, help="Use this best.json instead of running "
                    "lpirc tune.")
    ap.add_argument("--no-tune", action="store_true", help="Skip the tuned contender.")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                    help="Where holdouts and run folders go [bench/.cache].")
    ap.add_argument("--quick", action="store_true", help="Tiny sizes (40 images, 3 s runs, "
                    "1 round): a smoke test, not a measurement.")
    ap.add_argument("--out", type=Path, help="Write every figure as JSON here.")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child_main(*a.child)
        return 0
    if a.quick:
        a.count = min(a.count, 40)
        a.time_limit_s = min(a.time_limit_s, 3.0)
        a.limit_s = min(a.limit_s, 0.5)
        a.repeats = 1
        a.big_factor = min(a.big_factor, 3) if a.big_factor else 0
        a.tune_budget_s = min(a.tune_budget_s, 10.0)

    if not a.model.is_file():
        print(f"run_bench: model not found: {a.model}", file=sys.stderr)
        return 2
    if a.tuned_config is not None and not a.tuned_config.is_file():
        print(f"run_bench: --tuned-config not found: {a.tuned_config}", file=sys.stderr)
        return 2
    if a.holdout is not None:
        why = _holdout_problem(a.holdout)
        if why:
            print(f"run_bench: {a.holdout}: {why}", file=sys.stderr)
            return 2
    try:
        return _bench(a)
    except BenchError as e:
        print(f"run_bench: error: {e}", file=sys.stderr)
        return 1


def _holdout_problem(root: Path) -> str | None:
    """Why ``root`` cannot be benchmarked, or None."""
    if not root.is_dir():
        return "holdout folder not found"
    if not _list_images(root):
        return "holdout folder holds no images"
    if not (root / "ground_truth.csv").is_file():
        # the memory check's large holdout and the scoring check copy its ground truth
        return "no ground_truth.csv (make one with `lpirc holdout make`)"
    return None


def _bench(a: argparse.Namespace) -> int:
    """The benchmark proper, once the options are known to be usable."""
    t_all = time.perf_counter()
    ncores = cores()
    mach = machine()
    cache = a.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    if a.holdout is not None:
        holdout, how = a.holdout.resolve(), "given"
    else:
        if not a.src.is_dir():
            print(f"run_bench: image source not found: {a.src} (give --holdout)", file=sys.stderr)
            return 2
        holdout, how = make_holdout(a.src, cache, a.count, a.seed)
    n_holdout = len(_list_images(holdout))
    log(f"holdout {holdout}: {n_holdout} images ({how})")

    tuned_cfg: Path | None = None
    if a.tuned_config is not None:
        tuned_cfg, tune_note = a.tuned_config.resolve(), f"tuned settings from {a.tuned_config}"
    elif a.no_tune:
        tune_note = "tuned contender skipped (--no-tune)"
    else:
        log("running lpirc tune ...")
        tuned_cfg, tune_note = tune(a.model, holdout, cache, a.tune_budget_s)
    log(tune_note)
    notes.append(tune_note)
    if tuned_cfg is None:
        print(f"note: {tune_note}")

    runs_dir = cache / "runs"
    rounds: list[dict] = []
    last_default_run = None
    for r in range(a.repeats):
        steps = ["hand", "default", "tuned", "limit"]
        if r % 2:
            steps.reverse()  # alternate the order, so no contender always runs first
        res: dict[str, Any] = {}
        for step in steps:
            log(f"round {r + 1}/{a.repeats}: {step}")
            if step == "hand":
                res["hand"] = run_child("hand", {
                    "model": str(a.model), "holdout": str(holdout), "threads": 2,
                    "time_limit_s": a.time_limit_s, "images": a.images,
                    "results": str(cache / "hand_results.jsonl")})
            elif step == "default":
                out = runs_dir / f"default-{r}"
                res["default"] = lpirc_run(a.model, holdout, out, a.time_limit_s)
                last_default_run = out
            elif step == "tuned" and tuned_cfg is not None:
                res["tuned"] = lpirc_run(a.model, holdout, runs_dir / f"tuned-{r}",
                                         a.time_limit_s, config=tuned_cfg)
            elif step == "limit":
                res["limit"] = limit_round(a.model, holdout, a.limit_s, ncores)
        rounds.append(res)

    # the rounds above took minutes: a failure from here on is a note in the report, not the
    # loss of every figure measured so far
    big = None
    if a.big_factor and a.big_factor > 1:
        t = time.perf_counter()
        try:
            big_holdout = enlarge_holdout(holdout, cache, a.big_factor)
            log(f"large holdout {big_holdout}: {a.big_factor} x {n_holdout} images "
                f"({time.perf_counter() - t:.1f} s)")
            log("memory: lpirc run on the large holdout")
            big = lpirc_run(a.model, big_holdout, runs_dir / "big", a.time_limit_s,
                            config=tuned_cfg)
        except (BenchError, OSError) as e:
            notes.append(f"memory check on a {a.big_factor}x holdout not measured: {e}")
        if big is not None:
            if tuned_cfg is None:
                same = [x["default"] for x in rounds]
            else:
                same = [x["tuned"] for x in rounds]
            big["compare_peak_rss_mb"] = med([x["peak_rss_mb"] for x in same])

    log("scoring a full-size log")
    score = {"answers": None, "images_total": None, "top1": None, "cli_s": None,
             "in_process_s": None}
    try:
        full = synth_log(last_default_run, holdout, runs_dir / "score-full")
        score = score_times(full)
    except (BenchError, OSError, ValueError, KeyError) as e:
        notes.append(f"scoring time not measured: {e}")

    # --- figures and ratios (ratios per round, then the median) ------------------------------
    def fig(name: str, key: str) -> float | None:
        return med([x[name][key] for x in rounds if name in x])

    def ratio(num: str, den: tuple[str, str]) -> float | None:
        vals = []
        for x in rounds:
            if num in x and den[0] in x and x[den[0]].get(den[1]):
                vals.append(x[num]["ips"] / x[den[0]][den[1]])
        return med(vals)

    for x in rounds:
        x["hand"]["ips"] = x["hand"]["images"] / x["hand"]["elapsed_s"]
    has_tuned = tuned_cfg is not None
    best = "tuned" if has_tuned else "default"
    figures = {
        "hand_ips": fig("hand", "ips"), "hand_steady_ips": fig("hand", "steady_ips"),
        "default_ips": fig("default", "ips"), "default_steady_ips": fig("default", "steady_ips"),
        "tuned_ips": fig("tuned", "ips") if has_tuned else None,
        "tuned_steady_ips": fig("tuned", "steady_ips") if has_tuned else None,
        "preprocess_ms": fig("limit", "preprocess_ms"),
        "preprocess_pillow_ms": fig("limit", "preprocess_pillow_ms"),
        "inference_ms": fig("limit", "inference_ms"),
        "preprocess_cpu_ms": fig("limit", "preprocess_cpu_ms"),
        "path_apart_cpu_ms": fig("limit", "path_apart_cpu_ms"),
        "path_interleaved_cpu_ms": fig("limit", "path_interleaved_cpu_ms"),
        "path_worker_cpu_ms": fig("limit", "path_worker_cpu_ms"),
        "path_worker_small_cpu_ms": fig("limit", "path_worker_small_cpu_ms"),
        "path_chunk": fig("limit", "path_chunk"),
        "preprocess_pillow_cpu_ms": fig("limit", "preprocess_pillow_cpu_ms"),
        "inference_cpu_ms": fig("limit", "inference_cpu_ms"),
        "limit_ips": fig("limit", "limit_ips"), "limit_pillow_ips": fig("limit", "limit_pillow_ips"),
        "pure_inference_ips": fig("limit", "pure_inference_ips"),
        "limit_parallel_ips": fig("limit", "limit_parallel_ips"),
        "first_answer_s": fig(best, "first_answer_s"),
        "first_answer_default_s": fig("default", "first_answer_s"),
        "peak_rss_mb": fig(best, "peak_rss_mb"),
        "peak_rss_default_mb": fig("default", "peak_rss_mb"),
        "peak_pss_mb": fig(best, "peak_pss_mb"),
        "peak_pss_big_mb": big["peak_pss_mb"] if big else None,
        "hand_cpu_ms": fig("hand", "cpu_ms_per_image"),
        "default_cpu_ms": fig("default", "cpu_ms_per_image"),
        "default_cpu_run_ms": fig("default", "cpu_run_ms_per_image"),
        "default_parent_cpu_ms": fig("default", "parent_cpu_ms_per_image"),
        "default_parent_cpu_run_ms": fig("default", "parent_cpu_run_ms_per_image"),
        "default_run_inference_ms": fig("default", "run_inference_ms"),
        "default_run_latency_ms": fig("default", "run_latency_ms"),
        "tuned_cpu_ms": fig("tuned", "cpu_ms_per_image") if has_tuned else None,
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "peak_rss_big_mb": big["peak_rss_mb"] if big else None,
        "first_answer_big_s": big["first_answer_s"] if big else None,
        "first_answer_big_run_clock_s": big.get("first_answer_run_clock_s") if big else None,
        "score_cli_s": score["cli_s"], "score_in_process_s": score["in_process_s"],
        "resize_backend_run": next((x[k].get("resize_backend") for x in rounds
                                    for k in ("default", "tuned") if k in x), None),
        "resize_backend_preprocess": next((x["limit"].get("preprocess_resize_backend")
                                           for x in rounds if "limit" in x), None),
    }
    ratios = {
        "default/hand": ratio("default", ("hand", "ips")),
        "default/limit": ratio("default", ("limit", "limit_ips")),
        "default/pure_inference": ratio("default", ("limit", "pure_inference_ips")),
        "default/limit_parallel": ratio("default", ("limit", "limit_parallel_ips")),
    }
    parts_cpu = _add(figures.get("preprocess_cpu_ms") or figures["preprocess_ms"],
                     figures.get("inference_cpu_ms") or figures["inference_ms"])
    ratios["default_cpu/parts_cpu"] = _div(figures["default_cpu_ms"], parts_cpu)
    ratios["default_cpu_run/parts_cpu"] = _div(figures["default_cpu_run_ms"], parts_cpu)
    if has_tuned:
        ratios.update({
            "tuned/hand": ratio("tuned", ("hand", "ips")),
            "tuned/limit": ratio("tuned", ("limit", "limit_ips")),
            "tuned/pure_inference": ratio("tuned", ("limit", "pure_inference_ips")),
            "tuned/limit_parallel": ratio("tuned", ("limit", "limit_parallel_ips")),
        })
    growth = None
    if big and big.get("compare_peak_rss_mb"):
        growth = big["peak_rss_mb"] / big["compare_peak_rss_mb"] - 1.0
    goals = [
        (f"lpirc run ({best}) >= {GOALS['tuned_vs_hand']}x hand-written loop",
         ratios.get(f"{best}/hand"), lambda v: v >= GOALS["tuned_vs_hand"], "{:.2f}x"),
        (f"lpirc run ({best}) >= {GOALS['tuned_vs_limit']}x end-to-end limit",
         ratios.get(f"{best}/limit"), lambda v: v >= GOALS["tuned_vs_limit"], "{:.2f}x"),
        (f"CPU per answer (default) <= {GOALS['cpu_vs_parts']}x the parts' CPU",
         ratios.get("default_cpu/parts_cpu"), lambda v: v <= GOALS["cpu_vs_parts"], "{:.2f}x"),
        (f"whole-tree peak RSS <= {GOALS['peak_rss_mb']:.0f} MB",
         max([v for v in (figures["peak_rss_mb"], figures["peak_rss_big_mb"]) if v] or [0]) or None,
         lambda v: v <= GOALS["peak_rss_mb"], "{:.0f} MB"),
        (f"peak RSS at {a.big_factor}x holdout within {GOALS['rss_growth']:.0%}",
         growth, lambda v: abs(v) <= GOALS["rss_growth"], "{:+.1%}"),
        (f"first answer within {GOALS['first_answer_s']} s of start",
         max([v for v in (figures["first_answer_s"], figures["first_answer_big_s"]) if v] or [0])
         or None, lambda v: v <= GOALS["first_answer_s"], "{:.2f} s"),
        (f"scoring {score['images_total'] or n_holdout} answers < {GOALS['score_s']} s (CLI)",
         figures["score_cli_s"], lambda v: v < GOALS["score_s"], "{:.2f} s"),
    ]
    total_s = time.perf_counter() - t_all
    report = format_report(mach, holdout, n_holdout, a, rounds, figures, ratios, goals, big, score,
                           notes, total_s, best)
    print(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({
            "machine": mach, "holdout": {"path": str(holdout), "images": n_holdout, "made": how},
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                        if k != "child"},
            "rounds": rounds, "big": big, "score": score, "figures": figures, "ratios": ratios,
            "goals": [{"goal": g, "value": v, "holds": (ok(v) if v is not None else None)}
                      for g, v, ok, _ in goals],
            "notes": notes, "total_s": total_s}, indent=2, default=str))
    shutil.rmtree(runs_dir, ignore_errors=True)
    return 0


def format_report(mach, holdout, n_holdout, a, rounds, f, ratios, goals, big, score, notes,
                  total_s, best) -> str:
    def num(v, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v)

    tuned_settings = next((x["tuned"]["settings"] for x in rounds if "tuned" in x), None)
    default_settings = rounds[0]["default"]["settings"]
    rows = [
        ("hand-written loop (1 process, Pillow, 2 threads)", num(f["hand_ips"]),
         num(f["hand_steady_ips"]), ""),
        ("lpirc run, default settings", num(f["default_ips"]), num(f["default_steady_ips"]),
         _settings_str(default_settings)),
        ("lpirc run, lpirc tune's best settings", num(f["tuned_ips"]), num(f["tuned_steady_ips"]),
         _settings_str(tuned_settings) if tuned_settings else "not run"),
        (f"pure inference ({mach['cores']} processes x 1 thread)", num(f["pure_inference_ips"]),
         "", "inputs in memory"),
        ("end-to-end limit, lpirc preprocessing", num(f["limit_ips"]), "",
         f"derived: {mach['cores']} / ({num(f['preprocess_ms'], '{:.2f}')} + "
         f"{num(f['inference_ms'], '{:.2f}')}) ms"),
        ("end-to-end limit, Pillow resize preprocessing", num(f["limit_pillow_ips"]), "",
         f"derived: {mach['cores']} / ({num(f['preprocess_pillow_ms'], '{:.2f}')} + "
         f"{num(f['inference_ms'], '{:.2f}')}) ms"),
        ("end-to-end limit from parallel inference", num(f["limit_parallel_ips"]), "",
         "derived: pure inference x inference / (preprocess + inference)"),
    ]
    w = max([len(r[0]) for r in rows] + [62])
    # the parts' CPU time (wall time where an older run of this script gave none): under other
    # load, wall time per image grows, CPU time much less, and CPU per answer is CPU time
    cpu_sum = _add(f.get("preprocess_cpu_ms") or f["preprocess_ms"],
                   f.get("inference_cpu_ms") or f["inference_ms"])
    cpu_sum_pillow = _add(f.get("preprocess_pillow_cpu_ms") or f["preprocess_pillow_ms"],
                          f.get("inference_cpu_ms") or f["inference_ms"])
    lines = [
        "--quick: a smoke test on tiny sizes, where start-up dominates: these figures are not a "
        "measurement",
    ] if a.quick else []
    lines += [
        f"machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_gb']} GB, Python "
        f"{mach['python']}, LiteRT {mach['versions'].get('ai-edge-litert')}, Pillow "
        f"{mach['versions'].get('pillow')}; load average at start "
        f"{'/'.join(f'{x:.1f}' for x in mach['loadavg_at_start']) if mach['loadavg_at_start'] else '?'}",
        f"model: {a.model.name}; holdout: {n_holdout} images ({holdout}); "
        f"{len(rounds)} interleaved round(s), {a.time_limit_s:g} s per run, medians",
        f"resize path: lpirc run used {f.get('resize_backend_run') or 'unknown'} (its manifest's "
        f"preprocess.resize_backend); the preprocess-cost row used "
        f"{f.get('resize_backend_preprocess') or 'unknown'}",
        "",
        "img/s: answers / wall time of each run, start-up included; steady: from the first "
        "answer to the last; measured, except the rows marked derived",
        f"{'throughput':<{w}}  {'img/s':>6}  {'steady':>6}  notes",
    ]
    lines += [f"{r[0]:<{w}}  {r[1]:>6}  {r[2]:>6}  {r[3]}" for r in rows]
    lines += [
        "",
        f"{'per-image cost alone (1 core)':<{w}}  {'ms':>6}  {'CPU ms':>6}",
        f"{'decode + crop + resize, lpirc.preprocess (TF-exact bilinear)':<{w}}  "
        f"{num(f['preprocess_ms'], '{:.2f}'):>6}  {num(f.get('preprocess_cpu_ms'), '{:.2f}'):>6}",
        f"{'decode + crop + resize, Pillow resize(BILINEAR)':<{w}}  "
        f"{num(f['preprocess_pillow_ms'], '{:.2f}'):>6}  "
        f"{num(f.get('preprocess_pillow_cpu_ms'), '{:.2f}'):>6}",
        f"{'inference (1 thread, input in memory)':<{w}}  {num(f['inference_ms'], '{:.2f}'):>6}  "
        f"{num(f.get('inference_cpu_ms'), '{:.2f}'):>6}",
        f"{'sum: the least CPU an answer can cost':<{w}}  "
        f"{num(_add(f['preprocess_ms'], f['inference_ms']), '{:.2f}'):>6}  "
        f"{num(cpu_sum, '{:.2f}'):>6}",
        "",
        f"{'CPU time per answer, whole process tree':<{w}}  {'ms':>6}  vs the sum (CPU ms)",
        f"{'hand-written loop':<{w}}  {num(f['hand_cpu_ms'], '{:.2f}'):>6}  "
        f"{num(_div(f['hand_cpu_ms'], cpu_sum_pillow), '{:.2f}x')} (Pillow sum)",
        f"{'lpirc run, default settings':<{w}}  {num(f['default_cpu_ms'], '{:.2f}'):>6}  "
        f"{num(_div(f['default_cpu_ms'], cpu_sum), '{:.2f}x')}",
        f"{'lpirc run, tuned settings':<{w}}  {num(f['tuned_cpu_ms'], '{:.2f}'):>6}  "
        f"{num(_div(f['tuned_cpu_ms'], cpu_sum), '{:.2f}x')}",
        f"{'lpirc run, default, on the run clock (model load in)':<{w}}  "
        f"{num(f.get('default_cpu_run_ms'), '{:.2f}'):>6}  "
        f"{num(_div(f.get('default_cpu_run_ms'), cpu_sum), '{:.2f}x')}",
        f"{'  of which the parent (dispatch, pipes, the log)':<{w}}  "
        f"{num(f.get('default_parent_cpu_run_ms'), '{:.3f}'):>6}",
        f"{'  the parent, its whole life (+ start-up, scoring)':<{w}}  "
        f"{num(f.get('default_parent_cpu_ms'), '{:.3f}'):>6}",
        "",
        f"{'where the CPU of an answer goes (one process, CPU ms, alternated)':<{w}}  {'ms':>6}  vs apart",
        f"{'decode + preprocess all, then invoke all (each part alone)':<{w}}  "
        f"{num(f.get('path_apart_cpu_ms'), '{:.2f}'):>6}  1.00x",
        f"{'one image after the other (decode + preprocess, invoke)':<{w}}  "
        f"{num(f.get('path_interleaved_cpu_ms'), '{:.2f}'):>6}  "
        f"{num(_div(f.get('path_interleaved_cpu_ms'), f.get('path_apart_cpu_ms')), '{:.2f}x')}",
        f"{'lpirc worker path, chunks of ' + num(f.get('path_chunk')) + ' (+ top-5, answers)':<{w}}  "
        f"{num(f.get('path_worker_cpu_ms'), '{:.2f}'):>6}  "
        f"{num(_div(f.get('path_worker_cpu_ms'), f.get('path_apart_cpu_ms')), '{:.2f}x')}",
        f"{'lpirc worker path, chunks of 4':<{w}}  "
        f"{num(f.get('path_worker_small_cpu_ms'), '{:.2f}'):>6}  "
        f"{num(_div(f.get('path_worker_small_cpu_ms'), f.get('path_apart_cpu_ms')), '{:.2f}x')}",
        f"{'lpirc run, whole tree (parent, pipes, 2 workers sharing the cores)':<{w}}  "
        f"{num(f['default_cpu_ms'], '{:.2f}'):>6}  "
        f"{num(_div(f['default_cpu_ms'], f.get('path_apart_cpu_ms')), '{:.2f}x')}",
        "",
        f"{'lpirc run':<{w}}  {'value':>9}",
        f"{'peak RSS, whole process tree, ' + str(n_holdout) + ' images':<{w}}  "
        f"{num(f['peak_rss_mb'], '{:.0f} MB'):>9}",
    ]
    if big:
        lines.append(f"{'peak RSS, whole process tree, ' + str(big['holdout_images']) + ' images':<{w}}  "
                     f"{num(f['peak_rss_big_mb'], '{:.0f} MB'):>9}")
    lines.append(f"{'peak PSS (shared pages split), ' + str(n_holdout) + ' images':<{w}}  "
                 f"{num(f['peak_pss_mb'], '{:.0f} MB'):>9}")
    if big:
        lines.append(f"{'peak PSS (shared pages split), ' + str(big['holdout_images']) + ' images':<{w}}  "
                     f"{num(f['peak_pss_big_mb'], '{:.0f} MB'):>9}")
    lines += [
        f"{'first answer after process start, ' + str(n_holdout) + ' images':<{w}}  "
        f"{num(f['first_answer_s'], '{:.2f} s'):>9}",
    ]
    if big:
        lines.append(f"{'first answer after process start, ' + str(big['holdout_images']) + ' images':<{w}}  "
                     f"{num(f['first_answer_big_s'], '{:.2f} s'):>9}")
        lines.append(f"{'first answer on the run clock (manifest), ' + str(big['holdout_images']) + ' images':<{w}}  "
                     f"{num(f.get('first_answer_big_run_clock_s'), '{:.2f} s'):>9}")
    lines += [
        f"{'lpirc score --format json, ' + str(score['images_total'] or n_holdout) + ' answers (CLI wall)':<{w}}  "
        f"{num(f['score_cli_s'], '{:.2f} s'):>9}",
        f"{'scoring.score_path, same log (in process)':<{w}}  "
        f"{num(f['score_in_process_s'], '{:.2f} s'):>9}",
        "",
        "ratios (per round, median)",
    ]
    for k, v in ratios.items():
        lines.append(f"  {k:<24} {num(v, '{:.2f}')}")
    lines += ["", "goals"]
    for g, v, ok, fmt in goals:
        mark = "n/a " if v is None else ("PASS" if ok(v) else "MISS")
        lines.append(f"  {mark}  {g}: {num(v, fmt)}")
    lines += [f"note: {n}" for n in notes]
    la0, la1 = mach.get("loadavg_at_start"), f.get("loadavg_end")
    # Only the load before the benchmark starts says something about other work: at the end,
    # the load average is mostly the benchmark's own processes.
    if la0 and la0[0] > mach["cores"] * 0.5:
        lines.append(f"note: the machine was busy with other work (load average {la0[0]:.1f} at "
                     f"start, {la1[0]:.1f} at end, {mach['cores']} cores): absolute figures are "
                     "low and the 'limit' (costs measured one process at a time) is optimistic; "
                     "ratios between interleaved contenders and CPU time per answer hold better.")
    lines.append(f"benchmark took {total_s:.0f} s")
    return "\n".join(lines)


def _add(a, b):
    return None if a is None or b is None else a + b


def _div(a, b):
    return None if a is None or not b else a / b


def _settings_str(s: dict | None) -> str:
    if not s:
        return ""
    return ", ".join(f"{k} {v}" for k, v in s.items() if v is not None)


if __name__ == "__main__":
    sys.exit(main())
