"""The LPIRC referee protocol: form fields in, typed values out, one-line reasons for refusals.

Every call is an HTTP request whose fields are URL-encoded (``application/x-www-form-urlencoded``
body, as the original clients send with pycurl's ``POSTFIELDS``, or the query string, or both);
a field may repeat (``image_name=1&image_name=2``). Bodies of replies are plain text. The
messages of the original referee (Purdue HELPS, 2015-2017) are kept word for word where a
client might compare them ("Invalid Token", "Invalid username or password", ...).

Nothing here touches the network or the database: :func:`parse_answers` and
:func:`parse_power` turn fields into :class:`~lpirc.referee.store.Answer` and
:class:`~lpirc.referee.store.PowerReading` lists, or raise :class:`ProtocolError` carrying the
HTTP status and the reason, in which case the request stores nothing.
"""

from __future__ import annotations

import math
import re
from urllib.parse import parse_qsl

from lpirc.referee.store import Answer, PowerReading

# Replies of the original referee, kept word for word.
MISSING_LOGIN = "Missing username or password"
BAD_LOGIN = "Invalid username or password"
INVALID_TOKEN = "Invalid Token"
VALID_TOKEN = "Valid Token"
LOGOUT_OK = "Logout success"
RESULT_STORED = "Result stored in the server database"
POWER_STORED = "Readings stored in the server database"
TIME_UP = ("Time limit reached: the session is closed and nothing more is stored; only results "
           "already transmitted will be counted")

ZIP_SIZE = 100  # images per /zipimages reply (the original's)
#: A device's own energy figure is taken up to this long after its session ended at the time
#: limit: the figure is made when the run stops, which is at the limit. Answers are not.
ENERGY_GRACE_S = 30.0
MAX_FIELDS = 200_000  # fields in one request; the body-size limit comes first in practice
_DIGITS = re.compile(r"[0-9]{1,9}")
_IMAGE_NAME = re.compile(r"([0-9]{1,9})(?:\.jpe?g)?", re.IGNORECASE)
_CLASS = re.compile(r"[-+]?[0-9]{1,6}")
NUM_CLASSES = 1000


class ProtocolError(Exception):
    """A refused request: ``status`` (401, 403, 406, 413, ...) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Fields = dict[str, list[str]]


def parse_fields(body: bytes, query: str = "") -> Fields:
    """Fields of a request: the query string's, then the URL-encoded body's (repeats kept in
    order). Raises ProtocolError 406 for a body that is not URL-encoded UTF-8 text."""
    out: Fields = {}
    for part, what in ((query, "query string"), (body, "request body")):
        if not part:
            continue
        try:
            text = part.decode("utf-8") if isinstance(part, bytes) else part
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=MAX_FIELDS, errors="strict")
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(406, f"{what} is not URL-encoded UTF-8 form fields "
                                     f"({' '.join(str(e).split())[:80]})") from None
        for k, v in pairs:
            out.setdefault(k, []).append(v)
    return out


def one(fields: Fields, name: str, status: int = 406, missing: str | None = None) -> str:
    """The single value of a field; ProtocolError(status) when absent."""
    vals = fields.get(name)
    if not vals:
        raise ProtocolError(status, missing or f"Missing field {name}")
    return vals[0]


def image_index(value: str, count: int, *, zip_start: bool = False, suffix: bool = False) -> int:
    """A 1-based image number k in 1..count (``zip_start``: also 1 + a multiple of 100).
    ``suffix`` accepts ``k.jpg`` too. Anything else (a path, a sign, a space, ``..``, a number
    out of range) is ProtocolError 406."""
    m = (_IMAGE_NAME if suffix else _DIGITS).fullmatch(value)
    if not m:
        raise ProtocolError(406, f"Invalid Image index {value[:40]!r}: expected a number "
                                 f"1..{count}")
    k = int(m.group(1) if suffix else m.group(0))
    if not 1 <= k <= count:
        raise ProtocolError(406, f"Image index out of range: {k} (the holdout has {count} "
                                 "images, numbered from 1)")
    if zip_start and (k - 1) % ZIP_SIZE:
        raise ProtocolError(406, f"Invalid zip index {k}: expected 1 + a multiple of "
                                 f"{ZIP_SIZE} (1, 101, 201, ...)")
    return k


def class_index(value: str, base: int, synset_index) -> int:
    """A posted CLASS_ID as lpirc's class index 0..999, or -1 for background (never correct).

    base 0: ``0..999`` (the position in the sorted ILSVRC-2012 synsets, as lpirc numbers them),
    ``-1`` background. base 1: ``1..1000`` (the same classes + 1, the index in a 1001-class
    model's output), ``0`` background. A synset ID (``n01440764``) is accepted under either.
    Raises ProtocolError 406 for anything else."""
    v = value.strip()
    if v.startswith("n") and len(v) == 9:
        try:
            return synset_index(v)
        except Exception:
            raise ProtocolError(406, f"CLASS_ID {v!r} is not an ILSVRC-2012 synset") from None
    if not _CLASS.fullmatch(v):
        raise ProtocolError(406, f"CLASS_ID {v[:40]!r} is not a class number")
    k = int(v) - base
    if not -1 <= k < NUM_CLASSES:
        lo, hi = (-1, 999) if base == 0 else (0, 1000)
        raise ProtocolError(406, f"CLASS_ID {v} out of range {lo}..{hi} (this referee numbers "
                                 f"classes from {base}; see /help)")
    return k


def number(name: str, value: str, *, min_value: float | None = None) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ProtocolError(406, f"{name} {value[:40]!r} is not a number") from None
    if not math.isfinite(x) or (min_value is not None and x < min_value):
        raise ProtocolError(406, f"{name} {value[:40]!r} must be a finite number"
                                 + (f" >= {min_value:g}" if min_value is not None else ""))
    return x


_BOX = ("xmin", "ymin", "xmax", "ymax")


def parse_answers(fields: Fields, count: int, base: int, synset_index) -> list[Answer]:
    """Answers of a /result request: repeated ``image_name``, ``CLASS_ID``, ``confidence`` (and,
    for detection years, ``xmin``, ``ymin``, ``xmax``, ``ymax``), one set per answer.

    Raises ProtocolError 406 when there is no answer, the lists differ in length, or any value
    is malformed; then nothing of the request is stored."""
    names = fields.get("image_name", [])
    classes = fields.get("CLASS_ID", [])
    confs = fields.get("confidence", [])
    if not names:
        raise ProtocolError(406, "Missing result field: no image_name (zero answers)")
    boxes = [fields.get(b, []) for b in _BOX]
    with_box = any(boxes)
    lengths = {"image_name": len(names), "CLASS_ID": len(classes), "confidence": len(confs)}
    if with_box:
        lengths.update({b: len(v) for b, v in zip(_BOX, boxes)})
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise ProtocolError(406, f"Result field length mismatch ({shown})")
    out = []
    for i, name in enumerate(names):
        box = None
        if with_box:
            box = tuple(number(b, boxes[j][i]) for j, b in enumerate(_BOX))
        out.append(Answer(image_no=image_index(name, count, suffix=True),
                          class_id=class_index(classes[i], base, synset_index),
                          class_given=classes[i].strip()[:16],
                          confidence=number("confidence", confs[i]), box=box))
    return out


def ranges(numbers: list[int]) -> str:
    """Ascending numbers as ``1-100,105,110-112`` (the ``/answered`` reply's second line)."""
    out, start, prev = [], None, None
    for k in numbers:
        if start is None:
            start = prev = k
        elif k == prev + 1:
            prev = k
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = k
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(out)


_POWER_FIELDS = ("voltage", "current", "energy", "elapsed", "timestamp")


def parse_power(fields: Fields, now: float) -> tuple[str, list[PowerReading]]:
    """(team, readings) of a /powermeter request: repeated ``power`` (W) and, optionally,
    ``voltage`` (V), ``current`` (A), ``energy`` (Wh), ``elapsed`` (s, the meter's integration
    time) and ``timestamp`` (unix s), one set per reading; ``player`` names the team (once, or
    once per reading, always the same).

    A reading's time is its ``timestamp``; else, when ``elapsed`` is given, ``now`` minus how
    much earlier than the last reading it was taken; else ``now``. Raises ProtocolError 406."""
    players = set(fields.get("player", []))
    if len(players) != 1:
        raise ProtocolError(406, "Missing powermeter field: expected one player (the team name)"
                            if not players else "Power readings name more than one player")
    watts = fields.get("power", [])
    if not watts:
        raise ProtocolError(406, "Missing powermeter field: power")
    cols = {k: fields.get(k, []) for k in _POWER_FIELDS}
    for k, v in cols.items():
        if v and len(v) != len(watts):
            raise ProtocolError(406, f"Power readings field length mismatch (power {len(watts)}, "
                                     f"{k} {len(v)})")
    vals = {k: [number(k, x) for x in v] for k, v in cols.items() if v}
    p = [number("power", x, min_value=0) for x in watts]
    if "timestamp" in vals:
        times = vals["timestamp"]
    elif "elapsed" in vals:
        last = vals["elapsed"][-1]
        times = [now - (last - e) for e in vals["elapsed"]]
    else:
        times = [now] * len(p)
    readings = [PowerReading(t=times[i], power=p[i], **{k: vals[k][i] for k in
                                                        ("voltage", "current", "energy", "elapsed")
                                                        if k in vals})
                for i in range(len(p))]
    return players.pop(), readings


HELP = """LPIRC referee (lpirc {version}): the calls it serves.
Fields are URL-encoded form fields (POST body, or query string); a field may repeat.
Images are numbered 1..N in an order of your own; CLASS_ID numbering: {numbering}.

  /login, /get_token  username, password       -> 200 the token (starts your session clock)
  /verify             token                    -> 200 "Valid Token", 401 "Invalid Token"
  /no_of_images       token                    -> 200 N
  /image              token, image_name=k      -> 200 the JPEG (k.jpg), 406 bad or out of range
  /zipimages          token, image_name=1,101,201,...
                                               -> 200 a zip of up to 100 images k.jpg
  /result             token, image_name=k, CLASS_ID=c, confidence=p (repeated, one set per
                      answer; optional xmin, ymin, xmax, ymax) -> 200, 406 malformed (nothing
                      stored); an image's first answer counts, later ones are counted as
                      duplicates
  /energy             token, energy_wh, method -> 200 (your own energy figure: self-reported;
                      taken up to {energy_grace_s:g} s after your time limit, answers are not)
  /status             token                    -> 200 your session: answers, time left
  /answered           token                    -> 200 how many images you have answered, then
                                                  their numbers as ranges (1-100,105)
  /logout             token                    -> 200 "Logout success" (ends the session)
  /powermeter         meter token, player, power (W) [voltage, current, energy, elapsed,
                      timestamp] (repeated)    -> 200 (the meter account only)
  /, /leaderboard                              -> the standings (HTML)
  /help                                        -> this text

Status codes: 200 ok; 401 missing/invalid/expired token, bad login, time limit reached;
403 no attempts left, or a call for the other kind of account; 404 unknown call; 405 a
method other than GET/POST; 406 a malformed field; 408 a request not sent in time;
411 multipart without Content-Length; 413 request body over the limit; 429 too many failed
logins (wait the Retry-After seconds); 503 the database failed (nothing stored: retry).
"""
