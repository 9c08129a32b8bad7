"""The one error type the service's rules raise for a request they refuse; the application's
exception handler (lpirc.online.app) turns it into its HTTP status and a JSON body
``{"detail": one line, ...extra}``. No traceback ever reaches a client."""

from __future__ import annotations


class ApiError(Exception):
    """A refused request: ``status`` (HTTP), ``detail`` (one line), ``extra`` (more JSON
    fields), ``headers`` (e.g. Retry-After)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None,
                 **extra) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers or {}, extra

    def to_json(self) -> dict:
        return {"detail": self.detail, **self.extra}
