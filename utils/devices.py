"""Where tensors live and in what precision.

* ``pick_device``: cuda → mps → cpu, whichever this machine has first.
* The **model's device is the one truth**: every helper that takes a model (the loss, the samplers,
  the evaluator, the previews, the widgets) moves what it receives or creates to ``model_device(model)``,
  so a batch on the GPU and a model on the CPU (or the reverse) cannot meet in one operation.
* The precision rule (``resolve_mixed_precision``): bf16 only where the GPU computes it natively
  (compute capability ≥ 8.0: A100, L4, H100…), fp16 with a grad scaler on older GPUs (T4, V100),
  fp32 on CPU and MPS unless asked. Sampling runs under the same rule (``autocast``).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

PRECISIONS = ("auto", "no", "fp16", "bf16")


def pick_device() -> torch.device:
    """cuda → mps → cpu, whichever this machine has first.

    ``DDPM_DEVICE`` overrides the choice: ``cpu`` keeps a GPU free, ``standin`` is the tests'
    stand-in accelerator (``utils.standin``), which makes a host/device mix-up fail on a CPU.
    """
    override = os.environ.get("DDPM_DEVICE", "").strip()
    if override == "standin":
        from . import standin

        return standin.enable()
    if override:
        return torch.device(override)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model) -> torch.device | None:
    """The device of ``model``'s weights (its first parameter, else buffer); None for a function or a
    module without weights, which can run wherever its inputs are."""
    if not isinstance(model, torch.nn.Module):
        return None
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else None


def model_dtype(model) -> torch.dtype:
    """The floating-point dtype of ``model``'s weights (float32 unless someone called ``.half()``)."""
    if not isinstance(model, torch.nn.Module):
        return torch.float32
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def native_bf16(device: torch.device | str | None = None) -> bool:
    """True on CUDA GPUs that compute bf16 in hardware: compute capability 8.0 or newer.

    ``torch.cuda.is_bf16_supported()`` also says True on a T4 (7.5), where bf16 is emulated and slower
    than fp16, so the capability decides here.
    """
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def resolve_mixed_precision(setting: str, device: torch.device | str | None = None) -> str:
    """``"auto"`` → "bf16" on GPUs with native bf16 (compute capability ≥ 8.0), "fp16" on other CUDA GPUs
    (T4, V100: with a grad scaler in training), "no" on CPU and MPS. Other settings are returned as given."""
    if setting not in PRECISIONS:
        raise ValueError(f"mixed_precision={setting!r}: use one of {PRECISIONS}.")
    device = torch.device(device) if device is not None else pick_device()
    if setting == "bf16" and device.type == "cuda" and torch.cuda.is_available() and not native_bf16(device):
        warnings.warn(f"mixed_precision='bf16' on {torch.cuda.get_device_name(device)}, which has no native bf16 "
                      "(compute capability < 8.0): it is emulated and slower than fp16. Use 'auto' or 'fp16'.")
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "no"
    return "bf16" if native_bf16(device) else "fp16"


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device | str, mixed_precision: str = "auto"):
    """The autocast context for inference on ``device`` under the precision rule, or a no-op for fp32.

    "auto" is fp16/bf16 on CUDA only; an explicit "fp16"/"bf16" also applies on the CPU (for tests and
    for checking a recipe). Devices without autocast support get fp32.
    """
    device = torch.device(device)
    precision = resolve_mixed_precision(mixed_precision, device)
    if precision == "no" or device.type not in ("cuda", "cpu", "mps"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])
