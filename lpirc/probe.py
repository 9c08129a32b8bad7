"""A model loaded, invoked or read in a child process: ``probe_model`` (load and invoke once)
and ``read_structure_isolated`` (read only), so that a runtime that crashes on a corrupt model
(a segfault in older runtimes) or hangs reports a one-line ModelError instead of taking the
caller with it. The child is a fresh interpreter that imports this lpirc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lpirc.errors import DelegateError, ModelError
from lpirc.runtime import ModelInfo, _check_file, _one_line, load_runtime, open_model, predict


def _probe_child(path: str, delegate: str, runtime_name: str | None, output=None,
                 input_size=None) -> dict:
    rt = load_runtime(runtime_name)
    m = open_model(path, threads=1, delegate=delegate, runtime=rt, output=output,
                   input_size=tuple(input_size) if input_size else None)
    t = m.info.input
    x = np.zeros((m.batch,) + tuple(t.shape[1:]), dtype=np.dtype(t.dtype))
    predict(m, x)
    return {"ok": True, "info": m.info.to_json(), "runtime": rt.to_json(),
            "delegate": m.delegate_json(), "invoke_s": m.last_invoke_s}


def probe_model(path, timeout_s: float = 120.0, delegate: str = "cpu",
                runtime_name: str | None = None, output=None, input_size=None) -> ModelInfo:
    """Load and invoke the model once in a child process; ModelInfo, or ModelError/DelegateError.

    ``output`` and ``input_size`` as for :func:`open_model`.

    A runtime crash (segfault on a corrupt model in older runtimes) becomes
    ``ModelError("X: the runtime crashed loading it (signal 11)")``.
    """
    p, _ = _check_file(path)  # cheap, in-process: missing / empty / not a flatbuffer
    args = json.dumps({"path": str(p), "delegate": delegate, "runtime": runtime_name,
                       "output": output, "input_size": list(input_size) if input_size else None})
    try:
        proc = _in_child(_PROBE_SNIPPET, args, timeout_s)
    except subprocess.TimeoutExpired:
        raise ModelError(f"{p.name}: the runtime did not finish loading and invoking it "
                         f"within {timeout_s:g} s") from None
    if proc.returncode < 0:
        raise ModelError(f"{p.name}: the runtime crashed loading it (signal {-proc.returncode})")
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        tail = _one_line(proc.stderr.strip().splitlines()[-1]) if proc.stderr.strip() else ""
        raise ModelError(f"{p.name}: the runtime exited with status {proc.returncode} loading it"
                         + (f" ({tail})" if tail else ""))
    res = json.loads(line)
    if not res.get("ok"):
        cls = DelegateError if res.get("kind") == "DelegateError" else ModelError
        raise cls(res.get("error") or f"{p.name}: failed to load")
    return ModelInfo.from_json(res["info"])


def _in_child(code: str, arg: str, timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``code`` (Python) with ``arg`` in a fresh interpreter that imports this lpirc: what a
    model that may crash the runtime is loaded in. Raises subprocess.TimeoutExpired."""
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.run([sys.executable, "-c", code, arg], env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def read_structure_isolated(path, timeout_s: float = 120.0) -> ModelInfo:
    """ModelInfo of a model read (not invoked) in a child process: for a model that just failed
    to load, which may be one that crashes the runtime and must not take the caller with it.

    Raises:
      ModelError: the runtime cannot read it (or crashed, or took over ``timeout_s``).
    """
    name = Path(path).name
    try:
        proc = _in_child(_STRUCTURE_SNIPPET, str(path), timeout_s)
    except subprocess.TimeoutExpired:
        raise ModelError(f"{name}: reading its structure timed out") from None
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise ModelError(f"{name}: the runtime cannot read its structure")
    res = json.loads(line)
    if "info" not in res:
        raise ModelError(res.get("error") or f"{name}: cannot read its structure")
    return ModelInfo.from_json(res["info"])


_STRUCTURE_SNIPPET = r"""
import json, sys
from lpirc.errors import LpircError
from lpirc.runtime import model_info
try:
    print(json.dumps({"info": model_info(sys.argv[1]).to_json()}))
except LpircError as e:
    print(json.dumps({"error": str(e)}))
"""

_PROBE_SNIPPET = r"""
import json, sys
a = json.loads(sys.argv[1])
try:
    from lpirc.errors import LpircError
    from lpirc.probe import _probe_child
    try:
        r = _probe_child(a["path"], a["delegate"], a["runtime"], a["output"], a["input_size"])
    except LpircError as e:
        r = {"ok": False, "kind": type(e).__name__, "error": str(e)}
except Exception as e:
    r = {"ok": False, "kind": "ModelError", "error": a["path"].rsplit("/", 1)[-1] + ": " + " ".join(str(e).split())}
sys.stdout.write("\n" + json.dumps(r) + "\n")
sys.stdout.flush()
"""

__all__ = ["probe_model", "read_structure_isolated"]
