"""A stand-in accelerator for machines without a GPU, so that the tests see device mix-ups.

On a CPU-only machine the "host" and the "device" are the same place, so a model left on the CPU
while its batch sits on the GPU goes unnoticed until a student runs it in Colab. ``enable()``
registers a second device, ``standin``, through PyTorch's PrivateUse1 backend: its tensors hold
their data in ordinary CPU memory (every operation runs the CPU kernel), but they report
``device == standin:0`` and refuse to meet a CPU tensor in one operation, with the same message
CUDA gives:

    Expected all tensors to be on the same device, but found at least two devices, standin:0 and cpu!

What CUDA allows, this allows too: copies between devices (``.to``, ``.cpu()``, ``copy_``),
0-dim CPU tensors next to device tensors, CPU index tensors into a device tensor, ``.item()``
and ``.tolist()``. What CUDA refuses, this refuses: ``.numpy()`` of a device tensor, a device
index into a CPU tensor, a ``torch.Generator`` on the device for CPU work.

``DDPM_DEVICE=standin`` makes ``config.pick_device()`` return it; the tests and every notebook
under nbval run that way (``make test``). Accelerate is pointed at it through its own
``ACCELERATE_TORCH_DEVICE`` setting, so the training loop uses it like a GPU.
"""

from __future__ import annotations

import os

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import return_and_correct_aliasing

NAME = "standin"
DEVICE = f"{NAME}:0"         # a torch.device once enable() has registered the name
_CPU = torch.device("cpu")
_aten = torch.ops.aten
_lib = None  # the torch.library registration, kept alive for the process


def _on_standin(device) -> bool:
    return device is not None and torch.device(device).type == NAME


class StandinTensor(torch.Tensor):
    """A tensor on the stand-in device: CPU data in ``elem``, ``device`` = standin:0."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=DEVICE, requires_grad=elem.requires_grad)

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"{self.elem!r} on {DEVICE}"

    def __format__(self, spec: str) -> str:
        return self.elem.__format__(spec)   # f"{loss:.3f}" works on a device scalar, as on CUDA

    def __tensor_flatten__(self):
        return ["elem"], None               # makes Module.to() swap parameters in place, as for CUDA

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return StandinTensor(inner["elem"])

    def tolist(self):
        return self.elem.tolist()           # like CUDA: a copy to the host

    def numpy(self, *args, **kwargs):
        raise TypeError(f"can't convert {DEVICE} device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")    # CUDA's message

    def __reduce_ex__(self, protocol):
        return self.elem.__reduce_ex__(protocol)   # torch.save writes the data, as it does for a CUDA tensor

    def __deepcopy__(self, memo):
        out = StandinTensor(self.elem.detach().clone())
        if getattr(self, "_is_param", False):
            out = torch.nn.Parameter(out, self.requires_grad)
        memo[id(self)] = out
        return out

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _aten._to_copy.default:
            return _to_copy(args[0], **kwargs)
        if func.overloadpacket is _aten.to:      # reaches here undecomposed under torch.inference_mode()
            return _to(func, args, kwargs)
        if func is _aten._has_compatible_shallow_copy_type.default:
            return False                    # a stand-in tensor never shares a CPU tensor's layout
        if func is _aten.copy_.default:
            _elem(args[0]).copy_(_elem(args[1]), *args[2:], **kwargs)
            return args[0]
        _check_devices(func, args, kwargs)
        inner_args, inner_kwargs = pytree.tree_map(_elem, (args, kwargs))
        target = inner_kwargs.get("device")
        if _on_standin(target):
            inner_kwargs["device"] = _CPU
        out = func(*inner_args, **inner_kwargs)
        if target is not None and not _on_standin(target):
            return out                              # e.g. x.new_zeros(n, device="cpu"): a host tensor
        out = pytree.tree_map_only(torch.Tensor, StandinTensor, out)
        return return_and_correct_aliasing(func, args, kwargs, out)


def _elem(x):
    return x.elem if isinstance(x, StandinTensor) else x


def _to_copy(x, **kwargs):
    target = kwargs.get("device")
    stays = target is None and isinstance(x, StandinTensor)
    kwargs = {**kwargs, "device": _CPU} if (stays or _on_standin(target)) else kwargs
    out = _aten._to_copy.default(_elem(x), **kwargs)
    return StandinTensor(out) if (stays or _on_standin(target)) else out


def _to(func, args, kwargs):
    """The overloads of ``Tensor.to``: the tensor itself when nothing changes, else a copy (``_to_copy``)."""
    x, dtype, target = args[0], kwargs.get("dtype"), kwargs.get("device")
    if func is _aten.to.device:
        target, dtype = args[1], (args[2] if len(args) > 2 else dtype)
    elif func is _aten.to.dtype:
        dtype = args[1] if len(args) > 1 else dtype
    elif func is _aten.to.other:
        target, dtype = args[1].device, args[1].dtype
    same_device = target is None or torch.device(target).type == x.device.type
    if same_device and dtype in (None, x.dtype) and not kwargs.get("copy", False):
        return x
    return _to_copy(x, dtype=dtype, device=target)


# Ops where CUDA accepts CPU tensors next to device tensors: the indices of an indexing op.
_INDEXING = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default}


def _check_devices(func, args, kwargs) -> None:
    """Refuse what CUDA refuses: a CPU tensor in the same operation as a stand-in tensor, except as a 0-dim
    scalar of an elementwise op or as the indices of an indexing op; a CPU generator for device random numbers."""
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not any(isinstance(t, StandinTensor) for t in tensors):
        return
    generator = kwargs.get("generator")
    if generator is not None and generator.device.type != NAME:
        raise RuntimeError(f"Expected a '{NAME}' device type for generator but found '{generator.device.type}' "
                           f"(when calling {func})")
    if func in _INDEXING:
        if not isinstance(args[0], StandinTensor):
            raise RuntimeError(f"indices should be either on cpu or on the same device as the indexed tensor (cpu) "
                               f"(when calling {func})")
        tensors = [args[0], *args[2:3]]                  # indices may stay on the host; the values may not
    scalars_ok = torch.Tag.pointwise in func.tags       # CUDA takes 0-dim CPU scalars in elementwise ops only
    host = [t for t in tensors if not isinstance(t, StandinTensor) and (t.dim() > 0 or not scalars_ok)]
    if host:
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{DEVICE} and {host[0].device}! (when calling {func}; a tensor of shape "
                           f"{tuple(host[0].shape)} is on the CPU)")


def _empty(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return StandinTensor(torch.empty(size, dtype=dtype, layout=layout, device=_CPU, memory_format=memory_format))


def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return StandinTensor(torch.empty_strided(size, stride, dtype=dtype, layout=layout, device=_CPU))


def _copy_from(src, dst, non_blocking=False):
    _elem(dst).copy_(_elem(src))
    return dst


def enable() -> torch.device:
    """Register the stand-in device (once per process) and point Accelerate at it; return it."""
    global _lib, DEVICE
    if _lib is None:
        setup = getattr(torch.utils.backend_registration, "_setup_privateuseone_for_python_backend", None)
        if setup is None:
            raise RuntimeError(f"The stand-in device needs torch >= 2.9 (a Python PrivateUse1 backend); this is torch "
                               f"{torch.__version__}. Upgrade torch, or run without the host/device check: "
                               "DDPM_DEVICE=cpu.")
        setup(NAME)
        DEVICE = torch.device(NAME, 0)
        _lib = torch.library.Library("aten", "IMPL")
        _lib.impl("empty.memory_format", _empty, "PrivateUse1")      # factories: torch.randn(..., device=DEVICE)
        _lib.impl("empty_strided", _empty_strided, "PrivateUse1")
        _lib.impl("_copy_from", _copy_from, "PrivateUse1")           # torch.tensor([...], device=DEVICE)
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", str(DEVICE))
    return DEVICE
