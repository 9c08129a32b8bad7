"""The LPIRC referee: the server organisers run on the day (``lpirc referee serve``) and the
client a team's device runs against it (``lpirc run --referee URL``).

Modules: :mod:`~lpirc.referee.protocol` (the calls, their fields and replies),
:mod:`~lpirc.referee.store` (SQLite), :mod:`~lpirc.referee.core` (sessions, clock, scoring),
:mod:`~lpirc.referee.server` (Starlette on uvicorn), :mod:`~lpirc.referee.results` (standings,
exports), :mod:`~lpirc.referee.client` (httpx); its commands are in :mod:`lpirc.cli.referee`.
The web stack is the ``referee`` extra: ``pip install '.[referee]' in lpirc's checkout``.
"""

from __future__ import annotations

import importlib

from lpirc.errors import LpircError


def require_extra(*modules: str) -> None:
    """Raise LpircError (exit 1, one line) when a module of the ``referee`` extra is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise LpircError(f"{name} is not installed: the referee needs the referee extra "
                             "(pip install '.[referee]' in lpirc's checkout)") from None
