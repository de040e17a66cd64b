"""Where tensors live and in what precision.

* ``pick_device``: cuda → mps → cpu, whichever this machine has first.
* The **model's device is the one truth**: every helper that takes a model (the loss, the samplers,
  the evaluator, the previews, the widgets) moves what it receives or creates to ``model_device(model)``,
  so a batch on the GPU and a model on the CPU (or the reverse) cannot meet in one operation.
* ``CPUThreads``: on a shared CPU, the loops use all threads or half as many, whichever steps faster now.
* The precision rule (``resolve_mixed_precision``): bf16 only where the GPU computes it natively
  (compute capability ≥ 8.0: A100, L4, H100…), fp16 with a grad scaler on older GPUs (T4, V100),
  fp32 on CPU and MPS unless asked. Sampling runs under the same rule (``autocast``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
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


class CPUThreads:
    """All of torch's CPU threads or half as many, whichever steps faster now; re-checked as neighbours come and go.

    Several threads split each operation and wait for each other after it. When another process holds
    one of the cores, every such wait lasts until the descheduled thread runs again: on 2 cores next
    to one busy process, the MNIST "cpu" preset trains at 0.38–1.35 it/s with 2 threads and 4.8–5.2 it/s
    with 1 (benchmarks/results/cpu_threads.md; idle: 7.9–8.9 vs 4.9–5.4). So the loop runs ``window`` steps
    with all threads, ``window`` with half (``fewer``), compares the median step times and keeps the
    faster count until the next check, ``every`` steps after this one. Checking is cheap when all threads
    win (the ``fewer`` window is at most ~2× slower) but costly when a neighbour makes them lose (up to
    13× per step), so each check that picks ``fewer`` doubles the distance to the next one, up to
    ``longest``; a check that picks all threads resets it to ``every``. The price: when the neighbour
    leaves, the loop may run up to ``longest`` steps on ``fewer`` threads (≈ 1.6× slower on 2 idle cores)
    before it notices. A decision younger than ``remember`` seconds (from an earlier loop of this process,
    e.g. training before sampling; counted from the end of that loop, where it was still in force) is
    reused, with the check still due where it was: short sampling runs pay nothing, and a chain of short
    loops still checks on schedule.

    Use it as ``with CPUThreads(device) as threads:`` around the loop and call ``threads.tick()`` at the
    start of every step; leaving the block restores the thread count. Does nothing off the CPU, for
    ``device=None``, or when torch has one thread (e.g. ``OMP_NUM_THREADS=1``). ``clock`` is for tests.
    """

    # this process's last decision: (time.monotonic(), threads, gap, steps left until the next check was due)
    _last: tuple[float, int, int, int] | None = None

    def __init__(self, device, *, every: int = 250, longest: int = 2000, window: int = 5, warmup: int = 3,
                 remember: float = 120.0, clock=time.perf_counter):
        if every <= 2 * window or longest < every:
            raise ValueError(f"every={every} must exceed 2 × window = {2 * window} (a check takes 2 windows) "
                             f"and longest={longest} must be at least every.")
        self.all = torch.get_num_threads()
        self.fewer = max(1, self.all // 2)
        self.active = device is not None and torch.device(device).type == "cpu" and self.all > 1
        self.every, self.longest, self.window, self.clock = every, longest, window, clock
        self.ticks, self.check_at, self.gap = 0, warmup, every   # the next check starts at tick ``check_at``
        self.seconds: dict[int, float] = {}     # threads → median step time at the last check
        self.switched_to_fewer = 0              # how many checks chose ``fewer`` threads
        self.choice: int | None = None          # the thread count in force between checks
        recent = CPUThreads._last
        if self.active and recent is not None and time.monotonic() - recent[0] < remember:
            _, self.choice, gap, left = recent
            self.gap = min(max(gap, every), longest)
            torch.set_num_threads(self.choice)
            self.check_at = max(left, warmup)   # the check stays due where it was: a chain of short loops cannot skip it

    def tick(self) -> None:
        if not self.active:
            return
        phase, now = self.ticks - self.check_at, self.clock()
        self.ticks += 1
        if phase < 0:
            return
        if 0 < phase <= 2 * self.window:        # the step since the last tick ran with the count set then
            self._steps[self.all if phase <= self.window else self.fewer].append(now - self._before)
        if phase == 0:
            self._steps: dict[int, list[float]] = {self.all: [], self.fewer: []}
            torch.set_num_threads(self.all)
        elif phase == self.window:
            torch.set_num_threads(self.fewer)
        elif phase == 2 * self.window:
            self.seconds = {n: statistics.median(times) for n, times in self._steps.items()}
            self.choice = self.fewer if self.seconds[self.fewer] < self.seconds[self.all] else self.all
            self.switched_to_fewer += self.choice == self.fewer
            torch.set_num_threads(self.choice)
            self.gap = min(2 * self.gap, self.longest) if self.choice == self.fewer else self.every
            self.check_at += self.gap
            self._remember()
        self._before = now

    def _remember(self) -> None:
        CPUThreads._last = (time.monotonic(), self.choice, self.gap, self.check_at - self.ticks)

    @classmethod
    @contextlib.contextmanager
    def per_forward(cls, model: torch.nn.Module, **kwargs):
        """``CPUThreads`` for a loop written by hand (notebook 01's ``sample_by_hand``): it ticks once per call
        of ``model``, so each network evaluation counts as a step. ``with CPUThreads.per_forward(model): ...``;
        ``kwargs`` as for ``CPUThreads``. Do not call the library's loops inside (they have their own). The hook
        sees calls of ``model(...)`` (as ``diffusion.predict_noise`` makes them), not ``model.forward(...)``."""
        with cls(model_device(model), **kwargs) as threads:
            handle = model.register_forward_pre_hook(lambda module, args: threads.tick())
            try:
                yield threads
            finally:
                handle.remove()

    def __enter__(self) -> "CPUThreads":
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            if self.choice is not None and self.ticks:   # in force until the loop's end: the next loop starts from it
                self._remember()                # (left ≤ 0 when the loop ended inside a check: the next one checks first)
            torch.set_num_threads(self.all)
