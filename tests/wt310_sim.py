"""A simulated Yokogawa WT310 for the tests: a SCPI server on 127.0.0.1 (one line per message,
newline-terminated, as PyVISA's ``TCPIP::127.0.0.1::PORT::SOCKET`` speaks), answering the
commands lpirc uses the way IM WT310-17EN describes them: short and long mnemonics, the
optional ``[:NORMal]`` node, ``:STATus:ERRor?`` with ``113,"Undefined header"`` for unknown
commands, numeric data in ASCII ``<NR3>`` with ``NAN`` / ``INF`` error data.

The power follows a known pattern (``constant``, or ``square`` between ``watts`` and
``low_watts`` with ``period_s``); each reading is the mean power over the last complete update
interval, as the meter's display values are. The integrator (WH, TIME) integrates the same
pattern exactly.

Data updates (IM WT310-17EN §5.5, §7.4): the values change only at the end of each update
interval, on the meter's own clock: interval k ends at ``t0 + k x rate x (1 + update_skew)``
(``update_skew`` exaggerates the meter clock's drift against the host's, e.g. 0.05, so that a
reader polling on the host's clock repeats or misses updates within a short test). Each end
of an update is the fall of UPD; with ``:STATus:FILTer1 FALL`` it sets bit 0 of the extended
event register, which ``:STATus:EESR?`` reads and clears (as does ``*CLS``), and
``:COMMunicate:WAIT 1`` holds that connection's next commands until the bit is 1.
``served`` lists the update index k of every ``:NUMeric:NORMal:VALue?`` answer, so a test can
count the updates read twice or never. Faults, after ``fault_after_reads`` value queries: ``silent`` (reads commands,
never answers), ``disconnect`` (drops the connection and refuses new ones; back after
``down_s`` when given), ``errors`` (answers, and puts an error in the queue at every value
query), ``overrange`` (U, I and P answer ``INF``), ``nowait`` (``:COMMunicate:WAIT`` returns at
once, as through a bridge that does not pass it).

This is not a model of the real meter's timing or of its analogue front end, only of its
command language; nothing here has been compared with hardware.
"""

from __future__ import annotations

import math
import re
import socket
import sys
import threading
import time

RATES = {100: 0.1, 250: 0.25, 500: 0.5, 1000: 1.0, 2000: 2.0, 5000: 5.0}


def _mn(mnemonic: str):
    """(short, long) forms of ``NUMeric`` -> ("NUM", "NUMERIC")."""
    return "".join(c for c in mnemonic if c.isupper() or c.isdigit()), mnemonic.upper()


def _nr3(x: float) -> str:
    return f"{x:.4E}".replace("E+0", "E+0").replace("E-0", "E-0")


def listen(port: int, on_conn) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (0: any free port) whose connections are each
    served by ``on_conn(conn)`` on a daemon thread of their own."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(4)

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=on_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv


def close_listener(srv: socket.socket | None) -> None:
    """Close a socket from :func:`listen` (None: nothing), waking its blocked accept()."""
    if srv is None:
        return
    try:
        srv.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    srv.close()



class SimWT310:
    def __init__(self, watts: float = 50.0, volts: float = 100.0, pattern: str = "constant",
                 low_watts: float = 10.0, period_s: float = 1.0, serial: str = "C2SIM0001",
                 model: str = "WT310", firmware: str = "F1.03", fault: str | None = None,
                 fault_after_reads: int = 0, down_s: float | None = None,
                 mode: str = "RMS", update_skew: float = 0.0) -> None:
        self.watts, self.volts, self.pattern = watts, volts, pattern
        self.low_watts, self.period_s = low_watts, period_s
        # a fifth field the real meter does not send: it identifies as a simulation, so every
        # figure lpirc makes from it is labelled "simulated" (lpirc.meters.wt310.is_simulation)
        self.idn = f"YOKOGAWA,{model},{serial},{firmware},SIMULATED"
        self.fault_kind, self.fault_after, self.down_s = fault, fault_after_reads, down_s
        self.fault: str | None = None
        self.t0 = time.time()
        self.rate = 0.5
        self.update_skew = update_skew
        self.filter1 = "NEV"
        self.eesr_cleared = -1  # the update index at the last :STATus:EESR? / *CLS
        self.served: list[int] = []
        self.mode = mode
        self.volt_range, self.amp_range, self.volt_auto, self.amp_auto = 150.0, 1.0, False, False
        self.items = ["U,1", "I,1", "P,1", "S,1", "Q,1", "LAMB,1", "PHI,1", "FU,1", "FI,1", "NONE"]
        self.number = 10
        self.errors: list[tuple[int, str]] = []
        self.integ_state, self.integ_start, self.integ_stop = "RESET", None, None
        self.reads = 0
        self.received: list[str] = []
        self.lock = threading.Lock()
        self._srv: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self.port = 0

    # --- the power pattern -----------------------------------------------------------------

    def power(self, t: float) -> float:
        if self.pattern == "square":
            return self.watts if ((t - self.t0) % self.period_s) < self.period_s / 2 else self.low_watts
        return self.watts

    def energy_j(self, a: float, b: float) -> float:
        """Exact integral of the pattern over [a, b] (J)."""
        if self.pattern != "square":
            return self.watts * (b - a)
        p, h = self.period_s, self.period_s / 2

        def cum(t: float) -> float:  # energy from t0 to t
            n, r = divmod(t - self.t0, p)
            return n * (self.watts * h + self.low_watts * h) + (
                self.watts * r if r < h else self.watts * h + self.low_watts * (r - h))

        return cum(b) - cum(a)

    @property
    def period(self) -> float:
        """The meter's update interval on the host's clock (s)."""
        return self.rate * (1.0 + self.update_skew)

    def update_index(self, now: float | None = None) -> int:
        """The index k of the last update that ended at or before ``now``."""
        return math.floor(((time.time() if now is None else now) - self.t0) / self.period)

    def _reading(self) -> tuple[float, float]:
        """(watts, end time) of the last complete update interval before now."""
        k = self.update_index()
        a, b = self.t0 + (k - 1) * self.period, self.t0 + k * self.period
        return self.energy_j(a, b) / self.period, b

    def _eesr(self) -> int:
        """The extended event register now: bit 0 when an update ended since it was cleared
        and FILTer1 is FALL."""
        return int(self.filter1.startswith("FALL") and self.update_index() > self.eesr_cleared)

    # --- the server ------------------------------------------------------------------------

    def start(self) -> int:
        self._srv = listen(self.port, self._accepted)
        self.port = self._srv.getsockname()[1]
        return self.port

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1::{self.port}::SOCKET"

    def stop(self) -> None:
        srv, self._srv = self._srv, None
        close_listener(srv)
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._conns.clear()

    def _accepted(self, conn: socket.socket) -> None:
        self._conns.append(conn)
        self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                reply = self.handle(line.decode("ascii", "replace").strip())
                if self.fault == "disconnect":
                    self._go_down()
                    return
                if reply is not None and self.fault != "silent":
                    try:
                        conn.sendall(reply.encode() + b"\n")
                    except OSError:
                        return

    def _go_down(self) -> None:
        self.stop()
        if self.down_s is not None:
            def back():
                time.sleep(self.down_s)
                self.fault = None
                self.fault_kind = None
                self.start()
            threading.Thread(target=back, daemon=True).start()

    # --- the command language --------------------------------------------------------------

    def handle(self, message: str) -> str | None:
        """Answer one program message (units separated by ';'); None when nothing is sent."""
        replies = []
        for unit in message.split(";"):
            unit = unit.strip()
            if not unit:
                continue
            m = re.fullmatch(r":?COMM(?:UNICATE)?:WAIT\s+(\d+)", unit, re.IGNORECASE)
            if m:
                self._wait(int(m.group(1)))
                continue
            with self.lock:
                self.received.append(unit)
                r = self._unit(unit)
            if r is not None:
                replies.append(r)
        return ";".join(replies) if replies else None

    def _wait(self, mask: int, limit_s: float = 30.0) -> None:
        """``:COMMunicate:WAIT <mask>``: hold this connection until an event in ``mask`` is in
        the extended event register (at most ``limit_s``)."""
        with self.lock:
            self.received.append(f":COMMunicate:WAIT {mask}")
        end = time.time() + limit_s
        while self.fault_kind != "nowait" and not (self._eesr() & mask) and time.time() < end:
            nxt = self.t0 + (self.update_index() + 1) * self.period
            time.sleep(max(0.0005, min(nxt - time.time() + 0.0005, end - time.time())))

    def _err(self, code: int, msg: str) -> None:
        if len(self.errors) < 32:
            self.errors.append((code, msg))

    def _unit(self, unit: str) -> str | None:
        header, _, arg = unit.partition(" ")
        arg = arg.strip()
        query = header.endswith("?")
        header = header.rstrip("?")
        if header.startswith("*"):
            return self._common(header.upper(), query)
        tokens = [t for t in header.strip(":").split(":") if t]
        for pattern, fn in self._table():
            m = self._match(tokens, pattern)
            if m is not None:
                return fn(query, arg, m)
        self._err(113, "Undefined header")
        return None

    def _common(self, h: str, query: bool) -> str | None:
        if h == "*IDN" and query:
            return self.idn
        if h == "*CLS":
            self.errors.clear()
            self.eesr_cleared = self.update_index()
            return None
        if h == "*OPT" and query:
            return "C7"
        self._err(113, "Undefined header")
        return None

    @staticmethod
    def _match(tokens: list[str], pattern: list[str]):
        """Match header tokens to a pattern like ["NUMeric", "[NORMal]", "ITEM#"]; returns the
        numeric suffix (or 0), None when it does not match."""
        suffix, i = 0, 0
        for node in pattern:
            optional = node.startswith("[")
            name = node.strip("[]")
            tok = tokens[i].upper() if i < len(tokens) else None
            if name.endswith("#"):
                short, long_ = _mn(name[:-1])
                m = re.fullmatch(r"([A-Z]+)(\d*)", tok or "")
                if m and m.group(1) in (short, long_):
                    suffix, i = int(m.group(2) or 1), i + 1
                    continue
                return None
            if tok is not None and tok in _mn(name):
                i += 1
            elif not optional:
                return None
        return suffix if i == len(tokens) else None

    def _table(self):
        return [
            (["COMMunicate", "REMote"], self._noop),
            (["COMMunicate", "HEADer"], self._noop),
            (["COMMunicate", "VERBose"], self._noop),
            (["NUMeric", "FORMat"], self._format),
            (["NUMeric", "[NORMal]", "NUMber"], self._number),
            (["NUMeric", "[NORMal]", "ITEM#"], self._item),
            (["NUMeric", "[NORMal]", "VALue"], self._value),
            (["RATE"], self._rate),
            (["INPut", "VOLTage", "RANGe"], self._vrange),
            (["INPut", "CURRent", "RANGe"], self._arange),
            (["INPut", "VOLTage", "AUTO"], self._vauto),
            (["INPut", "CURRent", "AUTO"], self._aauto),
            (["INPut", "MODE"], lambda q, a, m: self.mode if q else None),
            (["INPut", "CFACtor"], lambda q, a, m: "3" if q else None),
            (["INTEGrate", "STARt"], self._integ),
            (["INTEGrate", "STOP"], self._integ),
            (["INTEGrate", "RESet"], self._integ),
            (["INTEGrate", "STATe"], lambda q, a, m: self.integ_state if q else None),
            (["STATus", "ERRor"], self._error),
            (["STATus", "FILTer#"], self._filter),
            (["STATus", "EESR"], self._eesr_query),
            (["STATus", "CONDition"], lambda q, a, m: "0" if q else None),
        ]

    def _filter(self, query, arg, x):
        if x != 1:  # only FILTer1 (UPD) is modelled
            return "NEVER" if query else None
        if query:
            return {"FALL": "FALL", "RISE": "RISE", "BOTH": "BOTH"}.get(self.filter1[:4], "NEVER")
        a = arg.strip().upper()
        if a not in ("RISE", "FALL", "BOTH", "NEV", "NEVER"):
            self._err(224, "Illegal parameter value")
        else:
            self.filter1 = a
        return None

    def _eesr_query(self, query, arg, m):
        if not query:
            self._err(113, "Undefined header")
            return None
        bits = self._eesr()
        self.eesr_cleared = self.update_index()
        return str(bits)

    def _noop(self, query, arg, m):
        return "0" if query else None

    def _format(self, query, arg, m):
        if query:
            return "ASCII"
        if arg.upper() not in ("ASC", "ASCII"):
            self._err(224, "Illegal parameter value (the simulation speaks ASCII only)")
        return None

    def _number(self, query, arg, m):
        if query:
            return str(self.number)
        n = int(arg)
        if not 1 <= n <= 10:
            self._err(224, "Illegal parameter value")
        else:
            self.number = n
        return None

    def _item(self, query, arg, x):
        if not 1 <= x <= 10:
            self._err(114, "Header suffix out of range")
            return None
        if query:
            return self.items[x - 1]
        self.items[x - 1] = arg.upper().replace(" ", "")
        return None

    def _value(self, query, arg, m):
        self.reads += 1
        if self.fault_kind and self.fault is None and self.reads > self.fault_after:
            self.fault = self.fault_kind
        if self.fault == "errors":
            self._err(390, "Overrun error")
        watts, _ = self._reading()
        self.served.append(self.update_index())
        amps = watts / self.volts
        out = []
        for item in self.items[:self.number]:
            fn = item.split(",")[0]
            if self.fault == "overrange" and fn in ("U", "I", "P"):
                out.append("INF")
            elif fn == "U":
                out.append(_nr3(self.volts))
            elif fn == "I":
                out.append(_nr3(amps))
            elif fn == "P":
                out.append(_nr3(watts))
            elif fn == "WH":
                out.append(_nr3(self._integ_j() / 3600.0))
            elif fn == "TIME":
                out.append(str(int(self._integ_s())))
            else:
                out.append("NAN")
        return ",".join(out)

    def _integ_until(self) -> float:
        """The integrator's values are updated with the display, at each update's end."""
        if self.integ_stop is not None:
            return self.integ_stop
        return max(self.integ_start, self._reading()[1])

    def _integ_s(self) -> float:
        if self.integ_start is None:
            return 0.0
        return self._integ_until() - self.integ_start

    def _integ_j(self) -> float:
        if self.integ_start is None:
            return 0.0
        return self.energy_j(self.integ_start, self._integ_until())

    def _integ(self, query, arg, m):
        cmd = self.received[-1].upper()
        if "STAR" in cmd:
            if self.integ_state == "START":
                self._err(842, "Integration is already started")
            else:
                self.integ_start, self.integ_stop, self.integ_state = time.time(), None, "START"
        elif "STOP" in cmd:
            if self.integ_state != "START":
                self._err(844, "Integration is not started")
            else:
                self.integ_stop, self.integ_state = time.time(), "STOP"
        else:
            if self.integ_state == "START":
                self._err(845, "Integration must be stopped before it is reset")
            else:
                self.integ_start = self.integ_stop = None
                self.integ_state = "RESET"
        return None

    def _rate(self, query, arg, m):
        if query:
            return _nr3(self.rate)
        ms = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(MS|S)?", arg.upper())
        val = None if not ms else float(ms.group(1)) * (1 if ms.group(2) == "MS" else 1000)
        if val is None or int(val) not in RATES:
            self._err(224, "Illegal parameter value")
        else:
            self.rate = RATES[int(val)]
        return None

    def _range(self, arg: str, allowed) -> float | None:
        v = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(MV|MA|V|A)?", arg.upper())
        x = float(v.group(1)) * (1e-3 if v and v.group(2) in ("MV", "MA") else 1) if v else None
        if x is None or x not in allowed:
            self._err(224, "Illegal parameter value")
            return None
        return x

    def _vrange(self, query, arg, m):
        return self._set_range("volt", (15.0, 30.0, 60.0, 150.0, 300.0, 600.0), query, arg)

    def _arange(self, query, arg, m):
        return self._set_range("amp", (0.5, 1.0, 2.0, 5.0, 10.0, 20.0), query, arg)

    def _set_range(self, which: str, allowed, query: bool, arg: str) -> str | None:
        if query:
            return _nr3(getattr(self, f"{which}_range"))
        x = self._range(arg, allowed)
        if x is not None:  # a fixed range ends auto ranging
            setattr(self, f"{which}_range", x)
            setattr(self, f"{which}_auto", False)
        return None

    def _vauto(self, query, arg, m):
        return self._auto("volt_auto", query, arg)

    def _aauto(self, query, arg, m):
        return self._auto("amp_auto", query, arg)

    def _auto(self, attr: str, query: bool, arg: str) -> str | None:
        if query:
            return "1" if getattr(self, attr) else "0"
        setattr(self, attr, arg.upper() in ("ON", "1"))
        return None

    def _error(self, query, arg, m):
        if not self.errors:
            return '0,"No error"'
        code, msg = self.errors.pop(0)
        return f'{code},"{msg}"'


def main(argv: list[str] | None = None) -> None:
    """``python tests/wt310_sim.py [--port P] [--watts W] ...``: the simulation as a process, for
    trying ``lpirc meter`` and ``lpirc run --meter`` without a meter (docs/meter.md). Prints the
    meter's address (``wt310:TCPIP::127.0.0.1::PORT::SOCKET``; with ``--vxi11``
    ``wt310:TCPIP::127.0.0.1,PORT::INSTR``) on its first line and serves on 127.0.0.1 until
    Ctrl-C or SIGTERM."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description="A simulated Yokogawa WT310 (SCPI over a socket on "
                                 "127.0.0.1) for lpirc meter and lpirc run --meter")
    ap.add_argument("--port", type=int, default=0, help="TCP port (0: any free one)")
    ap.add_argument("--watts", type=float, default=50.0,
                    help="power, W (the high level of a square wave)")
    ap.add_argument("--volts", type=float, default=100.0, help="voltage, V")
    ap.add_argument("--pattern", choices=["constant", "square"], default="constant")
    ap.add_argument("--low-watts", type=float, default=10.0, help="a square wave's low level, W")
    ap.add_argument("--period-s", type=float, default=1.0, help="a square wave's period, s")
    ap.add_argument("--mode", choices=["RMS", "DC"], default="RMS", help="measurement mode")
    ap.add_argument("--update-skew", type=float, default=0.0,
                    help="the meter's update clock runs this fraction slow (a test aid: 0.05 "
                    "makes a reader polling on the host's clock repeat or miss updates)")
    ap.add_argument("--fault", choices=["silent", "disconnect", "errors", "overrange", "nowait"],
                    help="a fault after --fault-after-reads value queries")
    ap.add_argument("--fault-after-reads", type=int, default=0)
    ap.add_argument("--down-s", type=float, help="disconnect: back after this many seconds")
    ap.add_argument("--vxi11", action="store_true",
                    help="serve VXI-11, the protocol of the meter's Ethernet port, instead of "
                    "newline-terminated SCPI (address TCPIP::127.0.0.1,PORT::INSTR)")
    a = ap.parse_args(argv)
    sim = SimWT310(watts=a.watts, volts=a.volts, pattern=a.pattern, low_watts=a.low_watts,
                   period_s=a.period_s, mode=a.mode, fault=a.fault,
                   fault_after_reads=a.fault_after_reads, down_s=a.down_s,
                   update_skew=a.update_skew)
    if a.vxi11:
        from wt310_vxi11 import Vxi11Server

        server = Vxi11Server(sim, a.port)
        server.start()
        print(f"wt310:{server.resource}", flush=True)
    else:
        sim.port = a.port
        sim.start()
        print(f"wt310:{sim.resource}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
