"""Rebuild the bundled reference submission: ``python -m submission.make_reference``.

Needs the ``build`` extra (TensorFlow): ``pip install '.[build]'``. About 1.5 minutes on 2 CPU cores.

What it does, deterministically (fixed seeds; TensorFlow's CPU kernels may still differ in the
last bits between machines/versions, so a rebuild is close to, not byte-identical with, the
committed file):

1. Draws ``--train`` demo images (:mod:`lpirc.demo`, seed 7; the demo holdout uses seed 1234),
   JPEG-encodes each one and preprocesses it with :mod:`lpirc.preprocess` exactly as ``lpirc run``
   does for a float model (central crop 0.875, TF-style bilinear resize to 64x64,
   ``(pixel - 127.5) / 127.5``).
2. Trains a tiny Keras CNN (64x64x3 float in, 1000-way softmax out, ILSVRC-2012 order). Only the
   ten demo classes ever occur in training, so the other 990 outputs just learn to stay low;
   this is a demo model, not an ImageNet classifier.
3. Quantizes it with :func:`submission.build.build_submission` (int8 input and output, every op
   int8), calibrated on a freshly generated demo folder (seed 99), and writes
   ``submission/reference/model.tflite`` and ``model.json``.
4. Prints the top-1 accuracy of the int8 model on the demo holdout (300 images, seed 1234),
   evaluated with ``ai_edge_litert`` directly.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from lpirc.demo import DEMO_CLASSES, DEMO_HOLDOUT_COUNT, DEMO_HOLDOUT_SEED, demo_samples, make_demo_holdout
from lpirc.preprocess import PreprocessSpec, load_image
from submission.build import build_submission

HERE = Path(__file__).resolve().parent
REFERENCE_DIR = HERE / "reference"
SIZE = 64
TRAIN_SEED = 7
CALIB_SEED = 99
MEAN = STD = 127.5


def _spec(dtype: str):
    return PreprocessSpec(height=SIZE, width=SIZE, dtype=dtype, mean=MEAN, std=STD)


def _chunk(args):
    """Worker: samples [start, stop) of demo_samples(total, seed) -> (x float32, y int)."""
    total, seed, start, stop = args
    spec = _spec("float32")
    rng = np.random.default_rng([seed, start])
    xs, ys = [], []
    for img, label in demo_samples(total, seed, start=start, stop=stop):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(70, 96)))
        xs.append(load_image(buf.getvalue(), spec))
        ys.append(label)
    return np.stack(xs).astype(np.float32), np.array(ys, np.int32)


def make_training_set(count: int, seed: int = TRAIN_SEED, workers: int = 2):
    """``count`` preprocessed demo samples: x (n, 64, 64, 3) float32, y (n,) ILSVRC indices."""
    step = max(1, -(-count // (workers * 4)))
    jobs = [(count, seed, s, min(count, s + step)) for s in range(0, count, step)]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_chunk, jobs)
    else:
        parts = [_chunk(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def make_model(tf):
    L = tf.keras.layers

    def block(x, ch, stride):
        x = L.Conv2D(ch, 3, strides=stride, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU(6.0)(x)

    inp = tf.keras.Input((SIZE, SIZE, 3), name="input")
    x = block(inp, 16, 2)   # 32x32
    x = block(x, 32, 1)
    x = L.MaxPooling2D()(x)  # 16x16
    x = block(x, 48, 1)
    x = L.MaxPooling2D()(x)  # 8x8
    x = block(x, 96, 1)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(0.2)(x)
    out = L.Dense(1000, activation="softmax", name="scores")(x)
    return tf.keras.Model(inp, out, name="lpirc_demo_reference")


def evaluate_tflite(model_path: Path, holdout: Path) -> tuple[float, int]:
    """Top-1 of a .tflite on a demo holdout folder, with ai_edge_litert (no TensorFlow)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path), num_threads=2)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    spec = _spec(np.dtype(inp["dtype"]).name)
    by_synset = {c.synset: c.index for c in DEMO_CLASSES}
    offset = 1 if out["shape"][-1] == 1001 else 0
    rows = (holdout / "ground_truth.csv").read_text().splitlines()[1:]
    correct = 0
    for row in rows:
        name, synset = row.split(",")
        it.set_tensor(inp["index"], load_image(holdout / name, spec)[None])
        it.invoke()
        pred = int(np.argmax(it.get_tensor(out["index"])[0])) - offset
        correct += pred == by_synset[synset]
    return correct / len(rows), len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m submission.make_reference", description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=5000, help="training images (default 5000)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REFERENCE_DIR / "model.tflite")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.time()
    x, y = make_training_set(args.train, TRAIN_SEED, args.workers)
    print(f"training set: {len(x)} images, {time.time() - t0:.1f} s", flush=True)

    import tensorflow as tf

    tf.keras.utils.set_random_seed(TRAIN_SEED)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover
        pass
    model = make_model(tf)
    steps = args.epochs * -(-len(x) // 64)
    lr = tf.keras.optimizers.schedules.CosineDecay(3e-3, steps, alpha=0.05)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    t1 = time.time()
    model.fit(x, y, batch_size=64, epochs=args.epochs, shuffle=True, verbose=2)
    print(f"trained in {time.time() - t1:.1f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="lpirc-ref-") as tmp:
        calib = make_demo_holdout(Path(tmp) / "calib", count=300, seed=CALIB_SEED)
        t2 = time.time()
        out = build_submission(args.out, calib, keras_model=model, dtype="int8", num_images=300,
                               mean=MEAN, std=STD, progress=False)
        print(f"quantized in {time.time() - t2:.1f} s -> {out} ({out.stat().st_size} bytes)")
        holdout = make_demo_holdout(Path(tmp) / "holdout", DEMO_HOLDOUT_COUNT, DEMO_HOLDOUT_SEED)
        acc, n = evaluate_tflite(out, holdout)
    print(f"int8 top-1 on the demo holdout ({n} images, seed {DEMO_HOLDOUT_SEED}): {acc:.1%}")
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
