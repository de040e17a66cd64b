"""Tiny datasets and stand-ins written in the real on-disk layouts, for smoke runs and tests.

The notebooks' smoke cells, ``python -m utils.cli --preset smoke``, the tests and the benchmarks
use them; a real run never does. Each writer produces what a student's copy looks like on disk
(the course's folders, Kaggle's and Hugging Face's duplicates, torchvision's IDX files, the course's
``checkpoint.pth``), so the loaders are tested on the layouts they meet. Their contents are
meaningless: cartoon faces, flat-shape scenes, a randomly initialised evaluator and feature network.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .data.anime import LAYOUTS
from .data.common import list_images
from .data.iclevr import BUNDLED_LABELS, COLORS, LABEL_FILES, MAX_OBJECTS, MIN_OBJECTS, object_names
from .data.mnist import DIGIT_LAYOUTS, TORCHVISION_FILES, offline_sample
from .iclevr_accuracy import build_evaluator_network
from .io import atomic_save


# ----------------------------------------------------------------------------- MNIST
def _write_idx(path: Path, array: np.ndarray) -> None:
    """One gzipped IDX file, the format of the original MNIST distribution."""
    kind = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, kind, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_fixture(data_dir: str | Path, layout: str = "course", n_per_digit: int = 10) -> Path:
    """Write ``n_per_digit`` real digits per class (from ``offline_sample``) into ``data_dir`` in
    one of the real layouts and return the folder a loader (or a download mirror) reads.

    ``layout``: "course", "teavanist" or "folder" (RGB JPGs in digit folders, named 0.jpg, 1.jpg, …),
    "torchvision" (``MNIST/raw/*-ubyte`` files) or "idx_gz" (the four gzipped IDX files, flat, as
    a download mirror serves them).
    """
    sample = offline_sample()
    picks = torch.cat([torch.nonzero(sample.labels == d).flatten()[:n_per_digit] for d in range(10)])
    images, labels = sample.images[picks, 0].numpy(), sample.labels[picks].numpy()
    data_dir = Path(data_dir)
    if layout in DIGIT_LAYOUTS:
        root = data_dir / DIGIT_LAYOUTS[layout]
        for d in range(10):
            (root / str(d)).mkdir(parents=True, exist_ok=True)
            for k, pixels in enumerate(images[labels == d]):
                Image.fromarray(pixels, "L").convert("RGB").save(root / str(d) / f"{k}.jpg", quality=95)
        return root
    if layout not in ("idx_gz", "torchvision"):
        raise ValueError(f"layout={layout!r}: use one of {sorted([*DIGIT_LAYOUTS, 'idx_gz', 'torchvision'])}.")
    folder = data_dir if layout == "idx_gz" else data_dir / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    if layout == "torchvision":
        for name in TORCHVISION_FILES:
            with gzip.open(folder / f"{name}.gz", "rb") as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return folder


# ----------------------------------------------------------------------------- Anime Faces
def _draw_face(rng: random.Random, size: int) -> Image.Image:
    """A cartoon face in color: background, hair, skin, two eyes, a mouth. (size × size, RGB)."""
    def color(lo=0, hi=255):
        return tuple(rng.randint(lo, hi) for _ in range(3))

    s = size / 64
    image = Image.new("RGB", (size, size), color(150, 255))
    draw = ImageDraw.Draw(image)
    hair, iris = color(0, 200), color(0, 200)
    draw.ellipse([6 * s, 2 * s, 58 * s, 62 * s], fill=hair)
    draw.ellipse([14 * s, 14 * s, 50 * s, 58 * s], fill=(250, 220, 200))
    for x in (20, 36):
        draw.ellipse([x * s, 28 * s, (x + 8) * s, 40 * s], fill=(255, 255, 255))
        draw.ellipse([(x + 1) * s, 30 * s, (x + 7) * s, 40 * s], fill=iris)
    draw.line([28 * s, 49 * s, 36 * s, 49 * s], fill=(200, 60, 60), width=max(1, round(s)))
    draw.rectangle([6 * s, 2 * s, 58 * s, 18 * s], fill=hair)  # fringe
    return image


def write_anime_fixture(data_dir: str | Path, layout: str = "course", n: int = 32, *, seed: int = 0) -> Path:
    """Write ``n`` small cartoon faces into ``data_dir`` in one of the real layouts; return the image folder.

    ``layout``: "course" (``anime_face_dataset/data/<i>.png``), "kaggle" (``data/<i>.png`` plus the
    duplicate ``data/data/``), "huggingface" (``images/<i>.png`` plus ``images/data/``) or "folder".
    Like the real sets it holds an RGBA PNG (``1.png``) and, unlike them, one image that is not
    64×64 (``2.png``, 80×80) so the resize path is exercised. Files are numbered from 1.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {sorted(LAYOUTS)}.")
    if n < 3:
        raise ValueError(f"n={n}: the fixture needs at least 3 images (an RGBA one and an 80×80 one).")
    root = Path(data_dir) / LAYOUTS[layout]
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(1, n + 1):
        face = _draw_face(rng, 80 if i == 2 else 64)
        (face.convert("RGBA") if i == 1 else face).save(root / f"{i}.png")
    if layout in ("kaggle", "huggingface"):
        nested = root / "data"
        nested.mkdir(exist_ok=True)
        for path in list_images(root):
            shutil.copy2(path, nested / path.name)
    return root


# ----------------------------------------------------------------------------- iCLEVR
def draw_scene(names: list[str], rng: random.Random, *, width: int = 320, height: int = 240,
               background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """An RGBA picture of colored flat shapes, one per name ("red cube" → red square; spheres are
    discs, cylinders tall rounded bars), at random non-overlapping places."""
    image = Image.new("RGBA", (width, height), (*background, 255))
    draw = ImageDraw.Draw(image)
    size = min(width, height) // 4                                   # object side
    spots = [(x, y) for x in range(0, width - size + 1, size) for y in range(0, height - size + 1, size)]
    for name, (x, y) in zip(names, rng.sample(spots, len(names))):
        color, shape = name.split(" ")
        fill = (*COLORS[color], 255)
        if shape == "cube":
            draw.rectangle([x + 1, y + 1, x + size - 2, y + size - 2], fill=fill)
        elif shape == "sphere":
            draw.ellipse([x, y, x + size - 1, y + size - 1], fill=fill)
        else:
            draw.rounded_rectangle([x + size // 4, y, x + size - size // 4 - 1, y + size - 1],
                                   radius=size // 6, fill=fill)
    return image


def random_label_lists(n: int, rng: random.Random) -> list[list[str]]:
    """``n`` lists of 1–3 distinct object names, drawn uniformly."""
    names = object_names()
    return [rng.sample(names, rng.randint(MIN_OBJECTS, MAX_OBJECTS)) for _ in range(n)]


def write_iclevr_fixture(root: str | Path, n_scenes: int = 8, *, seed: int = 0) -> Path:
    """Write a small iCLEVR copy in the course layout into ``root`` and return ``root``.

    ``root/iclevr/CLEVR_train_{scene:06d}_{k}.png`` (320×240 RGBA): as in the real set, scene
    images k = 0, 1, 2 add one object each. ``root/train.json`` lists them; objects.json,
    test.json and new_test.json are copies of the course's real files.
    """
    root = Path(root)
    (root / "iclevr").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = {}
    for scene in range(n_scenes):
        names = rng.sample(object_names(), 3)
        for k in range(3):
            file = f"CLEVR_train_{scene:06d}_{k}.png"
            draw_scene(names[:k + 1], random.Random(f"{seed}-{scene}")).save(root / "iclevr" / file)
            train[file] = names[:k + 1]
    (root / "train.json").write_text(json.dumps(train))
    for name in LABEL_FILES:
        shutil.copyfile(BUNDLED_LABELS / name, root / name)
    return root


# ----------------------------------------------------------------------------- stand-in networks
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
