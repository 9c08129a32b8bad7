"""Yokogawa WT310 / WT310E / WT330-series (one element) digital power meter over PyVISA.

Commands follow the *WT310/WT310HC/WT330 Digital Power Meter Communication Interface User's
Manual*, IM WT310-17EN (1st edition; the WT310E's IM WT310E-17EN, 2nd edition, has the same
commands), in the meter's default WT300 command set (not the WT200-compatible one). The
sections named below are of that manual ("§5" programming overview: messages, short and long
mnemonics, data; "§6" the command groups; "App" the error messages). Accuracy is from the
*User's Manual* / *Getting Started Guide*, IM WT310-02EN §7.3.2 "Active Power Accuracy"
(IM WT310E-02EN for the E models).

**Tested only against a simulation** (tests/wt310_sim.py, a SCPI socket server answering as the
manual describes); no WT310 was connected while this was written. Firmware: the manual edition
above (the meter's own firmware version is recorded from ``*IDN?`` in every manifest).

What is used:

- ``*IDN?`` (§6 common commands): ``YOKOGAWA,WT310,<serial>,F<version>``.
- ``*CLS``; ``:COMMunicate:REMote ON|OFF`` (§6 COMMunicate group); ``:COMMunicate:HEADer OFF``
  and ``:COMMunicate:VERBose OFF`` so answers are bare values.
- ``:NUMeric:FORMat ASCii``, ``:NUMeric:NORMal:NUMber 5``, ``:NUMeric:NORMal:ITEM<x>
  <function>[,<element>]`` with U,1 I,1 P,1 WH,1 TIME, and ``:NUMeric:NORMal:VALue?`` (§6
  NUMeric group): one comma-separated line, ``<NR3>`` values (``TIME`` ``<NR1>`` seconds).
  Error data: ``NAN`` where the data does not exist (display ``------``), ``INF`` for
  over-range (``--OL-``), computation overflow (``--OF-``) or error; in the FLOAT format the
  same cases are 9.91E+37 and 9.9E+37 (IM WT310-17EN §9 gives them for Modbus as NAN / INF).
  Any of these on U, I or P marks the reading over range: it is not a measurement.
- ``:RATE <time>`` / ``:RATE?`` (§6 RATE group): update interval 100 ms, 250 ms, 500 ms, 1 s,
  2 s or 5 s.
- ``:INPut:VOLTage:RANGe <V>``, ``:INPut:CURRent:RANGe <A>``, ``:INPut:VOLTage:AUTO ON``,
  ``:INPut:CURRent:AUTO ON`` and their queries, ``:INPut:MODE?`` (RMS, VMEan, DC),
  ``:INPut:CFACtor?`` (3 or 6) (§6 INPut group).
- ``:INTEGrate:RESet``, ``:INTEGrate:STARt``, ``:INTEGrate:STOP`` (§6 INTEGrate group): the
  meter's own watt-hour integrator, read through the WH item, kept as a cross-check.
- ``:STATus:ERRor?`` (§6 STATus group, App error messages): ``<code>,"<message>"``, ``0,"No
  error"`` when the queue is empty; e.g. ``113,"Undefined header"`` for an unknown command.
- Synchronising with the meter's data updates (§5.5 "Synchronization with the Controller",
  "Using the COMMunicate:WAIT Command"; §7.4 "Extended Event Register"): bit 0 of the condition
  register, UPD, is 1 while the measured data is being updated, and its fall (1 -> 0) is the
  end of an update. ``:STATus:FILTer1 FALL`` makes that fall set bit 0 of the extended event
  register, ``:STATus:EESR?`` reads and clears the register, and ``:COMMunicate:WAIT 1`` holds
  the commands that follow until bit 0 is 1. So each reading is the program message
  ``:COMMunicate:WAIT 1;:STATus:EESR?;:NUMeric:NORMal:VALue?`` (units of one message are
  executed in order, §5.1; every WT310 command is sequential, §5.5): it is answered once per
  update, right after it, with ``<EESR>;<values>``. The register is cleared before the values
  are read, so an update that lands between two readings is waited for, never lost or read
  twice; an EESR without bit 0 (a meter or bridge that did not wait) marks the values as not
  fresh. (The manual's own loop reads the values first and clears after; that order can lose
  the update that lands between the two queries.)

Short and long mnemonics are equivalent (§5 "Header interpretation rules"); the driver sends
long forms.

Transports (any VISA resource; docs/meter.md "The real meter"): USB-TMC
(``USB0::0x0B21::0x0025::<serial>::INSTR``, pyvisa-py through pyusb); Ethernet, the /C7
option (chapter 4), which is a VXI-11 instrument server (``TCPIP::<address>::INSTR``, pyvisa-py's
VXI-11 client; ``TCPIP::<address>,<port>::INSTR`` skips the portmapper); GP-IB through a
GP-IB backend. The meter's other Ethernet protocol, Modbus/TCP (chapter 9), is not used. The
manual gives the WT310 no raw SCPI socket and no port-10001 framing with a header (the older
WT1600/WT3000 Ethernet): ``TCPIP::<host>::<port>::SOCKET`` (newline-terminated SCPI) is for the
simulation and serial-to-TCP bridges only. The VXI-11 path was tested against the simulation
served over VXI-11 (tests/wt310_vxi11.py), not against a meter.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from lpirc.errors import MeterError
from lpirc.meters import AccuracySpec, MeterInfo, Ranges, Reading, resource_manager

#: How readings are taken: ``update`` waits for each of the meter's data updates (§5.5),
#: ``poll`` reads once per update interval on this host's clock (not synchronised: a reading
#: may repeat an update or miss one; for bridges that do not pass :COMMunicate:WAIT).
SYNC_MODES = ("update", "poll")
#: The program message of one synchronised reading (see the module docstring).
SYNC_QUERY = ":COMMunicate:WAIT 1;:STATus:EESR?;:NUMeric:NORMal:VALue?"

#: What the driver follows, recorded with every meter reading's provenance.
DRIVER = ("lpirc wt310 driver: IM WT310-17EN 1st ed. (WT300 command set), accuracy IM WT310-02EN "
          "7.3.2; tested against a simulation only")
#: Serials of lpirc's simulations (tests/wt310_sim.py, tests/wt310_sim.yaml) begin so.
SIM_SERIAL_PREFIX = "C2SIM"
#: USBTMC identity of the WT310 family (vendor Yokogawa 0x0B21, product 0x0025).
USB_VENDOR, USB_PRODUCT = 0x0B21, 0x0025
#: Update intervals the meter offers (s) (IM WT310-17EN §6 RATE group).
RATES_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
#: Direct-input ranges, crest factor 3 and 6 together (IM WT310-02EN §7.2): the meter's error
#: queue refuses one that its crest factor does not allow.
VOLT_RANGES = (7.5, 15.0, 30.0, 60.0, 75.0, 150.0, 300.0, 600.0)
AMP_RANGES = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
              20.0, 40.0)
#: The numeric items read, in order (IM WT310-17EN §6 :NUMeric[:NORMal]:ITEM<x>).
ITEMS = ("U,1", "I,1", "P,1", "WH,1", "TIME")
#: ASCII / FLOAT error data (over range, overflow, error; no data): see the module docstring.
_SENTINEL = 9.0e37
_USB = re.compile(r"^USB\d*::(0x[0-9a-f]+|\d+)::(0x[0-9a-f]+|\d+)::", re.IGNORECASE)


def _int(s: str) -> int:
    return int(s, 16) if s.lower().startswith("0x") else int(s)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def parse_value(text: str) -> tuple[float | None, bool]:
    """One ASCII numeric field -> (value, flagged). ``NAN`` (no data) -> (None, False);
    ``INF`` (over range, overflow, error) or a +-9.9E+37 sentinel -> (None, True)."""
    s = text.strip().strip('"').upper()
    if s in ("NAN", ""):
        return None, False
    if s in ("INF", "+INF", "-INF"):
        return None, True
    try:
        x = float(s)
    except ValueError:
        raise MeterError(f"meter answered {text.strip()[:40]!r} where a number was expected") from None
    if not math.isfinite(x) or abs(x) >= _SENTINEL:
        return None, True
    return x, False


class WT310:
    """A WT310 opened on a PyVISA resource (see :class:`lpirc.meters.Meter`)."""

    kind = "wt310"

    def __init__(self, inst: Any, resource: str) -> None:
        self.inst = inst
        self.resource = resource
        self.info = MeterInfo("wt310", "", "", "", "", resource)
        self._rate_s = 0.5
        self._ranges = Ranges(None, None, True)
        self._sync = "update"
        self._last_update: float | None = None  # unix s of the last update read (sync)

    # --- opening ---------------------------------------------------------------------------

    @staticmethod
    def looks_like(resource: str) -> bool:
        """A USB resource with the WT310's vendor and product IDs (others need ``*IDN?``)."""
        m = _USB.match(resource)
        return bool(m) and _int(m.group(1)) == USB_VENDOR and _int(m.group(2)) == USB_PRODUCT

    @classmethod
    def open(cls, resource: str, visa_library: str = "@py", timeout_s: float = 2.0) -> "WT310":
        """Open ``resource`` and identify the meter. MeterError (one line) when it is absent,
        does not answer, or is not a WT310-family meter."""
        rm = resource_manager(visa_library)
        try:
            inst = rm.open_resource(resource, read_termination="\n", write_termination="\n",
                                    timeout=int(timeout_s * 1000))
        except Exception as e:  # VisaIOError, OSError, ValueError (bad resource name), ...
            why = _one_line(e)
            if "is not a valid attribute for type Resource" in why:  # PyVISA's generic class
                why = ("not a VISA resource name PyVISA knows, e.g. "
                       "USB0::0x0B21::0x0025::SERIAL::INSTR, TCPIP::HOST::INSTR or "
                       "TCPIP::HOST::PORT::SOCKET")
            raise MeterError(f"meter {resource}: cannot open ({why})") from None
        meter = cls(inst, resource)
        try:
            meter.identify()
        except BaseException:
            meter.close()
            raise
        return meter

    def identify(self) -> MeterInfo:
        """``*IDN?`` -> MeterInfo; MeterError when the answer is not a WT310 family meter's."""
        idn = self.query("*IDN?")
        parts = [p.strip() for p in idn.split(",")]
        if len(parts) < 4 or not parts[0].upper().startswith("YOKOGAWA") \
                or not parts[1].upper().startswith(("WT31", "WT33")):
            raise MeterError(f"meter {self.resource}: *IDN? answered {idn[:80]!r}, not a "
                             "Yokogawa WT310/WT330")
        self.info = MeterInfo("wt310", parts[0], parts[1], parts[2], parts[3], self.resource,
                              DRIVER, simulated=is_simulation(parts))
        return self.info

    # --- the wire --------------------------------------------------------------------------

    def write(self, cmd: str) -> None:
        try:
            self.inst.write(cmd)
        except Exception as e:
            raise MeterError(f"meter {self.resource}: {cmd.split()[0]} failed ({_one_line(e)})") from None

    def query(self, cmd: str) -> str:
        try:
            return str(self.inst.query(cmd)).strip()
        except Exception as e:  # timeout, connection reset, decode error
            raise MeterError(f"meter {self.resource}: {cmd.split()[0]} got no answer "
                             f"({_one_line(e)})") from None

    def errors(self) -> list[str]:
        """Drain ``:STATus:ERRor?`` (at most 16 entries): ``["113 Undefined header"]``, a
        repeated error once with its count (``"390 Overrun error (x7)"``)."""
        out: list[str] = []
        for _ in range(16):
            code, _, msg = self.query(":STATus:ERRor?").partition(",")
            try:
                n = int(code.strip())
            except ValueError:
                out.append(f"unreadable error queue answer {code[:40]!r}")
                break
            if n == 0:
                break
            out.append(f"{n} {msg.strip().strip(chr(34))}")
        counts = {e: out.count(e) for e in out}
        return [e if c == 1 else f"{e} (x{c})" for e, c in counts.items()]

    # --- setting up ------------------------------------------------------------------------

    def configure(self, rate_s: float = 0.1, ranges: str = "auto", sync: str = "update") -> None:
        """Remote mode, bare ASCII answers, the items U, I, P, WH, TIME, the update interval,
        the ranges (``auto``, ``keep`` or ``V,A``) and, with ``sync="update"``, the transition
        filter that marks the end of each data update (§7.4), cleared. MeterError naming the
        refused setting, with the meter's own error text."""
        check_settings(rate_s, ranges, sync)
        fixed = parse_ranges(ranges)
        self.write("*CLS")
        cmds = [":COMMunicate:REMote ON", ":COMMunicate:HEADer OFF", ":COMMunicate:VERBose OFF",
                ":NUMeric:FORMat ASCii", f":NUMeric:NORMal:NUMber {len(ITEMS)}",
                *(f":NUMeric:NORMal:ITEM{i} {item}" for i, item in enumerate(ITEMS, 1)),
                f":RATE {int(round(rate_s * 1000))}MS"]
        if ranges == "auto":
            cmds += [":INPut:VOLTage:AUTO ON", ":INPut:CURRent:AUTO ON"]
        elif fixed is not None:
            cmds += [f":INPut:VOLTage:RANGe {fixed[0]:g}V", f":INPut:CURRent:RANGe {fixed[1]:g}A"]
        if sync == "update":
            cmds.append(":STATus:FILTer1 FALL")
        for c in cmds:
            self.write(c)
        errs = self.errors()
        if errs:
            raise MeterError(f"meter {self.info.label()} refused its set-up: {'; '.join(errs)}")
        self._rate_s = parse_value(self.query(":RATE?"))[0] or rate_s  # <NR3> seconds
        self._ranges = self.ranges()
        self._sync, self._last_update = sync, None
        if sync == "update":  # cleared, then to the end of an update: the first reading waits
            self.query(":STATus:EESR?")  # for the next one, and its time is on the grid
            self._query_waiting(":COMMunicate:WAIT 1;:STATus:EESR?")
            self._last_update = time.time()

    @property
    def rate_s(self) -> float:
        return self._rate_s

    def ranges(self) -> Ranges:
        """Ranges now: ``:INPut:VOLTage:RANGe?``, ``:INPut:CURRent:RANGe?`` and the AUTO states."""
        volts, _ = parse_value(self.query(":INPut:VOLTage:RANGe?"))
        amps, _ = parse_value(self.query(":INPut:CURRent:RANGe?"))
        auto = any(self.query(q).strip().upper() in ("1", "ON")
                   for q in (":INPut:VOLTage:AUTO?", ":INPut:CURRent:AUTO?"))
        return Ranges(volts, amps, auto)

    def accuracy(self) -> AccuracySpec:
        """Power accuracy at 12 months for the measurement mode in use: DC for ``:INPut:MODE
        DC``, else the 45 Hz to 66 Hz (mains) figure; the range error doubles at crest factor
        6. IM WT310-02EN §7.3.2 (WT310: DC 0.1% rdg + 0.2% rng, 45-66 Hz 0.1% + 0.1%);
        IM WT310E-02EN §7.3.2 (WT310E: 45-66 Hz 0.1% + 0.05%)."""
        mode = self.query(":INPut:MODE?").strip().upper()
        m = re.match(r"\s*(\d+)", self.query(":INPut:CFACtor?"))  # 3, 6, or 6A (E models)
        cf = float(m.group(1)) if m else 3.0
        e_model = self.info.model.upper().startswith(("WT310E", "WT332E", "WT333E"))
        doc = "IM WT310E-02EN 7.3.2" if e_model else "IM WT310-02EN 7.3.2"
        if mode == "DC":
            rng, signal = 0.002, "DC"
        else:
            rng, signal = (0.0005 if e_model else 0.001), "45 Hz to 66 Hz"
        if cf >= 6:
            rng *= 2
            signal += ", crest factor 6"
        return AccuracySpec(0.001, rng, signal, doc)

    # --- measuring -------------------------------------------------------------------------

    @property
    def sync(self) -> str:
        return self._sync

    def read(self, with_ranges: bool = False) -> Reading:
        """One reading of the items: with ``sync="update"`` the next data update's values
        (:data:`SYNC_QUERY`, waiting up to one update interval more than the query timeout),
        else one ``:NUMeric:NORMal:VALue?`` now. The ranges are queried again only when asked
        (auto ranging), else the ones set up are given.

        The values are the means over the meter's last complete update interval. Synchronised,
        the answer comes right after the update that ended it, so the reading's time is the
        update's time minus half an interval: the middle of the interval measured. The update's
        time is the answer's when the meter made the query wait; when the update had already
        happened (this host late), it is placed on the meter's update grid (the last update
        read plus whole intervals). Polled, the update ended 0 to 1 interval before the answer,
        so the time is the answer's minus one interval: the middle on average (without it every
        figure would lag by 1.5 intervals). ``Reading.fresh`` is False when the meter said no
        update had ended (EESR bit 0 clear): the same values again."""
        fresh = True
        if self._sync == "update":
            t_send = time.time()
            line = self._query_waiting(SYNC_QUERY)
            t_recv = time.time()
            eesr, sep, line = line.partition(";")
            try:
                fresh = bool(int(eesr.strip()) & 1) and bool(sep)
            except ValueError:
                raise MeterError(f"meter {self.info.label()}: :STATus:EESR? answered "
                                 f"{eesr[:40]!r}, not a register value") from None
            t = self._update_time(t_send, t_recv) - self._rate_s / 2 if fresh else t_recv
        else:
            line = self.query(":NUMeric:NORMal:VALue?")
            t = time.time() - self._rate_s
        fields = line.split(",")
        if len(fields) < len(ITEMS):
            raise MeterError(f"meter {self.info.label()}: :NUMeric:NORMal:VALue? answered "
                             f"{len(fields)} values, {len(ITEMS)} expected ({line[:60]!r})")
        vals, flags = zip(*(parse_value(f) for f in fields[:len(ITEMS)]))
        over = tuple(name for name, flag in zip(("U", "I", "P"), flags) if flag)
        rng = self.ranges() if with_ranges else self._ranges
        return Reading(t=t, volts=vals[0], amps=vals[1], watts=vals[2], wh=vals[3],
                       integ_s=vals[4], ranges=rng, over_range=over, fresh=fresh)

    def _update_time(self, t_send: float, t_recv: float) -> float:
        """When the update just read ended (unix s): the answer's time when the query waited
        for it (more than a quarter interval), else the last update plus whole intervals."""
        last, rate = self._last_update, self._rate_s
        if last is None or t_recv - t_send > rate / 4 or t_recv - last < rate / 2:
            t = t_recv
        else:
            # the latest update before the answer (a small tolerance for the meter's clock)
            t = min(last + rate * max(1, math.floor((t_recv - last) / rate + 0.05)), t_recv)
        self._last_update = t
        return t

    def _query_waiting(self, cmd: str) -> str:
        """``query`` with the timeout lengthened by one update interval (the meter holds the
        answer until its next update)."""
        try:
            base = self.inst.timeout
            self.inst.timeout = base + int(self._rate_s * 1000)
        except Exception:  # a resource without a settable timeout: query as is
            return self.query(cmd)
        try:
            return self.query(cmd)
        finally:
            try:
                self.inst.timeout = base
            except Exception:
                pass

    def integrator(self, action: str) -> None:
        """``reset``, ``start`` or ``stop`` the meter's integrator; MeterError with the
        meter's error text when it refuses (e.g. a state it cannot go to from here)."""
        cmd = {"reset": ":INTEGrate:RESet", "start": ":INTEGrate:STARt",
               "stop": ":INTEGrate:STOP"}[action]
        self.write(cmd)
        errs = self.errors()
        if errs:
            raise MeterError(f"{cmd} refused: {'; '.join(errs)}")

    def close(self) -> None:
        """Local control again, connection closed; never raises (the meter may be gone)."""
        try:
            self.inst.write(":COMMunicate:REMote OFF")
        except Exception:
            pass
        try:
            self.inst.close()
        except Exception:
            pass


def is_simulation(idn_fields: list[str]) -> bool:
    """Whether a ``*IDN?`` answer (split at commas) is a simulation's: lpirc's simulations
    (tests/wt310_sim.py, tests/wt310_sim.yaml) add a fifth field ``SIMULATED`` and use serials
    beginning ``C2SIM``; a WT310 answers four fields (IM WT310-17EN, ``*IDN?``)."""
    extra = [f.strip().upper() for f in idn_fields[4:]]
    serial = idn_fields[2].strip().upper() if len(idn_fields) > 2 else ""
    return any(f.startswith("SIMULAT") for f in extra) or serial.startswith(SIM_SERIAL_PREFIX)


def check_settings(rate_s: float, ranges: str, sync: str = "update") -> None:
    """MeterError for an update interval, ranges or synchronisation a WT310 does not have."""
    if sync not in SYNC_MODES:
        raise MeterError(f"meter synchronisation {sync!r}: expected {' or '.join(SYNC_MODES)}")
    if rate_s not in RATES_S:
        raise MeterError(f"WT310 update interval {rate_s:g} s is not one the meter has "
                         f"({', '.join(f'{r:g}' for r in RATES_S)} s)")
    parse_ranges(ranges)


def parse_ranges(text: str) -> tuple[float, float] | None:
    """``"auto"``/``"keep"`` -> None; ``"150,2"`` -> (150.0, 2.0), checked against the WT310's
    ranges. MeterError (one line) otherwise."""
    t = text.strip().lower()
    if t in ("auto", "keep"):
        return None
    parts = t.replace("v", "").replace("a", "").split(",")
    try:
        volts, amps = (float(p) for p in parts)
    except ValueError:
        raise MeterError(f"meter ranges {text!r}: expected auto, keep or VOLTS,AMPS "
                         "(e.g. 150,2)") from None
    if volts not in VOLT_RANGES:
        raise MeterError(f"meter ranges {text!r}: {volts:g} V is not a WT310 range "
                         f"({', '.join(f'{v:g}' for v in VOLT_RANGES)})")
    if amps not in AMP_RANGES:
        raise MeterError(f"meter ranges {text!r}: {amps:g} A is not a WT310 range "
                         f"({', '.join(f'{a:g}' for a in AMP_RANGES)})")
    return volts, amps
