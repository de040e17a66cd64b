"""Choosing the guidance scale w for notebook 03's hand-in: sample every label set at a w and score it with the
course evaluator (``sample_and_score``), sweep many w with a fast sampler (``guidance_sweep``), keep the few
best (``candidate_scales``), sample those again with the hand-in sampler and hand in the best (``best_run``).

Classifier-free guidance: ε = ε_uncond + w · (ε_cond − ε_uncond); w = 0 is unconditional, w = 1 plain
conditional, w > 1 guided. This w is 1 + the w of Ho & Salimans (2022), who write (1 + w)·ε_cond − w·ε_uncond.
Two passes, because a fast sampler and the hand-in sampler can rank w differently: the sweep gives the shape,
the hand-in sampler the numbers handed in. ``utils.handin`` runs these steps for the notebook and the CLI.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm.auto import tqdm

from . import devices, diffusion, viz
from .devices import model_device
from .iclevr_accuracy import Accuracy, accuracy, as_saved


@dataclass
class GuidanceRun:
    """One guidance scale, sampled for every label set: the samples and their course accuracy."""

    guidance_scale: float
    samples: dict[str, diffusion.SampleResult]
    scores: dict[str, Accuracy]

    @property
    def mean(self) -> float:
        """The mean of the sets' accuracies: the number that ranks w, in the sweep (``candidate_scales``) too."""
        return sum(a.value for a in self.scores.values()) / len(self.scores)

    def row(self) -> dict:
        return {"guidance_scale": self.guidance_scale, **{n: a.value for n, a in self.scores.items()}}


def sample_and_score(model, schedule: diffusion.NoiseSchedule, evaluator: nn.Module | None,
                     label_sets: dict[str, torch.Tensor], guidance_scale: float, *, image_shape: tuple[int, int, int],
                     sampler: str, num_inference_steps: int, seed: int = 0, clip_sample: bool = True,
                     num_frames: int = 0, mixed_precision: str = "auto", progress: bool = True,
                     guidance_mix=diffusion.mix_guidance) -> GuidanceRun:
    """One image per label list of each set at guidance scale w, scored as saved (8-bit) by ``evaluator``
    (no scores without one). Every set starts from the noise of ``seed``. ``guidance_mix``: see
    ``diffusion.guided_noise``. Writes nothing."""
    samples, scores = {}, {}
    for name, labels in label_sets.items():
        samples[name] = diffusion.sample(model, schedule, len(labels), image_shape, sampler=sampler,
                                         num_inference_steps=num_inference_steps, labels=labels,
                                         guidance_scale=float(guidance_scale), seed=seed, num_frames=num_frames,
                                         clip_sample=clip_sample, mixed_precision=mixed_precision, progress=progress,
                                         guidance_mix=guidance_mix)
        if evaluator is not None:
            scores[name] = accuracy(evaluator, as_saved(samples[name].images), labels)
    return GuidanceRun(float(guidance_scale), samples, scores)


def guidance_sweep(model, schedule: diffusion.NoiseSchedule, evaluator: nn.Module,
                   label_sets: dict[str, torch.Tensor], guidance_scales, *, image_shape: tuple[int, int, int],
                   sampler: str = "sde-dpm", num_inference_steps: int = 50, seed: int = 0,
                   clip_sample: bool = True, mixed_precision: str = "auto", progress: bool = True,
                   guidance_mix=diffusion.mix_guidance) -> list[dict]:
    """Course accuracy of each label set at each guidance scale w; one row per w.

    Every w starts from the same noise (``seed``), so rows differ only by w. label_sets: name →
    multi-hot (N, K). Rows: {"guidance_scale": w, name: accuracy}. ``guidance_mix``: see ``diffusion.guided_noise``.
    """
    return [sample_and_score(model, schedule, evaluator, label_sets, w, image_shape=image_shape, sampler=sampler,
                             num_inference_steps=num_inference_steps, seed=seed, clip_sample=clip_sample,
                             mixed_precision=mixed_precision, progress=False, guidance_mix=guidance_mix).row()
            for w in tqdm(list(guidance_scales), desc="guidance sweep", disable=not progress)]


def candidate_scales(rows: list[dict], top: int, also: float | None = None) -> list[float]:
    """The ``top`` guidance scales of a sweep by accuracy over all sets (mean of the set columns), and
    ``also`` (e.g. the config's w), in increasing order: the ones worth sampling with the hand-in sampler."""
    names = [k for k in rows[0] if k != "guidance_scale"]
    ranked = sorted(rows, key=lambda r: -sum(r[n] for n in names))
    chosen = {r["guidance_scale"] for r in ranked[:top]} | ({float(also)} if also is not None else set())
    return sorted(chosen)


def best_run(runs: list[GuidanceRun]) -> GuidanceRun:
    """The run with the highest accuracy over all sets; ties go to the smaller w (more diverse images)."""
    return max(sorted(runs, key=lambda r: r.guidance_scale), key=lambda r: r.mean)


def seconds_per_sampling_step(model, labels: torch.Tensor, image_shape: tuple[int, int, int], *,
                              guidance: bool = True, mixed_precision: str = "auto", repeats: int = 3) -> float:
    """Median time of one sampling step (one network evaluation, two with guidance) for ``len(labels)``
    images on the model's device: steps × this × sets × scales = what a sampling plan will take."""
    import statistics
    import time

    device = model_device(model) or torch.device("cpu")
    xt = torch.zeros(len(labels), *image_shape, device=device)
    t = torch.tensor([0], device=device)
    labels = labels.to(device)
    times = []
    with torch.no_grad(), devices.autocast(device, mixed_precision):
        for _ in range(repeats + 1):                                 # the first one warms up
            start = time.perf_counter()
            diffusion.guided_noise(model, xt, t, labels, 2.0 if guidance else 1.0).sum().item()   # .item() waits for it
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def format_sweep(rows: list[dict]) -> str:
    """The sweep as a fixed-width text table, one line per w."""
    names = [k for k in rows[0] if k != "guidance_scale"]
    lines = ["     w  " + "  ".join(f"{n:>9s}" for n in names)]
    lines += [f"{r['guidance_scale']:6.2f}  " + "  ".join(f"{r[n]:9.4f}" for n in names) for r in rows]
    return "\n".join(lines)


def save_sweep(rows: list[dict], csv_path: str | Path, plot_path: str | Path | None = None):
    """Write the sweep rows as CSV and, with ``plot_path``, a plot of accuracy against w; return the figure."""
    names = [k for k in rows[0] if k != "guidance_scale"]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["guidance_scale", *names])
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    scales = [r["guidance_scale"] for r in rows]
    for name in names:
        ax.plot(scales, [r[name] for r in rows], marker="o", label=name)
    ax.axhline(0.8, color="gray", linestyle="--", linewidth=1, label="0.8 (full marks)")
    ax.set_xlabel("guidance scale w  (0 = unconditional, 1 = conditional)")
    ax.set_ylabel("course accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    return viz.save_figure(fig, plot_path)
