"""Power meters lpirc can read itself: a small interface, one module per meter.

A meter is addressed as ``KIND:RESOURCE`` (``--meter``), e.g.
``wt310:USB0::0x0B21::0x0025::C2XXXXXXX::INSTR``, ``wt310:TCPIP::10.0.0.5::INSTR`` or
``wt310:TCPIP::127.0.0.1::5025::SOCKET``; RESOURCE is a VISA resource name opened through
``pyvisa.ResourceManager(visa_library)`` (``@py``: pyvisa-py, no vendor VISA needed;
``file.yaml@sim``: a pyvisa-sim definition). A second meter is one more module that provides a
class with the :class:`Meter` methods and one line in :data:`KINDS`.

PyVISA is the optional extra ``meter`` (``pip install '.[meter]'`` in lpirc's checkout): it is imported only
when a meter is opened, and its absence is a one-line :class:`~lpirc.errors.MeterError`.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

from lpirc.errors import MeterError

#: Meter kinds: the name before the colon of ``--meter`` -> "module:Class" under lpirc.meters.
KINDS = {"wt310": "lpirc.meters.wt310:WT310"}

#: VISA library used when none is given: pyvisa-py (pure Python; USBTMC needs pyusb + libusb).
DEFAULT_VISA_LIBRARY = "@py"


@dataclass(frozen=True)
class MeterInfo:
    """What a meter says it is (``*IDN?``) and where it was opened."""

    kind: str  # "wt310"
    maker: str  # "YOKOGAWA"
    model: str  # "WT310"
    serial: str  # "C2XXXXXXX"
    firmware: str  # "F1.03"
    resource: str  # the VISA resource name
    driver: str = ""  # the manual the driver follows, and what it was tested against
    #: True when the instrument identified itself as a simulation (tests/wt310_sim.py,
    #: tests/wt310_sim.yaml): every figure it gives is then labelled "simulated".
    simulated: bool = False

    def label(self) -> str:
        """``WT310 C2XXXXXXX`` (``simulated WT310 C2SIM0001`` for a simulation): the name an
        energy figure carries."""
        return ("simulated " if self.simulated else "") + f"{self.model} {self.serial}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "maker": self.maker, "model": self.model,
                "serial": self.serial, "firmware": self.firmware, "resource": self.resource,
                "driver": self.driver, "simulated": self.simulated}


@dataclass(frozen=True)
class Ranges:
    """The input ranges the meter measures with: volts and amps (None: auto range, or not
    known), and whether auto ranging is on."""

    volts: float | None
    amps: float | None
    auto: bool

    @property
    def watts(self) -> float | None:
        """The power range of one element: voltage range x current range (W)."""
        if self.volts is None or self.amps is None:
            return None
        return self.volts * self.amps

    def describe(self) -> str:
        v = "?" if self.volts is None else f"{self.volts:g} V"
        a = "?" if self.amps is None else f"{self.amps:g} A"
        return f"{v}, {a}" + (" (auto range)" if self.auto else " (fixed)")

    def to_json(self) -> dict[str, Any]:
        return {"volts": self.volts, "amps": self.amps, "watts": self.watts, "auto": self.auto}


@dataclass(frozen=True)
class Reading:
    """One reading of the meter's numeric items at ``t`` (unix seconds, this host's clock: the
    middle of the interval the values are the mean of, as the driver places it). Values are
    None where the meter had no data.

    ``over_range`` names the items the meter flagged over range (or as a computation
    overflow / error), e.g. ``("U", "P")``; such a reading is not a measurement. ``fresh`` is
    False when the meter said no data update had ended since the last reading (the same
    values again); such a reading is skipped."""

    t: float
    watts: float | None
    volts: float | None = None
    amps: float | None = None
    wh: float | None = None  # the meter's own integrator (Wh)
    integ_s: float | None = None  # the integrator's elapsed time (s)
    ranges: Ranges | None = None
    over_range: tuple[str, ...] = field(default_factory=tuple)
    fresh: bool = True

    @property
    def valid(self) -> bool:
        return not self.over_range and self.watts is not None and math.isfinite(self.watts)


@dataclass(frozen=True)
class AccuracySpec:
    """A meter's power accuracy, +-(reading_frac x reading + range_frac x power range), as its
    specification gives it for the signal measured; ``source`` names the document."""

    reading_frac: float
    range_frac: float
    signal: str  # "DC" | "45 Hz to 66 Hz"
    source: str

    def bound_w(self, watts: float, range_w: float) -> float:
        """The accuracy bound of one power reading (W)."""
        return self.reading_frac * abs(watts) + self.range_frac * range_w

    def describe(self) -> str:
        return (f"+-({self.reading_frac * 100:g}% of reading + {self.range_frac * 100:g}% of "
                f"range), {self.signal} ({self.source})")

    def to_json(self) -> dict[str, Any]:
        return {"reading_frac": self.reading_frac, "range_frac": self.range_frac,
                "signal": self.signal, "source": self.source, "text": self.describe()}


class Meter(Protocol):
    """What lpirc needs of a power meter. Every method raises
    :class:`~lpirc.errors.MeterError` (one line) when the meter errs or does not answer."""

    info: MeterInfo

    def configure(self, rate_s: float, ranges: str, sync: str = "update") -> None:
        """Set the numeric items, the update interval ``rate_s`` (s), the ranges:
        ``"auto"``, ``"keep"`` (as the meter is set) or ``"V,A"`` (fixed), and how readings
        are taken: ``"update"`` (each one waits for the meter's next data update) or
        ``"poll"`` (read now, once per interval on this host's clock)."""

    @property
    def rate_s(self) -> float:
        """The update interval the meter uses (s), as it answered."""

    def read(self) -> Reading:
        """One reading of the numeric items (with ``sync="update"``: of the next update)."""

    def ranges(self) -> Ranges:
        """The input ranges in use now."""

    def accuracy(self) -> AccuracySpec:
        """The power accuracy spec for the signal being measured."""

    def errors(self) -> list[str]:
        """Drain the meter's error queue: ``["113 Undefined header", ...]``; [] when empty."""

    def integrator(self, action: str) -> None:
        """``"reset"``, ``"start"`` or ``"stop"`` the meter's own energy integrator."""

    def close(self) -> None:
        """Give the meter back to local control and close the connection (never raises)."""


def parse_spec(spec: str) -> tuple[str, str]:
    """``"wt310:USB0::..."`` -> ``("wt310", "USB0::...")``. MeterError for an unknown kind or
    a missing resource."""
    kind, sep, resource = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or not resource.strip():
        raise MeterError(f"meter {spec!r}: expected KIND:RESOURCE, e.g. "
                         "wt310:USB0::0x0B21::0x0025::C2XXXXXXX::INSTR")
    if kind not in KINDS:
        raise MeterError(f"meter {spec!r}: unknown meter kind {kind!r} (known: {', '.join(KINDS)})")
    if "::" in resource and any(not f.strip() for f in resource.strip().split("::")):
        raise MeterError(f"meter {spec!r}: an empty field in the VISA resource name (fields "
                         "joined by '::', e.g. TCPIP::127.0.0.1::5025::SOCKET)")
    return kind, resource.strip()


def check_config(spec: str | None, rate_s: float, ranges: str, sync: str = "update") -> None:
    """Refuse, before a run, a meter address, update interval, ranges or synchronisation the
    meter kind does not have (MeterError, one line)."""
    kind = parse_spec(spec)[0] if spec is not None else "wt310"
    module = importlib.import_module(KINDS[kind].partition(":")[0])
    module.check_settings(rate_s, ranges, sync)


def resource_manager(visa_library: str = DEFAULT_VISA_LIBRARY):
    """``pyvisa.ResourceManager(visa_library)``; MeterError when PyVISA or the backend is
    missing (the ``meter`` extra) or the library cannot be loaded."""
    try:
        import pyvisa
    except ImportError:
        raise MeterError("PyVISA is not installed: pip install '.[meter]' in lpirc's checkout "
                         "(pyvisa, pyvisa-py, pyusb)") from None
    try:
        return pyvisa.ResourceManager(visa_library)
    except Exception as e:  # ValueError, OSError, LibraryError: the library named is unusable
        raise MeterError(f"VISA library {visa_library!r} cannot be used: "
                         f"{' '.join(str(e).split())[:200]}") from None


def open_meter(spec: str, visa_library: str = DEFAULT_VISA_LIBRARY,
               timeout_s: float = 2.0) -> Meter:
    """Open and identify the meter ``spec`` (``KIND:RESOURCE``). Raises MeterError."""
    kind, resource = parse_spec(spec)
    module, _, cls = KINDS[kind].partition(":")
    meter_cls = getattr(importlib.import_module(module), cls)
    return meter_cls.open(resource, visa_library=visa_library, timeout_s=timeout_s)


def list_meters(visa_library: str = DEFAULT_VISA_LIBRARY) -> list[tuple[str, str]]:
    """VISA resources that look like meters lpirc can drive: ``[(resource, kind), ...]``,
    ``kind`` "" for a resource that is not recognised. MeterError when VISA is unusable."""
    rm = resource_manager(visa_library)
    try:
        with warnings.catch_warnings():  # pyvisa-py: "HiSLIP discovery needs zeroconf"
            warnings.simplefilter("ignore")
            found = rm.list_resources("?*")
    except Exception as e:
        raise MeterError(f"listing VISA resources failed: {' '.join(str(e).split())[:200]}") from None
    out = []
    for res in found:
        kind = ""
        for name, path in KINDS.items():
            module, _, cls = path.partition(":")
            if getattr(importlib.import_module(module), cls).looks_like(res):
                kind = name
        out.append((res, kind))
    return out
