"""``lpirc online``: the online track as a service. Teams upload a submission over HTTP, the
organiser's devices run it with ``lpirc run``, the service scores it with the ground truth it
keeps, and the standings publish themselves.

Modules:

- :mod:`~lpirc.online.config`: what ``lpirc online serve`` is started with (phases, quotas,
  limits), defaults in one place.
- :mod:`~lpirc.online.store`: the SQLite (WAL) database, the only state the service keeps:
  accounts, submissions and every state transition.
- :mod:`~lpirc.online.checks`: the upload checks (``lpirc submission check``'s fast checks).
- :mod:`~lpirc.online.executor`: the device pool the scheduler runs jobs on (start, submit,
  wait, kill): a local pool of ``lpirc run`` processes, or Ray devices (the fleet).
- :mod:`~lpirc.online.scheduler`: takes queued submissions to free devices, scores what they
  send back, records every transition before it is reported.
- :mod:`~lpirc.online.standings`: the counted submission per team, places, ties within the
  holdout's sampling error, side prizes, exports.
- :mod:`~lpirc.online.service`: the rules (quota, phases, who may see what) without HTTP.
- :mod:`~lpirc.online.app` and :mod:`~lpirc.online.routes`: the Starlette application.

The web stack is the ``online`` extra: ``pip install '.[online]' in lpirc's checkout``.
"""

from __future__ import annotations

import importlib

from lpirc.errors import LpircError

WEB_MODULES = ("starlette", "uvicorn", "itsdangerous", "python_multipart", "jinja2")


def require_extra(*modules: str) -> None:
    """Raise LpircError (exit 1, one line) when a module of the ``online`` extra is missing."""
    for name in modules or WEB_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise LpircError(f"{name} is not installed: lpirc online needs the online extra "
                             "(pip install '.[online]' in lpirc's checkout)") from None
