"""The application's routes, one module per resource: :mod:`.auth` (login), :mod:`.submissions`
(upload, state, log, report), :mod:`.standings` (JSON and the self-updating page),
:mod:`.admin` (the organiser's view, phases, publishing, exports), :mod:`.pages` (the HTML
pages of a team and of the organiser)."""

from __future__ import annotations

from lpirc.online.routes import admin, auth, pages, standings, submissions

ROUTES = [*auth.ROUTES, *submissions.ROUTES, *standings.ROUTES, *admin.ROUTES, *pages.ROUTES]
