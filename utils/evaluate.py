"""iCLEVR accuracy exactly as the course evaluator computes it, and the guidance-scale sweep.

The course's ``evaluation_model`` is a torchvision ResNet-18 whose head is
``fc = Sequential(Linear(512, 24), Sigmoid())``, loaded from ``checkpoint.pth['model']``.
Images (B, 3, 64, 64) in [-1, 1] go in; for each image with k true objects it counts how many
of the k highest outputs are true objects. Accuracy = hits summed over the whole set / labels
summed over the whole set, so 32 test images give a multiple of 1/72, new_test of 1/84.
Unlike the course's class this runs on any device and takes the checkpoint path as an argument.
"""

from __future__ import annotations

import csv
import hashlib
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
from .io import atomic_save, previous_path

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


def write_evaluator_fixture(path: str | Path, *, seed: int = 0) -> Path:
    """Write a randomly initialised evaluator in the official format ``{'model': state_dict}``.

    For tests and smoke runs only: its accuracies are meaningless. The global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_evaluator_network()
        for m in net.modules():  # make BatchNorm's eval-mode statistics non-trivial, as in trained weights
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return atomic_save({"model": net.state_dict()}, path)


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
                     num_frames: int = 0, mixed_precision: str = "auto", progress: bool = True) -> GuidanceRun:
    """One image per label list of each set at guidance scale w, scored as saved (8-bit) by ``evaluator``
    (no scores without one). Every set starts from the noise of ``seed``. Writes nothing."""
    samples, scores = {}, {}
    for name, labels in label_sets.items():
        samples[name] = diffusion.sample(model, schedule, len(labels), image_shape, sampler=sampler,
                                         num_inference_steps=num_inference_steps, labels=labels,
                                         guidance_scale=float(guidance_scale), seed=seed, num_frames=num_frames,
                                         clip_sample=clip_sample, mixed_precision=mixed_precision, progress=progress)
        if evaluator is not None:
            scores[name] = accuracy(evaluator, as_saved(samples[name].images), labels)
    return GuidanceRun(float(guidance_scale), samples, scores)


def guidance_sweep(model, schedule: diffusion.NoiseSchedule, evaluator: nn.Module,
                   label_sets: dict[str, torch.Tensor], guidance_scales, *, image_shape: tuple[int, int, int],
                   sampler: str = "ddim", num_inference_steps: int = 50, seed: int = 0,
                   clip_sample: bool = True, mixed_precision: str = "auto", progress: bool = True) -> list[dict]:
    """Course accuracy of each label set at each guidance scale w; one row per w.

    Every w starts from the same noise (``seed``), so rows differ only by w. label_sets: name →
    multi-hot (N, K). Rows: {"guidance_scale": w, name: accuracy}.
    """
    return [sample_and_score(model, schedule, evaluator, label_sets, w, image_shape=image_shape, sampler=sampler,
                             num_inference_steps=num_inference_steps, seed=seed, clip_sample=clip_sample,
                             mixed_precision=mixed_precision, progress=False).row()
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


# ----------------------------------------------------------------------------- FID and KID
# The protocol (CompareConfig holds the numbers, notebook 04 states them):
#   * generated: N images per model (default 5,000; the DDPM with its fast sampler), noise seeded by `seed`;
#   * real: N training images drawn at random with the same seed (`pick_real`);
#   * both as uint8 (model space [-1, 1] → [0, 255], as a saved PNG), gray copied to 3 channels;
#   * resized to 299×299 by the library (torch-fidelity's TF1-compatible bilinear, as in the original
#     FID code) and fed to Inception-v3; FID and KID use its 2048-d pool features;
#   * FID = ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½) (torchmetrics); KID = unbiased MMD² with the
#     kernel k(x, y) = (xᵀy / d + 1)³, mean ± std over `kid_subsets` subsets of `kid_subset_size`.
# FID depends on N (it is biased upwards for small N): compare numbers only at the same N.
# IS is not reported: it scores how confidently an ImageNet classifier sees ImageNet classes, which is
# meaningful for natural multi-class images (CIFAR-10, ImageNet) but not for digits or anime faces.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
# Its SHA-256 (95,628,359 bytes), as pinned by independent projects' download manifests; the first 8 digits are
# the file name's suffix, torch hub's convention.
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


class InceptionWeightsError(RuntimeError):
    """The Inception-v3 weights for FID/KID could not be loaded. The message says how to point at a local copy."""


def inception_extractor(weights_path: str | Path | None = None) -> nn.Module:
    """torch-fidelity's Inception-v3 (the FID network) through torchmetrics: uint8 (B, 3, H, W) → (B, 2048).

    ``weights_path``: a local copy of ``weights-inception-2015-12-05-6726825d.pth``; None downloads it
    once into torch hub's cache. Either file is checked (``verify_inception_weights``) before use.
    """
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:
        raise ImportError("FID/KID need torchmetrics and torch-fidelity: pip install torchmetrics torch-fidelity") from err
    if weights_path:
        weights_path = Path(weights_path).expanduser()
        if not weights_path.is_file():
            raise InceptionWeightsError(f"inception_weights={str(weights_path)!r} does not exist. " + _inception_help())
    else:
        weights_path = _cached_inception_weights()
    verify_inception_weights(weights_path)  # torch-fidelity unpickles it with weights_only=False: check it first
    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=str(weights_path), antialias=False)
    except Exception as err:  # a file that is not these weights
        raise InceptionWeightsError(f"Could not load the Inception-v3 weights for FID/KID ({type(err).__name__}: "
                                    f"{err}). " + _inception_help()) from err


def _cached_inception_weights() -> Path:
    """torch hub's copy of the Inception weights, downloaded (hash-checked by torch hub) if it is not there."""
    import torch.hub

    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(INCEPTION_URL, str(path), hash_prefix=INCEPTION_SHA256)
        except Exception as err:  # no internet, a broken or wrong download
            raise InceptionWeightsError(f"Could not download the Inception-v3 weights for FID/KID "
                                        f"({type(err).__name__}: {err}). " + _inception_help()) from err
    return path


def verify_inception_weights(path: str | Path) -> None:
    """Raise ``InceptionWeightsError`` unless ``path`` is the official Inception weights file.

    Its SHA-256 must be ``INCEPTION_SHA256``, and it must load with ``weights_only=True`` (tensors only):
    a pickle that would run code is refused without running it.
    """
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    redo = "Delete it and use the official file instead. " + _inception_help()
    if sha.hexdigest() != INCEPTION_SHA256:
        raise InceptionWeightsError(f"{path} is not the official Inception-v3 weights: its SHA-256 is "
                                    f"{sha.hexdigest()}, expected {INCEPTION_SHA256}. {redo}")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InceptionWeightsError(f"{path} has the expected SHA-256 but holds more than tensors "
                                    f"({type(err).__name__}), so it is refused for safety. {redo}") from err


def _inception_help() -> str:
    import torch.hub

    return (f"Download {INCEPTION_URL} on a machine with internet (91 MB), copy it here, and set "
            f"inception_weights='/path/to/{INCEPTION_FILE}' (the notebook's parameter, CompareConfig."
            f"inception_weights, or the weights_path argument), or put it in torch hub's cache "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'}.")


class RandomFeatures(nn.Module):
    """A small fixed random conv net: uint8 (B, 3, H, W) → (B, num_features). For tests and smoke runs:
    it makes the FID/KID code run without Inception weights; its numbers mean nothing."""

    def __init__(self, num_features: int = 16, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, num_features, 4, 2, 1),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = num_features
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 127.5 - 1)


def feature_extractor(kind: str = "inception", weights_path: str | Path | None = None) -> nn.Module:
    """``"inception"``: the FID network (``inception_extractor``); ``"random"``: ``RandomFeatures`` (smoke runs)."""
    if kind == "random":
        return RandomFeatures()
    if kind == "inception":
        return inception_extractor(weights_path)
    raise ValueError(f"feature extractor {kind!r}: use 'inception' or 'random'.")


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] (float) or uint8 [0, 255] → uint8 (B, 3, H, W); gray is copied to 3 channels."""
    if images.dtype != torch.uint8:
        images = (to_unit(images) * 255).round().to(torch.uint8)     # as a saved PNG
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def pick_real(images: torch.Tensor, num: int, *, seed: int = 0) -> torch.Tensor:
    """``num`` training images (uint8 (N, C, H, W)) drawn without replacement with ``seed``: the real side of FID."""
    if num > len(images):
        raise ValueError(f"FID asks for {num} real images but the training set has {len(images)}: "
                         "lower fid_num_samples.")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:num]]


@torch.inference_mode()
def extract_features(images: torch.Tensor, extractor: nn.Module, *, batch_size: int = 250,
                     progress: bool = True) -> torch.Tensor:
    """Features (N, D) float64 on the CPU of images (N, C, H, W), uint8 or in [-1, 1], through ``extractor``
    on its device, in fp32 (FID's features are defined in fp32)."""
    device = model_device(extractor)
    out = [extractor(to_uint8_rgb(images[i:i + batch_size]).to(device)).double().cpu()
           for i in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False)]
    return torch.cat(out)


class _Precomputed(nn.Module):
    """Hands precomputed features to a torchmetrics metric (its ``update`` calls ``feature(imgs)``)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets real (N, D) and fake (M, D): ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^½),
    computed by torchmetrics' ``FrechetInceptionDistance``."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid_subset_for(requested: int, num_real: int, num_fake: int) -> int:
    """KID's subset size: ``requested``, or half the smaller set when that has no more images, so the
    subsets differ and their spread (the ± of KID) means something; a subset of every image has none."""
    n = min(num_real, num_fake)
    return requested if requested < n else max(2, n // 2)


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, *, subset_size: int = 1000,
                              subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std) between feature sets real (N, D) and fake (M, D), by torchmetrics'
    ``KernelInceptionDistance``: unbiased MMD² with k(x, y) = (xᵀy / D + 1)³ over random subsets."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    subset_size = kid_subset_for(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)                            # the subsets are drawn with torch's RNG
        mean, std = metric.compute()
    return float(mean), float(std)


def sample_in_batches(sample_fn, num_images: int, batch_size: int, *, seed: int = 0, desc: str = "sampling",
                      progress: bool = True) -> torch.Tensor:
    """Call ``sample_fn(n, seed)`` → (n, C, H, W) in [-1, 1] batch by batch; return uint8 (N, C, H, W).

    Batch i uses seed ``seed + i``, so the same settings give the same images. After the first
    batch it prints how long all of them will take.
    """
    import time

    sizes = [min(batch_size, num_images - i) for i in range(0, num_images, batch_size)]
    out = []
    start = time.perf_counter()
    for i, n in enumerate(tqdm(sizes, desc=desc, unit="batch", disable=not progress)):
        out.append((to_unit(sample_fn(n, seed + i).float().cpu()) * 255).round().to(torch.uint8))
        if i == 0 and len(sizes) > 1:
            first = time.perf_counter() - start
            print(f"{desc}: {num_images} images in {len(sizes)} batches of {batch_size}; the first took "
                  f"{first:.1f} s, so all will take ≈ {first * len(sizes) / 60:.1f} min.")
    return torch.cat(out)


@dataclass
class FIDResult:
    """FID and KID of one model against the real images, with the sample counts they used."""

    fid: float
    kid_mean: float
    kid_std: float
    num_real: int
    num_fake: int
    kid_subset_size: int                   # below num_real and num_fake (``kid_subset_for``)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, *, kid_subset_size: int = 1000, kid_subsets: int = 100,
            seed: int = 0) -> FIDResult:
    """FID and KID between feature sets real (N, D) and fake (M, D) (from ``extract_features``).

    KID's subsets hold ``kid_subset_size`` images, or half the smaller set when it has no more.
    """
    mean, std = kernel_inception_distance(real, fake, subset_size=kid_subset_size, subsets=kid_subsets, seed=seed)
    return FIDResult(frechet_distance(real, fake), mean, std, len(real), len(fake),
                     kid_subset_for(kid_subset_size, len(real), len(fake)))


# ----------------------------------------------------------------------------- memorisation check
@torch.inference_mode()
def nearest_neighbours(generated: torch.Tensor, train: torch.Tensor, *, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each generated image, its nearest training image by L2 distance in pixel space.

    generated: (N, C, H, W) in [-1, 1]; train: uint8 (M, C, H, W). Returns (distances (N,), indices (N,)),
    distances in [-1, 1] units, on the CPU. A distance near 0 means the model reproduced a training image.
    Runs where ``generated`` is (the training images are moved there chunk by chunk).
    """
    g = generated.float().flatten(1)                                   # (N, D)
    best_d = torch.full((len(g),), float("inf"), device=g.device)
    best_i = torch.zeros(len(g), dtype=torch.long, device=g.device)
    for start in range(0, len(train), chunk):
        t = to_model(train[start:start + chunk].to(g.device)).float().flatten(1)   # (m, D) in [-1, 1]
        d, i = torch.cdist(g, t).min(1)                                # (N,)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return best_d.cpu(), best_i.cpu()


# ----------------------------------------------------------------------------- comparing trained models
def load_trained(model: nn.Module, cfg, notebook: str) -> nn.Module:
    """``model`` with the EMA weights that notebook ``notebook`` saved for ``cfg`` (its checkpoint_dir).

    No checkpoint there: a ``training.CheckpointError`` that names the notebook to run first, the run
    (``cfg.run_name``) and folder it looked for, and the runs that do have a checkpoint.
    """
    from . import training

    path = training.checkpoint_path(cfg.checkpoint_dir)
    if not path.exists() and not previous_path(path).exists():
        run = f"run_name={cfg.run_name!r}" + ("" if cfg.run_name else " (the hand-in run)")
        found = ", ".join(repr(r) for r in trained_runs(cfg)) or "none"
        raise training.CheckpointError(
            f"No trained {cfg.name} model for {run}: no checkpoint at {path}. Run notebook {notebook} first with "
            f"that run_name and the same work dir ({cfg.workdir}), or compare a run that exists (with a checkpoint "
            f"there: {found}); then run this cell again.")
    return training.load_ema_model(model, cfg, path)


def seconds_per_step(model: nn.Module, loss_fn, batch: dict, cfg, *, repeats: int = 3) -> float:
    """Median time of one training iteration of a copy of ``model``, run as ``training.train`` runs it for ``cfg``.

    The same single-process Accelerate setup in ``cfg.mixed_precision`` (``training_precision`` names it),
    an AdamW over ``training.loop_parameters`` only (a DCGAN's G: D takes its own step inside ``loss_fn``),
    ``accelerator.backward``, gradient clipping and the EMA step. Every model timed this way on one device
    gives iterations × this = a fair training-time estimate. ``torch_compile`` is left out (its first
    steps compile).
    """
    import copy
    import statistics
    import time

    from diffusers.training_utils import EMAModel

    from . import training

    accelerator = training.notebook_accelerator(cfg.mixed_precision)
    twin = copy.deepcopy(model).to(accelerator.device).train().requires_grad_(True)   # an EMA twin comes frozen
    if getattr(cfg, "channels_last", False):
        twin = twin.to(memory_format=torch.channels_last)
    trained = list(training.loop_parameters(twin))
    optimizer = torch.optim.AdamW(trained, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=getattr(cfg, "adam_betas", (0.9, 0.999)))
    ema = EMAModel(twin.parameters(), decay=cfg.ema_decay, foreach=True)
    twin, optimizer = accelerator.prepare(twin, optimizer)
    times = []
    for _ in range(repeats + 1):                                      # the first one warms up
        start = time.perf_counter()
        loss = loss_fn(twin, batch)
        accelerator.backward(loss)
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(trained, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(twin.parameters())
        if loss.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def training_precision(cfg) -> str:
    """The precision ``training.train`` trains ``cfg`` in on this machine: "fp16", "bf16" or "fp32"."""
    from .devices import pick_device, resolve_mixed_precision

    precision = resolve_mixed_precision(cfg.mixed_precision, pick_device())
    return "fp32" if precision == "no" else precision


def trained_runs(cfg) -> list[str]:
    """The run_names of ``cfg.name``'s runs with a checkpoint beside ``cfg.checkpoint_dir`` ("" = the hand-in run)."""
    from . import training

    folder = Path(cfg.checkpoint_dir).parent
    return sorted(p.name[len(cfg.name) + 1:] for p in folder.glob(f"{cfg.name}*")
                  if (p.name == cfg.name or p.name.startswith(f"{cfg.name}-"))
                  and training.checkpoint_path(p).exists())


def sampler_steps(sampler: str, num_inference_steps: int, num_train_timesteps: int) -> int:
    """Network evaluations per image of a DDPM sampler: "ddpm" (Algorithm 2) takes all T steps,
    "ddim" and "dpm" ``num_inference_steps``."""
    return num_train_timesteps if sampler == "ddpm" else num_inference_steps


def score_generator(sample_fn, real: torch.Tensor, extractor: nn.Module, cmp, *, num: int | None = None,
                    desc: str = "sampling", progress: bool = True) -> tuple[FIDResult, torch.Tensor]:
    """FID/KID of ``num`` images from ``sample_fn(n, seed)`` against the first ``num`` of the real features
    ``real`` (N, D) (default: as many as there are), by the protocol of ``cmp`` (a ``CompareConfig``).

    Returns the result and the generated images' features (num, D), so a smaller count can be rescored.
    """
    num = len(real) if num is None else num
    images = sample_in_batches(sample_fn, num, cmp.fid_batch_size, seed=cmp.seed, desc=desc, progress=progress)
    fake = extract_features(images, extractor, batch_size=cmp.fid_batch_size, progress=progress)
    return fid_kid(real[:num], fake, kid_subset_size=cmp.kid_subset_size, kid_subsets=cmp.kid_subsets,
                   seed=cmp.seed), fake


def format_fid(rows: list[dict]) -> str:
    """FID/KID rows (data, model, sampler, steps and a ``FIDResult``'s fields) as a fixed-width table."""
    lines = [f"{'data':6s} {'model':6s} {'images from':18s} {'N':>6s} {'FID':>9s} {'KID × 1000':>16s}"]
    for r in rows:
        made_by = f"{r['sampler']}, {r['steps']} step" + ("s" if r["steps"] != 1 else "")
        lines.append(f"{r['data']:6s} {r['model']:6s} {made_by:18s} {r['num_fake']:6d} {r['fid']:9.2f} "
                     f"{r['kid_mean'] * 1e3:8.2f} ± {r['kid_std'] * 1e3:5.2f}")
    return "\n".join(lines)
