"""The run's files: ``results.jsonl`` (one answer per line, flushed as answers arrive),
``manifest.json`` and ``score.json``. Only the parent process writes them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from lpirc.errors import InputError

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"
SCORE = "score.json"


class ResultLog:
    """Append-only JSON-lines writer. Each ``write`` ends with a flush, so a crash or Ctrl-C
    leaves every line already written intact (at worst a truncated last line, which the
    scorer reports and skips)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")
        self.lines = 0

    #: one encoder for every line (json.dumps with separators builds a new one per call)
    _encode = json.JSONEncoder(separators=(",", ":")).encode

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        enc = self._encode
        out = "".join(enc(r) + "\n" for r in records)
        if out:
            self._f.write(out)
            self._f.flush()
            self.lines += out.count("\n")

    def close(self) -> None:
        self._f.close()


def read_json(path: Path, what: str) -> Any:
    """A JSON file lpirc reads back (a tuned config, an idle baseline, ...): its content, or
    InputError naming the file: ``<path>: <what> not found`` or ``<path>: not a readable
    <what> (<reason>)``."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable {what} ({e})") from None


def write_json(path: Path, obj: Any) -> None:
    """Write atomically (temp file + rename): a reader never sees half a manifest."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def new_run_dir(model: Path, prefix: str = "", base: Path = Path("runs")) -> Path:
    """``runs/<prefix><UTC time>-<model stem>/``, not yet existing (a suffix for two in the
    same second)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    out = base / f"{prefix}{stamp}-{Path(model).stem}"
    n = 1
    while out.exists():
        n += 1
        out = base / f"{prefix}{stamp}-{Path(model).stem}-{n}"
    return out


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read 1 MiB at a time: the model digest every manifest,
    fleet job and standings row records."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
