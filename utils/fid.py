"""FID and KID of generated images against real ones, by a fixed protocol (CompareConfig holds its numbers).

The features come from torch-fidelity's Inception-v3 (``inception_extractor``), the metrics from
torchmetrics; ``RandomFeatures`` (utils.fixtures) stands in for Inception in smoke runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import to_unit
from .devices import model_device


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


def feature_extractor(kind: str = "inception", weights_path: str | Path | None = None) -> nn.Module:
    """``"inception"``: the FID network (``inception_extractor``); ``"random"``: ``RandomFeatures`` (smoke runs)."""
    if kind == "random":
        from .fixtures import RandomFeatures    # a stand-in: only smoke runs and tests import the fixtures

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
