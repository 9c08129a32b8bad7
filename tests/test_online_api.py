"""``lpirc online``'s HTTP interface beyond the upload-to-score path: the login limits, the
``scoring`` state, the standings' ``?rank=``. A real ``lpirc online serve`` on 127.0.0.1;
other loopback addresses (127.0.0.2, 127.0.0.3) play other clients."""

from __future__ import annotations

import time

import httpx
import pytest

from online_helpers import Online, Team, add_team


def client(url: str, address: str) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (a loopback address)."""
    return httpx.Client(base_url=url, timeout=60,
                        transport=httpx.HTTPTransport(local_address=address))


@pytest.mark.slow
def test_failed_logins_limited_429_with_retry_after(small_holdout, tmp_path):
    """Past --login-client-burst failed logins, a client gets 429 with Retry-After and one line
    (JSON from the API, the login page from /login), even with a right password it never
    used; another client address still logs in; a name and password that logged in before
    still do; the service logs the refusal once."""
    db = tmp_path / "online.sqlite"
    add_team(db, "alpha", "pw-alpha")
    add_team(db, "beta", "pw-beta")
    with Online(small_holdout, db, "--login-client-burst", "2", "--login-client-every-s", "60",
                "--login-account-burst", "50") as server:
        alpha = Team(server.url, "alpha", "pw-alpha")  # from 127.0.0.1, before any failure
        flood = client(server.url, "127.0.0.2")
        wrong = [flood.post("/api/login", data={"username": "alpha", "password": f"x{i}"})
                 for i in range(2)]
        assert [r.status_code for r in wrong] == [401, 401], [r.text for r in wrong]
        t0 = time.monotonic()
        r = flood.post("/api/login", data={"username": "beta", "password": "pw-beta"})
        held_s = time.monotonic() - t0
        assert r.status_code == 429, r.text
        body = r.json()
        assert "Too many failed logins from 127.0.0.2" in body["detail"], body
        assert "\n" not in body["detail"] and set(body) == {"detail", "retry_after_s"}, body
        assert 30 <= body["retry_after_s"] <= 60, body  # one failure more per 60 s
        assert int(r.headers["Retry-After"]) == body["retry_after_s"], r.headers
        assert held_s >= 1.5, held_s  # held ~2 s before it is sent (a flood asks less often)
        page = flood.post("/login", data={"username": "beta", "password": "pw-beta"})
        assert page.status_code == 429 and "Retry-After" in page.headers, page.text
        assert "text/html" in page.headers["content-type"]
        assert "Too many failed logins from 127.0.0.2" in page.text
        assert "Traceback" not in page.text and "lpirc_online" not in page.headers.get("set-cookie", "")
        ok = flood.post("/api/login", data={"username": "alpha", "password": "pw-alpha"})
        assert ok.status_code == 200, ok.text  # logged in before: recognised, not limited
        other = client(server.url, "127.0.0.3")
        r = other.post("/api/login", data={"username": "beta", "password": "pw-beta"})
        assert r.status_code == 200 and r.json()["token"], r.text
        assert alpha.http.get("/api/me").json() == {"team": "alpha", "role": "team"}
        flood.close()
        other.close()
        alpha.close()
    refused = [ln for ln in server.lines if "login: client 127.0.0.2 over its failed-login rate" in ln]
    assert len(refused) == 1 and refused[0].startswith("lpirc online: "), server.lines
