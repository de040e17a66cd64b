"""iCLEVR accuracy exactly as the course evaluator computes it, and choosing the guidance scale w.

The course's ``evaluation_model`` is a torchvision ResNet-18 whose head is
``fc = Sequential(Linear(512, 24), Sigmoid())``, loaded from ``checkpoint.pth['model']``.
Images (B, 3, 64, 64) in [-1, 1] go in; for each image with k true objects it counts how many
of the k highest outputs are true objects. Accuracy = hits summed over the whole set / labels
summed over the whole set, so 32 test images give a multiple of 1/72, new_test of 1/84.
Unlike the course's class this runs on any device and takes the checkpoint path as an argument.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from tqdm.auto import tqdm

from . import devices, diffusion, viz
from .data import to_model, to_unit
from .devices import model_device

EVALUATOR_FILE = "checkpoint.pth"
HELP = ("The evaluator weights checkpoint.pth come with the course's lab files: see data_links.md, "
        "section iCLEVR, then set evaluator_checkpoint to its path.")


class EvaluatorError(RuntimeError):
    """The evaluator checkpoint is missing or not in the course's format. The message says what to do."""


def build_evaluator_network(num_labels: int = 24) -> nn.Module:
    """The course's classifier: torchvision ResNet-18, ``fc = Sequential(Linear(512, 24), Sigmoid())``."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, num_labels), nn.Sigmoid())
    return net


def find_evaluator(path: str | Path | None, data_dir: str | Path) -> Path | None:
    """The evaluator checkpoint: ``path`` if given (an error if it does not exist), else the first
    ``checkpoint.pth`` in data_dir, data_dir/file, data_dir/iclevr; None when there is none."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise EvaluatorError(f"evaluator_checkpoint={str(path)!r} does not exist. {HELP}")
        return path
    data_dir = Path(data_dir)
    return next((p for p in (data_dir / EVALUATOR_FILE, data_dir / "file" / EVALUATOR_FILE,
                             data_dir / "iclevr" / EVALUATOR_FILE) if p.is_file()), None)


def load_evaluator(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The course's ResNet-18 with the weights of ``checkpoint.pth`` (``weights_only=True``), in eval mode.

    Accepts the course's ``{'model': state_dict}``, a bare state dict, and either with DataParallel's
    ``module.`` prefix on every key.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluatorError(f"No evaluator checkpoint at {path}. {HELP}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "Unsupported global" in str(err):  # torch's weights-only unpickler met a Python class or function
            raise EvaluatorError(
                f"{path} contains Python objects beyond tensors, so it is refused for safety (loading it could run "
                "code). If you trust where it came from, load it there and re-save the weights alone: "
                "torch.save({'model': net.state_dict()}, path).") from err
        raise EvaluatorError(f"{path} is not a readable checkpoint ({err}). Download it again. {HELP}") from err
    net = build_evaluator_network()
    net.load_state_dict(_evaluator_state_dict(ckpt, path, net.state_dict()))
    return net.to(device).eval()


def _evaluator_state_dict(ckpt, path: Path, expected: dict) -> dict:
    """The ResNet-18 weights in ``ckpt`` (see ``load_evaluator``), checked against ``expected``'s keys and shapes."""
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if not isinstance(state, dict):
        found = type(state).__name__
    elif state.keys() != expected.keys():
        missing = [k for k in expected if k not in state]
        found = (f"keys {[str(k) for k in list(state)[:3]]}" + (f" … ({len(state)} in all)" if len(state) > 3 else "")
                 + (f", without {missing[:2]}" if missing else ""))
    else:
        bad = next((k for k, v in expected.items() if not torch.is_tensor(state[k]) or state[k].shape != v.shape), None)
        if bad is None:
            return state
        found = f"{bad} of shape {tuple(getattr(state[bad], 'shape', ()))}, not {tuple(expected[bad].shape)}"
    raise EvaluatorError(f"{path} is not the course's evaluator: expected {{'model': state_dict}} of its ResNet-18 "
                         f"(keys like conv1.weight, fc.0.weight; 24 labels); found {found}. {HELP}")


@dataclass
class Accuracy:
    """Course accuracy of one image set: ``hits`` true objects among the top-k, out of ``total`` labels."""

    hits: int
    total: int

    @property
    def value(self) -> float:
        return self.hits / self.total


def count_hits(scores: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    """The course's ``compute_acc`` summed over a set.

    scores: (N, K) classifier outputs; labels: (N, K) multi-hot 0/1. For image i with
    k_i = Σ labels[i] true objects, hits_i = number of true objects among the k_i highest scores.
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must have the same shape.")
    scores, labels = scores.detach().float().cpu(), labels.detach().float().cpu()
    hits = total = 0
    for score, label in zip(scores, labels):
        k = int(label.sum().item())                 # number of true objects
        top = score.topk(k).indices                 # the k highest outputs
        hits += int(label[top].sum().item())
        total += k
    if total == 0:
        raise ValueError("The labels hold no objects: accuracy is undefined.")
    return Accuracy(hits, total)


@torch.inference_mode()
def accuracy(evaluator: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 64) -> Accuracy:
    """Course accuracy of ``images`` (N, 3, 64, 64) in [-1, 1] against multi-hot ``labels`` (N, 24)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images should be (N, 3, 64, 64); got {tuple(images.shape)}.")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label vectors.")
    low, high = images.min().item(), images.max().item()
    if low < -1.01 or high > 1.01:
        raise ValueError(f"images should be in [-1, 1] (model space); found [{low:.2f}, {high:.2f}]. "
                         "Clamp them, or convert with utils.data.to_model.")
    device = model_device(evaluator)          # fp32, as the course's evaluator runs: its numbers stay comparable
    scores = torch.cat([evaluator(images[i:i + batch_size].to(device, torch.float32)).cpu()
                        for i in range(0, len(images), batch_size)])   # (N, 24) in (0, 1)
    return count_hits(scores, labels)


def as_saved(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] → the same images after an 8-bit PNG round trip, still in [-1, 1].

    Scoring these gives the number a grader gets from the handed-in PNGs.
    """
    return to_model((to_unit(images.float()) * 255).round().to(torch.uint8))


def save_accuracy(results: dict[str, Accuracy], path: str | Path, **settings) -> Path:
    """Write ``accuracy.json``: per set its accuracy, hits and labels, plus the sampling ``settings``."""
    payload = {name: {"accuracy": acc.value, "hits": acc.hits, "labels": acc.total} for name, acc in results.items()}
    payload["settings"] = settings
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path


# ----------------------------------------------------------------------------- choosing w
# Classifier-free guidance: ε = ε_uncond + w · (ε_cond − ε_uncond); w = 0 is unconditional, w = 1 plain
# conditional, w > 1 guided. This w is 1 + the w of Ho & Salimans (2022), who write (1 + w)·ε_cond − w·ε_uncond.
# Choosing w for the hand-in takes two passes: a cheap sweep over many w with a fast sampler (its shape),
# then the few best w again with the hand-in sampler (the numbers you hand in), because the two samplers
# can rank w differently.
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
