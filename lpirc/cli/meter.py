"""``lpirc meter`` (list, read, log, idle, post) and the meter options of ``lpirc run``: the
command line of :mod:`lpirc.meters` (parsing and printing only). PyVISA (the ``meter`` extra)
is imported by the library only when a meter is opened; httpx (the ``referee`` extra) only by
``lpirc meter post``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from lpirc.cli._options import setting
from lpirc.errors import InputError, MeterError
from lpirc.meters import DEFAULT_VISA_LIBRARY, check_config, list_meters, open_meter
from lpirc.meters.measure import check_out, log_meter, measure_idle
from lpirc.meters.sampler import MeterConfig
from lpirc.meters.wt310 import RATES_S, SYNC_MODES
from lpirc.preflight import stop_signals
from lpirc.settings import RunSettings

S = RunSettings
_RATES = [f"{r:g}" for r in RATES_S]
SYNC_HELP = ("update: one reading per data update of the meter, each waiting for the next "
             "(:COMMunicate:WAIT on the meter's update event); poll: read once per interval on "
             "this host's clock, not synchronised (for a bridge that does not pass the wait).")


def meter_run_options(fn):
    """The options ``lpirc run`` takes for a meter (RunSettings fields of the same names)."""
    opts = [
        setting(S, "meter", metavar="KIND:RESOURCE", help="Measure the run with a power meter lpirc reads itself, e.g. wt310:USB0::0x0B21::0x0025::C2XXXXXXX::INSTR, wt310:TCPIP::10.0.0.5::INSTR, wt310:TCPIP::127.0.0.1::5025::SOCKET (the meter extra; see docs/meter.md)."),
        setting(S, "visa_library", help="VISA library for --meter, as pyvisa.ResourceManager takes it: @py (pyvisa-py), a vendor library's path, or file.yaml@sim."),
        setting(S, "meter_rate_s", type=click.Choice(_RATES), convert=lambda v: f"{v:g}", callback=lambda c, p, v: float(v), help="The meter's update interval in seconds, sampled at the same rate."),
        setting(S, "meter_ranges", help="auto (auto ranging: a ranging run), keep (as the meter is set) or VOLTS,AMPS fixed, e.g. 15,0.5."),
        setting(S, "meter_sync", type=click.Choice(SYNC_MODES), help=SYNC_HELP),
        setting(S, "idle_seconds", type=click.FloatRange(min=0), help="Measure the idle baseline (lpcvc-2020's idle power) with --meter for this long before the run."),
        click.option("--idle-baseline", type=click.Path(path_type=Path), help="Idle baseline written by `lpirc meter idle --out`, for lpcvc-2020's idle power."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _meter_options(fn):
    opts = [
        click.argument("meter", metavar="KIND:RESOURCE"),
        setting(MeterConfig, "visa_library", help="VISA library: @py (pyvisa-py), a vendor library's path, or file.yaml@sim."),
        setting(MeterConfig, "rate_s", type=click.Choice(_RATES), convert=lambda v: f"{v:g}", callback=lambda c, p, v: float(v), help="The meter's update interval in seconds, sampled at the same rate."),
        setting(MeterConfig, "ranges", help="auto, keep (as the meter is set) or VOLTS,AMPS fixed, e.g. 15,0.5."),
        setting(MeterConfig, "sync", type=click.Choice(SYNC_MODES), help=SYNC_HELP),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _config(meter: str, visa_library: str, rate_s: float, ranges: str,
            sync: str = "update") -> MeterConfig:
    try:
        check_config(meter, rate_s, ranges, sync)
    except MeterError as e:  # a bad address or setting is a usage error (exit 2)
        raise click.UsageError(str(e)) from None
    return MeterConfig(spec=meter, visa_library=visa_library, rate_s=rate_s, ranges=ranges,
                       sync=sync)


@click.group("meter")
def meter_group() -> None:
    """A power meter lpirc reads itself: a Yokogawa WT310 over VISA (the meter extra)."""


@meter_group.command("list")
@click.option("--visa-library", default=DEFAULT_VISA_LIBRARY, show_default=True, help="VISA library whose resources are listed.")
def list_cmd(visa_library: str) -> None:
    """VISA resources, the ones that look like meters lpirc drives marked."""
    found = list_meters(visa_library)
    if not found:
        click.echo(f"no VISA resources found with {visa_library} (a USB meter needs pyusb, "
                   "libusb and permission: see docs/meter.md)")
    for res, kind in found:
        click.echo(f"{kind or '-':<6} {res}" + (f"    (--meter {kind}:{res})" if kind else ""))


@meter_group.command("read")
@_meter_options
def read_cmd(meter: str, visa_library: str, rate_s: float, ranges: str, sync: str) -> None:
    """One reading of the meter, for the bench."""
    cfg = _config(meter, visa_library, rate_s, ranges, sync)
    m = open_meter(cfg.spec, cfg.visa_library, cfg.timeout_s)
    try:
        m.configure(cfg.rate_s, cfg.ranges, cfg.sync)
        time.sleep(m.rate_s)  # one update with the settings just made
        r = m.read(with_ranges=True)
        spec = m.accuracy()
        errs = m.errors()
    finally:
        m.close()
    i = m.info
    power = "over range" if r.over_range else "no data" if r.watts is None else f"{r.watts:g} W"
    how = ("one data update, waited for (:COMMunicate:WAIT)" if cfg.sync == "update" else
           "polled: read now, not synchronised with the meter's updates")
    click.echo("\n".join([
        f"meter      {i.maker} {i.model}, serial {i.serial}, firmware {i.firmware} ({i.resource})"
        + (", SIMULATED (not a meter)" if i.simulated else ""),
        f"power      {power}" + (f" +- {spec.bound_w(r.watts, r.ranges.watts):.3g} W (meter spec)"
                                 if r.valid and r.ranges.watts else ""),
        f"voltage    {r.volts} V" if r.volts is not None else "voltage    -",
        f"current    {r.amps} A" if r.amps is not None else "current    -",
        f"ranges     {r.ranges.describe()}",
        f"interval   {m.rate_s:g} s",
        f"sync       {how}",
        f"accuracy   {spec.describe()}",
        f"errors     {'; '.join(errs) if errs else 'none'}",
    ]))


@meter_group.command("log")
@_meter_options
@click.option("--out", required=True, type=click.Path(path_type=Path), help="CSV file (the --power-log format: timestamp,watts,...).")
@click.option("--seconds", type=click.FloatRange(min=0), help="Stop after this long. Default: until Ctrl-C.")
def log_cmd(meter: str, visa_library: str, rate_s: float, ranges: str, sync: str, out: Path,
            seconds: float | None) -> None:
    """Log the meter into a CSV until Ctrl-C, for a run on another device (`lpirc run
    --power-log FILE`)."""
    cfg = _config(meter, visa_library, rate_s, ranges, sync)
    if seconds is None:
        click.echo(f"lpirc meter: logging {meter} to {out} (Ctrl-C stops)", err=True)
    with stop_signals():  # SIGTERM ends the log as Ctrl-C does: file complete, summary printed
        log = log_meter(cfg, out, seconds)
    click.echo(log.summary())
    lost = log.lost_error()
    if lost is not None:  # the readings taken are written; the exit code says it was lost
        raise lost


@meter_group.command("idle")
@_meter_options
@click.option("--seconds", type=click.FloatRange(min=1), default=60.0, show_default=True, help="How long the device idles while the meter measures.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the baseline here (JSON) for `lpirc run --idle-baseline`.")
def idle_cmd(meter: str, visa_library: str, rate_s: float, ranges: str, sync: str,
             seconds: float, out: Path | None) -> None:
    """Measure the idle power: the baseline lpcvc-2020 subtracts."""
    cfg = _config(meter, visa_library, rate_s, ranges, sync)
    if out is not None:
        check_out(out, "idle baseline")  # before measuring for --seconds
    base = measure_idle(cfg, seconds)
    unc = "" if base["uncertainty_w"] is None else f" +- {base['uncertainty_w']:.3g} W (meter spec)"
    click.echo(f"idle power {base['watts']:.4g} W{unc} ({base['method']})")
    if out is not None:
        try:
            Path(out).write_text(json.dumps(base, indent=2) + "\n")
        except OSError as e:  # checked before measuring; a race
            raise InputError(f"{out}: cannot write the idle baseline ({e.strerror or e}); "
                             f"measured: {json.dumps(base)}") from None
        click.echo(f"written to {out} (lpirc run --idle-baseline {out})")


@meter_group.command("post")
@_meter_options
@click.option("--referee", "url", required=True, help="The referee, e.g. http://10.0.0.1:8000.")
@click.option("--user", required=True, help="The referee's meter account (lpirc referee add-team NAME --meter).")
@click.option("--password", required=True, envvar="LPIRC_METER_PASSWORD", help="Its password (or $LPIRC_METER_PASSWORD).")
@click.option("--team", required=True, help="The team whose device the meter measures now.")
@click.option("--seconds", type=click.FloatRange(min=0), help="Stop after this long. Default: until Ctrl-C.")
def post_cmd(meter: str, visa_library: str, rate_s: float, ranges: str, sync: str, url: str,
             user: str, password: str, team: str, seconds: float | None) -> None:
    """Post the meter's readings to the referee's /powermeter for a team (LPIRC's meter)."""
    from lpirc.meters.post import post_readings  # httpx: the referee extra

    cfg = _config(meter, visa_library, rate_s, ranges, sync)
    try:
        with stop_signals():  # SIGTERM stops the posting as Ctrl-C does
            n = post_readings(cfg, url, user, password, team, seconds,
                              echo=lambda s: click.echo(s, err=True))
    except KeyboardInterrupt:
        click.echo("lpirc meter: stopped", err=True)
        return
    click.echo(f"{n} readings posted to {url} for {team}")
