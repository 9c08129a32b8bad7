"""Where inference runs: ``--delegate cpu | edgetpu | gpu | /path/to/libdelegate.so``.

* ``cpu`` (default): the runtime's own kernels; LiteRT applies XNNPACK by default (int8/uint8
  and float), so nothing is loaded. Recorded as ``"xnnpack"``.
* ``edgetpu``: the Coral Edge TPU runtime (``libedgetpu.so.1`` / ``libedgetpu.1.dylib`` /
  ``edgetpu.dll``) through ``load_delegate``. The model must have been compiled with
  ``edgetpu_compiler`` (it then holds an ``edgetpu-custom-op``). Options such as
  ``{"device": "usb:0"}`` pass through. Only one process may own an Edge TPU.
* ``gpu``: LiteRT 2.x's GPU accelerator (``CompiledModel`` with ``HardwareAccelerator.GPU``),
  which ships in the ai-edge-litert wheel as ``libLiteRtWebGpuAccelerator.so`` (WebGPU through
  Dawn, over Vulkan on Linux). It needs the Vulkan loader (``libvulkan.so.1``) and the GPU
  driver's Vulkan ICD. The classic ``libtensorflowlite_gpu_delegate.so`` is not shipped by any
  pip wheel; if you built one yourself, pass its path as an external delegate.
* anything else: a path (or a library name) of an external TFLite delegate exposing
  ``tflite_plugin_create_delegate``.

Libraries are looked up with ctypes *before* ``load_delegate`` is called: LiteRT 2.x raises
``OSError`` for a missing library and then prints an "Exception ignored ... Traceback" from
``Delegate.__del__``; a user sees one line (a :class:`DelegateError`) instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lpirc.errors import DelegateError

BUILTIN = ("cpu", "edgetpu", "gpu")

EDGETPU_INSTALL_HINT = (
    "install the Edge TPU runtime: https://coral.ai/docs/accelerator/get-started/ , "
    "on Debian/Ubuntu apt-get install libedgetpu1-std"
)
GPU_INSTALL_HINT = (
    "LiteRT's GPU accelerator uses WebGPU over Vulkan: install the Vulkan loader, "
    "e.g. apt-get install libvulkan1, and your GPU driver's Vulkan ICD"
)


def edgetpu_library_name() -> str:
    if sys.platform == "darwin":
        return "libedgetpu.1.dylib"
    if sys.platform.startswith("win"):
        return "edgetpu.dll"
    return "libedgetpu.so.1"


@dataclass(frozen=True)
class DelegateSpec:
    """A parsed ``--delegate`` value."""

    requested: str  # what the user typed
    kind: str  # "cpu" | "edgetpu" | "gpu" | "external"
    library: str | None = None  # library name or path for edgetpu / external
    options: dict = field(default_factory=dict)

    @property
    def ran_name(self) -> str:
        """The name recorded in the manifest as ``delegate.ran`` when it loads."""
        if self.kind == "cpu":
            return "xnnpack"
        if self.kind == "external":
            return f"external:{self.library}"
        return self.kind


def parse_delegate(name: str | None, options: dict | None = None) -> DelegateSpec:
    """``"cpu"`` / ``"edgetpu"`` / ``"gpu"`` / a library path or name -> :class:`DelegateSpec`."""
    name = (name or "cpu").strip()
    low = name.lower()
    opts = dict(options or {})
    if low in ("cpu", "xnnpack", ""):
        return DelegateSpec("cpu", "cpu")
    if low in ("edgetpu", "edge-tpu", "tpu"):
        return DelegateSpec(name, "edgetpu", edgetpu_library_name(), opts)
    if low == "gpu":
        return DelegateSpec(name, "gpu", None, opts)
    return DelegateSpec(name, "external", name, opts)


def delegate_is_exclusive(name: str | None) -> bool:
    """True when only one process at a time may use this delegate (the Edge TPU)."""
    spec = parse_delegate(name)
    if spec.kind == "edgetpu":
        return True
    return spec.kind == "external" and "edgetpu" in Path(spec.library or "").name.lower()


def find_library(name: str) -> tuple[str | None, str | None]:
    """Look a shared library up the way ``dlopen`` would, without involving LiteRT.

    Returns ``(resolved, None)`` when it can be loaded, ``(None, reason)`` when not.
    """
    looks_like_path = os.sep in name or (os.altsep and os.altsep in name) or name.startswith(".")
    if looks_like_path:
        p = Path(name).expanduser()
        if not p.exists():
            return None, f"{name} not found"
        if not p.is_file():
            return None, f"{name} is not a file"
        target = str(p.resolve())
    else:
        target = name
    try:
        ctypes.CDLL(target)
    except OSError as e:
        if not looks_like_path:
            alt = ctypes.util.find_library(_stem(name))
            if alt:
                try:
                    ctypes.CDLL(alt)
                    return alt, None
                except OSError:
                    pass
            if Path(name).is_file():  # dlopen searches the library path, not this folder
                return None, (f"{name} not found in the library search path (for the file in "
                              f"this folder, write ./{name})")
            return None, f"{name} not found"
        why = _first_line(str(e))
        why = why.split(": ", 1)[1] if why.startswith(f"{target}: ") else why  # dlerror repeats it
        return None, f"{name} cannot be loaded ({why})"
    return target, None


def find_library_isolated(name: str) -> tuple[str | None, str | None]:
    """:func:`find_library` in a forked child: a library whose start-up code crashes (or
    starts threads) must not take lpirc, or the workers it forks later, with it."""
    if not hasattr(os, "fork"):
        return find_library(name)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe and leave without cleanup
        code = 0
        try:
            os.close(r)
            os.write(w, json.dumps(find_library(name)).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = f"signal {sig}"
        return None, f"{name} crashed while loading ({signame})"
    try:
        resolved, reason = json.loads(b"".join(chunks).decode())
    except ValueError:
        return None, f"{name} could not be probed (exit code {os.WEXITSTATUS(status)})"
    return resolved, reason


def delegate_error(spec: DelegateSpec, reason: str) -> DelegateError:
    """One line: the delegate as the user named it, then the problem (the name said once)."""
    if spec.kind == "edgetpu":
        return DelegateError(f"edgetpu: {reason} ({EDGETPU_INSTALL_HINT})")
    label = spec.requested
    return DelegateError(f"{label}: {reason.removeprefix(label + ' ')}")


def _stem(name: str) -> str:
    base = name.split(".so")[0].split(".dylib")[0].split(".dll")[0]
    return base[3:] if base.startswith("lib") else base


def _first_line(s: str) -> str:
    for line in str(s).splitlines():
        if line.strip():
            return line.strip()
    return str(s).strip() or "unknown error"


@contextlib.contextmanager
def _quiet_unraisable():
    """Swallow "Exception ignored in ... __del__" reports from LiteRT's Delegate cleanup."""
    old = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = old


def load_tflite_delegate(spec: DelegateSpec, runtime_module):
    """Load an edgetpu / external delegate for the classic Interpreter; None for cpu and gpu.

    Raises :class:`DelegateError` with one line naming the delegate and the problem.
    """
    if spec.kind in ("cpu", "gpu"):
        return None
    label = "edgetpu" if spec.kind == "edgetpu" else spec.requested
    resolved, reason = find_library(spec.library or "")
    if resolved is None:
        raise delegate_error(spec, reason or "not found")
    try:
        lib = ctypes.CDLL(resolved)
        lib.tflite_plugin_create_delegate  # noqa: B018  (AttributeError when absent)
    except AttributeError:
        raise DelegateError(
            f"{label}: not a TFLite external delegate (no tflite_plugin_create_delegate symbol)"
        ) from None
    load = getattr(runtime_module, "load_delegate", None)
    if load is None:
        raise DelegateError(f"{label}: this runtime cannot load external delegates")
    with _quiet_unraisable():
        try:
            return load(resolved if spec.kind == "external" else spec.library, spec.options or None)
        except (ValueError, OSError, RuntimeError, AttributeError) as e:
            msg = " ".join(str(e).split())
            if spec.kind == "edgetpu":
                raise DelegateError(
                    f"edgetpu: the Edge TPU runtime is installed but no usable device was found "
                    f"({msg or 'load_delegate failed'}); is the accelerator plugged in and not "
                    "used by another process?"
                ) from None
            raise DelegateError(f"{label}: failed to load ({msg or type(e).__name__})") from None


def gpu_unavailable_reason(runtime_name: str) -> str | None:
    """Why ``--delegate gpu`` cannot work here, or None when it may (decided at compile time)."""
    if runtime_name != "ai_edge_litert":
        return (
            f"{runtime_name} has no GPU accelerator; install ai-edge-litert>=2.1, or pass the path "
            "of a libtensorflowlite_gpu_delegate.so you built as --delegate"
        )
    try:
        from ai_edge_litert import compiled_model  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"this ai-edge-litert has no CompiledModel API ({_first_line(str(e))})"
    import ai_edge_litert

    pkg = Path(ai_edge_litert.__file__).parent
    if not any(pkg.glob("libLiteRt*GpuAccelerator*")):
        return "this ai-edge-litert wheel ships no GPU accelerator library"
    if sys.platform.startswith("linux"):
        found, _ = find_library("libvulkan.so.1")
        if found is None:
            return f"libvulkan.so.1 not found ({GPU_INSTALL_HINT})"
    return None
