"""HTML rendering of the service's pages: Jinja2 templates in ``lpirc/online/templates``, the
stylesheet shared with lpirc's report and standings pages (``lpirc/templates/page.css``),
autoescaped, no external resource; a Content-Security-Policy that allows only this page's own
script (by nonce) and requests to the service itself."""

from __future__ import annotations

import functools

from starlette.responses import HTMLResponse

from lpirc import __version__


@functools.lru_cache(maxsize=1)
def _env():
    import jinja2

    loader = jinja2.ChoiceLoader([jinja2.PackageLoader("lpirc.online", "templates"),
                                  jinja2.PackageLoader("lpirc", "templates")])
    env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"
    env.filters["num"] = lambda v: "n/a" if v is None else f"{v:.4g}"
    return env


def render(template: str, status: int = 200, nonce: str | None = None,
           headers: dict[str, str] | None = None, **ctx) -> HTMLResponse:
    script = f"'nonce-{nonce}'" if nonce else "'none'"
    csp = (f"default-src 'none'; style-src 'unsafe-inline'; script-src {script}; "
           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    html = _env().get_template(template).render(version=__version__, nonce=nonce, **ctx)
    return HTMLResponse(html, status_code=status,
                        headers={**(headers or {}), "Content-Security-Policy": csp})
