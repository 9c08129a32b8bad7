"""The two checks of ``lpirc submission check`` that read a model's tensors after one invoke
(see submission/check.py's list): ``activations`` (quantized activations whose real range,
scale x 255, is wider than a threshold) and ``depthwise`` (depthwise-conv weights under a
per-tensor scale that lose channels). Each reports through ``emit(name, status, message,
**details)``; the statuses are the check's ``PASS``/``WARN``/``FAIL``/``SKIP``, defined here
once."""

from __future__ import annotations

import numpy as np

from lpirc import runtime as rtm
from lpirc.errors import LpircError

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


def check_quantization(model, rt, x, info, threshold, near_zero, emit) -> None:
    """The activations and depthwise checks, on the tensors of one invoke on ``x``."""
    try:
        it = rtm.make_interpreter(model, runtime=rt, threads=1, default_delegates=False,
                                  preserve_all_tensors=True)
        inp = it.get_input_details()[0]
        if tuple(inp["shape"]) != tuple(x.shape):  # a dynamic input, sized by --input-size
            it.resize_tensor_input(inp["index"], list(x.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], x.astype(info.input.dtype))
        it.invoke()
        details = it.get_tensor_details()
        ops = it._get_ops_details()
    except Exception as e:  # noqa: BLE001
        msg = str(e) if isinstance(e, LpircError) else " ".join(str(e).split())[:200]
        emit("activations", SKIP, f"cannot inspect tensors: {msg}")
        emit("depthwise", SKIP, f"cannot inspect tensors: {msg}")
        return
    by_index = {d["index"]: d for d in details}
    produced = {int(i) for op in ops for i in op["outputs"]}
    produced |= {int(d["index"]) for d in it.get_input_details()}
    n_quantized = _check_activations(it, by_index, produced, threshold, emit)
    _check_depthwise(it, by_index, ops, near_zero, n_quantized, emit)


def _check_activations(it, by_index: dict, produced: set, threshold: float, emit) -> int:
    """Quantized activations whose real range (scale x 255) exceeds ``threshold``, with the
    range seen on the test image; returns how many quantized activations there are."""
    wide, n_quantized, n16 = [], 0, 0
    for i in sorted(produced):
        d = by_index.get(i)
        if d is None or np.dtype(d["dtype"]).name not in ("uint8", "int8", "int16"):
            continue
        scale, zp = d.get("quantization", (0.0, 0))
        if not scale:
            continue
        n_quantized += 1
        n16 += np.dtype(d["dtype"]).name == "int16"
        lo = (np.iinfo(d["dtype"]).min - zp) * scale
        hi = (np.iinfo(d["dtype"]).max - zp) * scale
        # judged by its level (scale): 8 bits over ``threshold`` means a level of threshold/255;
        # an int16 activation has 257x finer levels over the same range
        rng = float(scale) * 255.0
        if rng > threshold:
            item = {"tensor": _short(d["name"]), "range": round(rng, 3), "min": round(float(lo), 3),
                    "max": round(float(hi), 3), "scale": float(scale), "zero_point": int(zp)}
            try:
                v = (it.get_tensor(i).astype(np.float32) - zp) * scale
                item["observed"] = [round(float(v.min()), 3), round(float(v.max()), 3)]
            except Exception:  # noqa: BLE001
                pass
            wide.append(item)
    if wide:
        names = ", ".join(f"{w['tensor']} ({w['min']:g}..{w['max']:g})" for w in wide[:5])
        more = f" and {len(wide) - 5} more" if len(wide) > 5 else ""
        emit("activations", WARN, f"{len(wide)} activation(s) with a range wider than "
                                  f"{threshold:g} (1 level > {threshold / 255:.3g}): {names}{more}",
             threshold=threshold, tensors=wide)
    elif n_quantized == 0:  # a float model: nothing to starve, and a PASS would overstate it
        emit("activations", SKIP, "no quantized activations (a float model)",
             threshold=threshold, tensors=[])
    else:
        of16 = f" ({n16} of them int16: a 16x8 model)" if n16 else ""
        emit("activations", PASS, f"none of {n_quantized} quantized activations{of16} has a "
                                  f"range wider than {threshold:g} (as 8 bits: a level of "
                                  f"{threshold / 255:.3g})", threshold=threshold, tensors=[],
             int16=n16)
    return n_quantized


def _check_depthwise(it, by_index: dict, ops: list, near_zero: int, n_quantized: int,
                     emit) -> None:
    """Depthwise weights under per-tensor scales with all-zero channels, or channels using at
    most ``near_zero`` quantization levels."""
    bad, n_dw, per_channel = [], 0, 0
    for op in ops:
        if op.get("op_name") != "DEPTHWISE_CONV_2D" or len(op["inputs"]) < 2:
            continue
        wi = int(op["inputs"][1])
        d = by_index.get(wi)
        if d is None or np.dtype(d["dtype"]).name not in ("uint8", "int8"):
            continue
        n_dw += 1
        qp = d.get("quantization_parameters", {}) or {}
        scales = np.asarray(qp.get("scales", []))
        if scales.size > 1:
            per_channel += 1
            continue
        zps = np.asarray(qp.get("zero_points", [d.get("quantization", (0, 0))[1]]))
        zp = int(zps.ravel()[0]) if zps.size else 0
        try:
            w = it.get_tensor(wi).astype(np.int32) - zp
        except Exception:  # noqa: BLE001
            continue
        levels = np.abs(w.reshape(-1, w.shape[-1])).max(axis=0)
        zero = [int(c) for c in np.nonzero(levels == 0)[0]]
        near = [int(c) for c in np.nonzero((levels > 0) & (levels <= near_zero))[0]]
        if zero or near:
            bad.append({"tensor": _short(d["name"]), "channels": int(w.shape[-1]), "all_zero": zero,
                        "near_zero": near, "scale": float(scales.ravel()[0]) if scales.size else
                        float(d.get("quantization", (0, 0))[0])})
    if n_dw == 0:
        emit("depthwise", SKIP if n_quantized == 0 else PASS, "no quantized depthwise convolutions",
             tensors=[])
    elif bad:
        desc = "; ".join(f"{b['tensor']}: {len(b['all_zero'])} all-zero, {len(b['near_zero'])} "
                         f"near-zero of {b['channels']} channels" for b in bad[:4])
        emit("depthwise", WARN, f"{len(bad)} depthwise weight tensor(s) with per-tensor scales "
                                f"lose channels: {desc}", near_zero_levels=near_zero, tensors=bad)
    else:
        msg = (f"{n_dw} depthwise weight tensors, none with all-zero or near-zero channels"
               + (f" ({per_channel} per-channel quantized)" if per_channel else ""))
        emit("depthwise", PASS, msg, near_zero_levels=near_zero, tensors=[])


def _short(name: str) -> str:
    """TF1 tensor names join every fused op with ';': keep the first."""
    return str(name).split(";")[0]
