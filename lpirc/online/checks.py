"""The upload checks: what the service looks at before a submission may take a device.

Two stages, neither uses a device nor counts against a quota:

1. :func:`quick_refusal`, in the request, on the bytes: empty, not a TFLite flatbuffer (the
   file identifier ``TFL3`` at byte 4, lpirc.runtime's own test), a sidecar that is not a JSON
   object. Answered 422 at once.
2. :func:`check_refusal`, still before the 202: ``lpirc submission check``'s checks without a
   holdout (load and invoke once in a child process, input, output, ops, sidecar, one invoke on
   a generated picture; about 0.7 s for the bundled model on this machine, measured). A failed
   check is answered 422 with its one line, and the upload is recorded as ``failed`` at upload
   (so the organiser sees it among the failures by class), never charged.

Classes (:data:`lpirc.online.config.FAILURE_CLASSES`): ``format`` for a file that is not a
model ``lpirc run`` can feed (not a flatbuffer, input not one [1, H, W, 3] image, output not
1000 or 1001 classes, a sidecar lpirc run refuses); ``model`` for a model that is one but does
not load or invoke (an unresolved op, an error on invoke).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from submission.check import FAIL, check_submission

FLATBUFFER_ID = b"TFL3"  # lpirc.runtime's test: the identifier at bytes 4..8
#: the checks whose failure means the file is not a model lpirc run can feed; any other
#: failed check (load, ops, invoke) is the model's own failure
FORMAT_CHECKS = ("input", "output", "sidecar")


@dataclass(frozen=True)
class Refusal:
    """Why an upload is refused: its failure class and one line."""

    cls: str
    message: str

    def to_json(self) -> dict:
        return {"class": self.cls, "message": self.message}


def quick_refusal(model: bytes, sidecar: bytes | None, name: str = "model") -> Refusal | None:
    """The checks on the uploaded bytes alone (microseconds): None when they pass."""
    if not model:
        return Refusal("format", f"{name}: empty file (0 bytes)")
    if len(model) < 8 or model[4:8] != FLATBUFFER_ID:
        return Refusal("format", f"{name}: not a TFLite model (no TFL3 flatbuffer identifier "
                                 "at byte 4: truncated, or another format)")
    if sidecar is not None:
        try:
            obj = json.loads(sidecar)
        except (UnicodeDecodeError, ValueError) as e:
            return Refusal("format", f"sidecar: not JSON ({e})")
        if not isinstance(obj, dict):
            return Refusal("format", "sidecar: expected a JSON object, as lpirc submission "
                                     "build writes it")
    return None


def check_refusal(model: Path, timeout_s: float = 60.0) -> Refusal | None:
    """``lpirc submission check``'s checks (no holdout) on a model saved with its sidecar
    beside it (``X.json``): None when no check failed, else the first failed check's class and
    line, with the service's folder taken out of it (the team sees ``model.tflite: ...``)."""
    report = check_submission(model, delegate="cpu", timeout_s=timeout_s)
    failed = [r for r in report.results if r.status == FAIL]
    if not failed:
        return None
    first = failed[0]
    message = first.message.replace(str(model.parent) + "/", "")
    if first.name == "load" and "not a TFLite model" in message:
        return Refusal("format", message)
    cls = "format" if first.name in FORMAT_CHECKS else "model"
    return Refusal(cls, f"{first.name} check: {message}")
