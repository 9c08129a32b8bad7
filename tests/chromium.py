"""A real headless Chromium driven over the DevTools protocol (websockets), for the tests of the
HTML pages: what the page requested, what it logged as errors, what it drew, a screenshot and a
print to PDF. The system's Chromium (Debian package) only; nothing is downloaded. The DevTools
endpoint listens on 127.0.0.1 only, on a port the browser picks."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         "--window-size=1200,900", "--hide-scrollbars")


def find_chromium() -> str | None:
    for c in CHROMIUM_CANDIDATES:
        if Path(c).is_file():
            return c
    return shutil.which("chromium")


@dataclass
class PageVisit:
    """What one page load did."""

    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors
    probe: dict = field(default_factory=dict)  # the result of the page's JS probe
    print_probe: dict = field(default_factory=dict)  # PRINT_JS's result under print media
    screenshot: bytes = b""  # PNG of the whole page
    pdf: bytes = b""  # the page printed (print media)


class Chromium:
    """One browser process; ``visit(path, probe_js)`` loads a file and reports on it."""

    def __init__(self, binary: str, timeout_s: float = 30.0) -> None:
        self.profile = tempfile.mkdtemp(prefix="lpirc-chromium-")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self._id = 0

    def _page_ws(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            targets = json.load(r)
        return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def visit(self, path: Path | str, probe_js: str, timeout_s: float = 30.0,
              cookies: list[dict] | None = None, await_promise: bool = False) -> PageVisit:
        """Load a file (a Path) or an http:// URL (a str), run ``probe_js``, and report.
        ``cookies``: set first (DevTools ``Network.setCookie`` parameters: name, value, url);
        ``await_promise``: ``probe_js`` gives a Promise, whose value is the probe's."""
        from websockets.sync.client import connect

        out = PageVisit()
        url = path if isinstance(path, str) else Path(path).resolve().as_uri()
        with connect(self._page_ws(), max_size=64 << 20, open_timeout=10) as ws:
            self.ws, self.out = ws, out
            for m in ("Page.enable", "Network.enable", "Runtime.enable", "Log.enable"):
                self._call(m)
            for c in cookies or ():
                self._call("Network.setCookie", c)
            self._call("Page.navigate", {"url": url})
            self._wait_event("Page.loadEventFired", timeout_s)
            time.sleep(0.3)
            self._drain()
            res = self._call("Runtime.evaluate", {"expression": probe_js, "returnByValue": True,
                                                  "awaitPromise": await_promise},
                             timeout_s=timeout_s)
            out.probe = res["result"].get("value") or {}
            shot = self._call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
            out.screenshot = base64.b64decode(shot["data"])
            pdf = self._call("Page.printToPDF", {"printBackground": False})
            out.pdf = base64.b64decode(pdf["data"])
            self._call("Emulation.setEmulatedMedia", {"media": "print"})
            self._call("Emulation.setDeviceMetricsOverride", {"width": A4_PRINTABLE_PX, "height": 1000,
                                                               "deviceScaleFactor": 1, "mobile": False})
            res = self._call("Runtime.evaluate", {"expression": PRINT_JS, "returnByValue": True})
            self._call("Emulation.clearDeviceMetricsOverride")
            out.print_probe = res["result"].get("value") or {}
            self._drain()
        out.requests = [u for u in out.requests if u != url]
        return out

    # -- protocol --------------------------------------------------------------------------
    def _call(self, method: str, params: dict | None = None, timeout_s: float = 30.0) -> dict:
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def _wait_event(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._recv(deadline).get("method") != name:
            pass

    def _drain(self) -> None:
        try:
            while True:
                self._recv(time.monotonic() + 0.2)
        except TimeoutError:
            pass

    def _recv(self, deadline: float) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("chromium: no answer in time")
        msg = json.loads(self.ws.recv(timeout=left))
        self._note(msg)
        return msg

    def _note(self, msg: dict) -> None:
        m, p = msg.get("method"), msg.get("params") or {}
        if m == "Network.requestWillBeSent":
            self.out.requests.append(p["request"]["url"])
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.out.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            self.out.errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.out.errors.append("log: " + p["entry"].get("text", ""))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


# Run in the page: every figure, whether it holds a drawn SVG, its size and how much it draws.
PROBE_JS = """(() => {
  const box = e => e.getBoundingClientRect();
  const meet = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1 &&
                         Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  // pairs of a figure's words drawn over each other (tick labels, names, notes)
  const overlaps = ts => { const out = [];
    for (let i = 0; i < ts.length; i++) for (let j = i + 1; j < ts.length; j++)
      if (meet(box(ts[i]), box(ts[j]))) out.push([ts[i].textContent, ts[j].textContent]);
    return out; };
  // data markers (matplotlib's <use> in a line2d group) under a legend
  const covered = svg => { const out = [];
    for (const lg of svg.querySelectorAll('g[id^="legend"]')) {
      const b = box(lg);
      for (const u of svg.querySelectorAll('g[id^="line2d"] use'))
        if (!lg.contains(u) && meet(b, box(u))) out.push(lg.id);
    }
    return out; };
  const figs = [...document.querySelectorAll('figure.plot')].map(f => {
    const svg = f.querySelector('svg');
    const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const sec = f.closest('section');
    return {id: f.dataset.plot, section: sec && sec.dataset.run ? sec.dataset.run : 'compare', svg: !!svg, width: r.width, height: r.height,
            shapes: svg ? svg.querySelectorAll('path, use, rect, line, polyline').length : 0,
            missing: f.querySelector('.missing') ? f.querySelector('.missing').textContent : null,
            clipped: svg ? [...svg.querySelectorAll('text')].filter(t => {
              const b = t.getBoundingClientRect();
              return b.width > 0 && (b.left < r.left - 1 || b.right > r.right + 1 || b.top < r.top - 1 || b.bottom > r.bottom + 1);
            }).map(t => t.textContent) : [],
            texts: svg ? [...svg.querySelectorAll('text')].map(t => t.textContent) : [],
            overlaps: svg ? overlaps([...svg.querySelectorAll('text')].filter(t => t.textContent.trim())) : [],
            covered: svg ? covered(svg) : []};
  });
  return {figures: figs, title: document.title,
          external: document.querySelectorAll('script, link, iframe, img, object, embed').length,
          runs: [...document.querySelectorAll('section.run')].map(s => s.dataset.run),
          tables: document.querySelectorAll('table').length,
          text: document.body.innerText};
})()"""


# A4 less the pages' 14 mm margins (@page in page.css), in CSS px: 182 mm x 96 / 25.4
A4_PRINTABLE_PX = 688

# Run in the page under print media, A4_PRINTABLE_PX wide: what a printed copy shows of the
# folded manifest, and the tables that would run past the paper's edge (a page cannot scroll).
PRINT_JS = """(() => {
  const pre = document.querySelector('details pre'), sum = document.querySelector('details summary');
  const page = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll('table')].filter(t => t.getBoundingClientRect().right > page + 1)
    .map(t => (t.className || 'table') + ' ' + Math.round(t.getBoundingClientRect().right) + ' px > ' + page);
  return {folded_shown: pre ? pre.checkVisibility() : null, toggle_shown: sum ? sum.checkVisibility() : null,
          too_wide: wide};
})()"""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
