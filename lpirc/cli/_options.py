"""Options more than one command takes, and the rule that a default shown in ``--help`` is the
default of the settings dataclass the option fills (``RunSettings``, ``TuneOptions``,
``RefereeConfig``, ``GateLimits``, ``FleetConfig``): :func:`setting` reads it from there, so each default is
written once, in the library.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

import scoring
from lpirc.demo import demo_holdout_path
from lpirc.preprocess import channel_values, parse_input_size, units_problem
from lpirc.settings import RunSettings, bundled_model, resolve_settings

if TYPE_CHECKING:
    from lpirc.login_gate import GateLimits

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field ``cls.name`` (TypeError when it has none: a
    ``default_factory`` is computed per machine and is not shown as a default)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no default to show")
    return f.default


def setting(cls: type, name: str, *decls: str, convert: Callable[[Any], Any] | None = None,
            **kw: Any) -> Decorator:
    """``click.option`` for field ``name`` of ``cls``: the flag ``--name-with-dashes`` (unless
    ``decls`` says otherwise) and the field's default, shown in ``--help``. ``convert`` turns
    the default into the option's type (e.g. ``str`` for a ``click.Choice`` of strings)."""
    default = field_default(cls, name)
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)),
                        default=convert(default) if convert else default, show_default=True, **kw)


def time_limit_option(cls: type, help: str) -> Decorator:
    """``--time-limit-s``, the wall-clock budget in seconds (LPIRC: 600)."""
    return setting(cls, "time_limit_s", type=click.FloatRange(min=0.1), help=help)


def clock_options(cls: type, clock_help: str, ms_help: str) -> Decorator:
    """``--clock wall|inference`` and ``--ms-per-image``, the inference budget per image."""
    clock = setting(cls, "clock", type=click.Choice(["wall", "inference"]), help=clock_help)
    ms = setting(cls, "ms_per_image", type=click.FloatRange(min=0.001), help=ms_help)
    return lambda fn: clock(ms(fn))


def rules_option(default: type | str | None, help: str, *decls: str) -> Decorator:
    """``--rules``, the rule set a score is computed under (see ``lpirc rules``): every command
    that takes one uses this option, a choice of :data:`scoring.RULES`, so a name mistyped on
    the command line is click's usage error naming ``--rules`` (exit 2); a bad rule set in a
    config or sidecar file stays the library's one line naming the file (exit 5).

    ``default``: a settings dataclass (its ``rules`` field's default is shown), a rule set's
    name, or None (no default: the command then uses each run's own). ``decls``: the option's
    declarations when not ``--rules`` alone (e.g. ``("--rules", "rules_name")``)."""
    kind = click.Choice(list(scoring.RULES))
    if isinstance(default, type):
        return setting(default, "rules", *decls, type=kind, help=help)
    return click.option(*(decls or ("--rules",)), type=kind, default=default,
                        show_default=default is not None, help=help)


DELEGATE_HELP = "cpu (XNNPACK), gpu, edgetpu, or a path to a delegate library."

#: the submission a command runs or measures (run, tune)
MODEL_OPTION = click.option("--model", type=click.Path(path_type=Path),
                            help="Submission .tflite. Default: the bundled reference submission.")


def holdout_options(use: str, scored: str) -> Decorator:
    """``--holdout`` and ``--ground-truth`` of a command that runs the submission over a holdout
    (``run``, ``tune``): the same paths with the same defaults, which
    :func:`settings_from_options` applies (with the bundled model, the generated demo holdout)
    and :mod:`lpirc.preflight` (HOLDOUT/ground_truth.csv where present). ``use``: what the
    command does with the holdout, appended to its help (e.g. " (a sample is measured)");
    ``scored``: what the labels are for ("for scoring")."""
    holdout = click.option("--holdout", type=click.Path(path_type=Path), help=f"Folder of holdout images{use}. Default with the bundled model: the generated demo holdout.")
    truth = click.option("--ground-truth", type=click.Path(path_type=Path), help=f"CSV filename,label {scored}. Default: HOLDOUT/ground_truth.csv if present.")
    return lambda fn: holdout(truth(fn))


def login_options(fn):
    """``--login-*``: the login gate's limits (:class:`~lpirc.login_gate.GateLimits`, its defaults
    shown), for the servers that put it in front of their password checks (``lpirc referee
    serve``, ``lpirc online serve``); :func:`login_limits` reads them back."""
    from lpirc.login_gate import GateLimits  # asyncio (~20 ms): the servers' commands only

    opts = [
        setting(GateLimits, "client_burst", "--login-client-burst", type=click.IntRange(min=1), help="Failed logins one client address may make at once (then one per --login-client-every-s); beyond, 429 with Retry-After, without hashing."),
        setting(GateLimits, "client_every_s", "--login-client-every-s", type=click.FloatRange(min=0.001), help="Seconds per further failed login of one client address."),
        setting(GateLimits, "account_burst", "--login-account-burst", type=click.IntRange(min=1), help="Failed logins to one account name at once, from clients that have failed themselves (then one per --login-account-every-s); beyond, 429."),
        setting(GateLimits, "account_every_s", "--login-account-every-s", type=click.FloatRange(min=0.001), help="Seconds per further failed login to one account name."),
        setting(GateLimits, "hash_workers", "--login-hash-workers", type=click.IntRange(min=1), help="Password checks (scrypt, ~50 ms and 16 MB each) at once, on their own thread(s)."),
        setting(GateLimits, "queue", "--login-queue", type=click.IntRange(min=1), help="Logins waiting for a password check at most (429 beyond; one from a client with no failed login displaces one from a client that has failed)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def login_limits(opts: dict) -> "GateLimits":
    """Pop the :func:`login_options` (``login_<field>``) from a command's ``opts``."""
    from lpirc.login_gate import GateLimits

    return GateLimits(**{f.name: opts.pop(f"login_{f.name}") for f in dataclasses.fields(GateLimits)})


def account_password(password: str | None) -> tuple[str, bool]:
    """The ``--password`` of an ``add-team`` command (the referee's, the online service's), or a
    random one when none is given: (password, whether to print it once). BadParameter for an
    empty one (a login refuses it: never usable)."""
    if password is not None and not password:
        raise click.BadParameter("must not be empty (omit it for a random one)",
                                 param_hint="'--password'")
    return (password, False) if password is not None else (secrets.token_urlsafe(12), True)


def settings_from_options(ctx: click.Context, opts: dict, config: Path | None = None) -> RunSettings:
    """RunSettings from a command's options: the bundled submission and demo holdout when no
    model is given; options typed on the command line win over the config file."""
    explicit = {k for k in opts if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    if opts["model"] is None:
        opts["model"] = bundled_model()
        if opts["holdout"] is None:
            opts["holdout"] = demo_holdout_path()
    if opts["holdout"] is None:
        raise click.UsageError("--holdout is required with --model")
    return resolve_settings(opts, explicit, config)


def check_channels(ctx, param, value):
    """Click callback: --mean/--std syntax checked where it was typed (exit 2, naming it)."""
    if value is not None:
        try:
            vals = channel_values(param.name, value, positive=param.name == "std")
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        problem = units_problem(param.name, vals)
        if problem:
            raise click.BadParameter(problem)
    return value


def _check_input_size(ctx, param, value):
    """Click callback: --input-size must be HxW (or one number for a square)."""
    try:
        parse_input_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


def preprocess_options(fn):
    """The options of RunSettings.preprocess that `run` and `tune` share (see
    docs/preprocessing.md); each also comes from --config or the model's sidecar X.json."""
    opts = [
        click.option("--mean", callback=check_channels,
                     help="Normalisation mean in pixel units 0..255: one number or "
                     "R,G,B (ImageNet: 123.675,116.28,103.53). Float inputs get (pixel - mean) "
                     "/ std (default 127.5); quantized inputs are normalised, then quantized "
                     "with the input's own scale and zero point (default: raw pixel codes)."),
        click.option("--std", callback=check_channels,
                     help="Normalisation std in pixel units: one number or R,G,B "
                     "(ImageNet: 58.395,57.12,57.375). Default 127.5 (float inputs)."),
        click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), help="Channel "
                     "order the model takes. Default: rgb."),
        click.option("--crop", type=click.Choice(["central", "square"]), help="central: "
                     "tf.image.central_crop (TF-slim eval, aspect kept; default); square: the "
                     "TFLite ImageNet eval tool's centred square."),
        click.option("--input-size", callback=_check_input_size, help="HxW for a model whose input height/width are "
                     "dynamic (shape signature -1), e.g. 224x224."),
        click.option("--output", help="Output that answers, by signature name, tensor name or "
                     "index. Default: the one [1, 1000|1001] output."),
        click.option("--idct", type=click.Choice(["fast", "accurate"]), help="JPEG inverse "
                     "DCT: fast = tf.io.decode_jpeg's default (lpirc's default: TF's input "
                     "tensor exactly); accurate = TF's INTEGER_ACCURATE, the pixels Pillow and "
                     "torchvision's PIL loader decode."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn
