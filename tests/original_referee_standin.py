"""A stand-in for the original LPIRC referee (Purdue's referee.py, 2015-2017), which is not
here: the calls and replies ``lpirc run --referee`` relies on, as that referee made them, run as
its own process on 127.0.0.1 (``python original_referee_standin.py HOLDOUT MODE``; it prints
its URL). Not lpirc's referee: no ``/help`` numbering, no ``/status``, ``/energy`` or
``/answered`` (404), and ``/result`` requires the bounding-box fields (the original's detection
years stored them with every answer; a post without them is refused).

MODE: ``boxes`` (answers with boxes stored, 200), ``refuse`` (every /result refused, 406),
``html`` (every /result answered by a proxy's HTML 502 page). Each /result's fields are
appended as one JSON line to HOLDOUT/../posts.jsonl, for the test to read.
"""

from __future__ import annotations

import io
import json
import secrets
import sys
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

ROOT = Path(sys.argv[1])
MODE = sys.argv[2]
FILES = sorted(p.name for p in ROOT.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
TOKEN = secrets.token_hex(8)
LOG = ROOT.parent / "posts.jsonl"
BOX = ("xmin", "ymin", "xmax", "ymax")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", 0))
        f = parse_qs(self.rfile.read(n).decode(), keep_blank_values=True)
        path = self.path.split("?")[0]
        if path == "/login":
            return self.reply(200, TOKEN.encode())
        if f.get("token", [""])[0] != TOKEN:
            return self.reply(401, b"Invalid Token")
        if path == "/no_of_images":
            return self.reply(200, str(len(FILES)).encode())
        if path == "/zipimages":
            first = int(f["image_name"][0])
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for k in range(first, min(first + 100, len(FILES) + 1)):
                    z.writestr(f"{k}.jpg", (ROOT / FILES[k - 1]).read_bytes())
            return self.reply(200, buf.getvalue(), "application/zip")
        if path == "/result":
            with open(LOG, "a") as log:
                log.write(json.dumps(f) + "\n")
            if MODE == "html":
                return self.reply(502, b"<html><head><title>502 Bad Gateway</title></head><body>"
                                       b"<center><h1>502 Bad Gateway</h1></center><hr>"
                                       b"<center>nginx</center></body></html>", "text/html")
            if MODE == "refuse" or any(len(f.get(b, [])) != len(f["image_name"]) for b in BOX):
                return self.reply(406, b"Missing result field")
            return self.reply(200, b"Result stored in the server database")
        if path == "/logout":
            return self.reply(200, b"Logout success")
        return self.reply(404, b"Not Found")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
