"""``lpirc meter post``: the meter's side of the LPIRC referee. Log in with the meter account,
sample the meter, post its readings to ``/powermeter`` for one team, once a second.

Each post carries, per reading, ``power`` (W), ``voltage`` (V), ``current`` (A), ``energy``
(the meter's integrator, Wh) and ``timestamp`` (unix s, this host's clock, the reading's time
as the driver places it); ``player`` names the team. Calls are retried as ``lpirc run
--referee`` retries them (lpirc.referee.client.RefereeClient: backoff, a new login after a
referee restart). A meter fault is a line on ``echo`` and the readings resume when it is back;
the referee sees a gap, which it reports for the sessions it covers.
"""

from __future__ import annotations

import queue
import time
from typing import Callable

from lpirc.errors import MeterError
from lpirc.meters import Reading
from lpirc.meters.sampler import MeterConfig, Sampler
from lpirc.referee.client import RefereeClient, RefereeError  # httpx: the referee extra

BATCH_S = 1.0  # how often readings are posted


def _fields(team: str, batch: list[Reading]) -> dict[str, list[str] | str]:
    """The /powermeter form fields of a batch; an optional column only when every reading has
    it (the referee wants the lists of equal length)."""
    out: dict[str, list[str] | str] = {
        "player": team,
        "power": [f"{r.watts:.9g}" for r in batch],
        "timestamp": [f"{r.t:.3f}" for r in batch],
    }
    for name, attr in (("voltage", "volts"), ("current", "amps"), ("energy", "wh")):
        vals = [getattr(r, attr) for r in batch]
        if all(v is not None for v in vals):
            out[name] = [f"{v:.9g}" for v in vals]
    return out


def post_readings(cfg: MeterConfig, url: str, user: str, password: str, team: str,
                  seconds: float | None = None, echo: Callable[[str], None] = print) -> int:
    """Post the meter's readings for ``team`` until ``seconds`` passed (None: until Ctrl-C).
    Returns the readings the referee stored. MeterError when the meter cannot be opened;
    RefereeError when the referee refuses the meter account or the team."""
    client = RefereeClient(url, user, password)
    client.login()
    got: queue.Queue[Reading] = queue.Queue()
    sampler = Sampler(cfg, on_reading=got.put).start()
    if sampler.st.absent:
        sampler.stop()
        raise MeterError(sampler.st.absent)
    label = sampler.info.label() if sampler.info else cfg.spec
    echo(f"lpirc meter: posting {label} to {url} for {team} every {BATCH_S:g} s (Ctrl-C stops)")
    stored, events_seen = 0, 0
    end = None if seconds is None else time.monotonic() + seconds
    try:
        while end is None or time.monotonic() < end:
            time.sleep(BATCH_S if end is None else max(0.0, min(BATCH_S, end - time.monotonic())))
            for ev in sampler.st.events[events_seen:]:
                echo(f"lpirc meter: {ev}")
            events_seen = len(sampler.st.events)
            stored += _post(client, team, _drain(got))
    finally:
        sampler.stop()
        stored += _post(client, team, _drain(got))
    return stored


def _drain(q: "queue.Queue[Reading]") -> list[Reading]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def _post(client, team: str, batch: list[Reading]) -> int:
    """Post one batch; the number stored. RefereeError for a refusal (unknown team, not the
    meter account)."""
    if not batch:
        return 0
    r = client.authed("/powermeter", _fields(team, batch))
    if r.status != 200:
        raise RefereeError(f"{client.url}/powermeter: {r.status or 'no reply'} {r.text[:200]}")
    return len(batch)
