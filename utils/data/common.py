"""What every dataset shares: the [-1, 1] helpers, decoding image files once into a cached uint8
tensor, and the batch loader that feeds the training loop from that tensor.

Images live as uint8 (N, C, H, W) in [0, 255] — 4× smaller than float32, so a whole dataset fits
on a GPU — and become float in [-1, 1] (the range DDPM works in) one batch at a time.
"""

from __future__ import annotations

import errno
import hashlib
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from ..io import atomic_save, safe_load

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or in a layout we do not know; the message says what to do."""


# ----------------------------------------------------------------------------- value ranges
def to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] → float [-1, 1], the range the model sees."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    return images * 2.0 - 1.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] → [0, 1] for saving and showing, clamped (samples overshoot a little)."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


@dataclass
class ImageSet:
    """A decoded dataset: uint8 images (N, C, H, W), optional labels (N, ...), and where it came from."""

    images: torch.Tensor
    labels: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return len(self.images)


# ----------------------------------------------------------------------------- files → uint8 tensor
def _natural_key(path: Path) -> list:
    """'2.png' before '10.png': numbers in names compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder`` (not in sub-folders), in natural name order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=_natural_key)


def png_bit_depth(path: str | Path) -> int | None:
    """The bit depth a PNG file declares in its header (IHDR), or None for a file that is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(25)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) == 25:
        return head[24]
    return None


def _gray_to_8bit(image: Image.Image, bits: int | None = None) -> Image.Image:
    """A 16- or 32-bit integer grayscale image (PIL mode "I;16…" or "I") as 8-bit "L", scaled by
    255 / (2^bits − 1) (16-bit: value / 257); PIL's ``convert`` would clip every value above 255 to white.

    The depth is the declared one, never guessed from the values (a near-black 16-bit image has only
    small values): ``bits`` (a PNG's header; older PIL opens 16-bit PNGs as mode "I"), else 16 for mode
    "I;16…". Only a mode "I" image of unknown depth (not a PNG) is judged by its values."""
    pixels = np.asarray(image).astype(np.float64)                     # (H, W)
    if bits is None and image.mode.startswith("I;16"):
        bits = 16
    if bits is None:                          # depth unknown: the smallest that holds the values
        bits = next(b for b in (8, 16, 31) if pixels.max(initial=0) <= 2 ** b - 1)
    top = 2 ** bits - 1
    return Image.fromarray(np.clip(np.rint(pixels * 255 / top), 0, 255).astype(np.uint8))


def _decode_one(path: Path, image_size: int, mode: str, flatten_alpha: bool = True) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.mode == "I" or image.mode.startswith("I;16"):
            image = _gray_to_8bit(image, png_bit_depth(path) if image.format == "PNG" else None)
        if flatten_alpha and mode == "RGB" and image.mode in ("RGBA", "LA", "P"):
            # transparent pixels become white, not whatever color hides under alpha = 0
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert(mode)
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)  # like transforms.Resize((s, s))
        return np.asarray(image, dtype=np.uint8)


def decode_images(files: list[Path], image_size: int, mode: str = "RGB", *, progress: bool = True,
                  what: str = "images", threads: int = 8, flatten_alpha: bool = True) -> torch.Tensor:
    """Decode ``files`` into uint8 (N, C, image_size, image_size); C = 1 for mode "L", 3 for "RGB".

    With ``flatten_alpha`` transparent pixels become white; without it alpha is simply dropped
    (PIL's ``convert("RGB")``), keeping whatever color lies under it.

    Files of another size are resized (squashed, not cropped). Unreadable files are collected and
    reported together, by name, in one ``DatasetError``. Decoding runs on a few threads (PIL
    releases the GIL), which matters on Google Drive where every file is a network read.
    """
    from tqdm.auto import tqdm

    if not files:
        raise DatasetError(f"No {what} to decode.")
    channels = {"L": 1, "RGB": 3}[mode]
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    bad: list[str] = []

    def work(i: int) -> None:
        try:
            pixels = _decode_one(files[i], image_size, mode, flatten_alpha)
        except Exception as err:  # PIL raises several types for a broken or non-image file
            bad.append(f"{files[i]} ({type(err).__name__})")
            return
        out[i] = pixels.reshape(image_size, image_size, channels)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        jobs = pool.map(work, range(len(files)))
        for _ in tqdm(jobs, total=len(files), desc=f"Decoding {what}", disable=not progress or len(files) < 500):
            pass
    if bad:
        bad.sort()
        raise DatasetError(f"{len(bad)} of {len(files)} {what} could not be read: {', '.join(bad[:5])}"
                           f"{' …' if len(bad) > 5 else ''}. Delete or replace these files (a partial "
                           "download or unzip is the usual cause), then run again.")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def cache_path(cache_dir: str | Path, prefix: str, files: list[Path], image_size: int) -> Path:
    """``cache_dir/<prefix>_<size>px_<count>_<hash>.pt``, keyed by the files' last two path parts
    (``7/123.jpg``), so the cache still matches when the dataset folder moves (Drive, /content)."""
    names = "\n".join("/".join(Path(f).parts[-2:]) for f in files)
    digest = hashlib.sha1(names.encode()).hexdigest()[:10]
    return Path(cache_dir) / f"{prefix}_{image_size}px_{len(files)}_{digest}.pt"


def load_or_build_cache(path: Path, build: Callable[[], dict]) -> dict:
    """The dict saved at ``path``, or ``build()`` saved there atomically. A cache that cannot be
    read (a half-synced Drive copy) is rebuilt, with a warning, rather than trusted; one that cannot be
    written (a full disk) is skipped with a warning that names the folder."""
    path = Path(path)
    if path.exists():
        try:
            return safe_load(path)
        except Exception as err:
            warnings.warn(f"The cache {path} is unreadable ({type(err).__name__}); decoding the images again.")
    payload = build()
    try:
        atomic_save(payload, path)
    except OSError as err:   # a full disk or quota: the decoded images are fine, only the next start is slower
        full = err.errno in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in str(err)
        warnings.warn(f"Could not write the dataset cache {path} ({'its disk is full: ' if full else ''}"
                      f"{err.strerror or err}); training goes on with the decoded images, and the next start decodes "
                      f"them again. Free space in cache_dir={str(path.parent)!r} (on Colab: Drive's trash or quota) or "
                      "set cache_dir to a folder on another disk.")
    return payload


# ----------------------------------------------------------------------------- batches
def fits_on_device(images: torch.Tensor, device: torch.device | str, *, max_fraction: float = 0.25) -> bool:
    """Should a uint8 image tensor live on ``device``? On the CPU always; on a GPU when it takes at
    most ``max_fraction`` of the free memory (Anime Faces at 64 px: 263 MB of a T4's 15 GB)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() <= max_fraction * free


class BatchLoader:
    """Shuffled batches from a uint8 ``ImageSet``, as dicts {"x0": float [-1, 1], "labels": ...}.

    The whole tensor stays on ``device`` (``keep_on_device``), so a batch is one index, one
    conversion and, with ``hflip``, one flip — no worker processes, no per-image Python. The
    order and the flips of epoch ``e`` depend only on ``(seed, e)``: ``epoch(e, start)`` restarts
    mid-epoch with exactly the batches an uninterrupted run would have seen. With several
    processes, ``rank`` takes every ``world_size``-th image of the shuffled order. Incomplete
    last batches are dropped.
    """

    def __init__(self, dataset: ImageSet, batch_size: int, *, hflip: bool = False, seed: int = 0,
                 device: torch.device | str | None = None, keep_on_device: bool = True,
                 rank: int = 0, world_size: int = 1):
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())   # "cuda" → "cuda:0": comparable
        per_rank = len(dataset) // world_size
        if per_rank < batch_size:
            raise DatasetError(f"{len(dataset)} images make no full batch of batch_size={batch_size}"
                               f"{f' on each of {world_size} processes' if world_size > 1 else ''}. "
                               "Lower batch_size or add images.")
        store = self.device if keep_on_device else torch.device("cpu")
        self.images = dataset.images.to(store)
        self.labels = None if dataset.labels is None else dataset.labels.to(store)
        # A batch gathered on the CPU for a GPU is pinned, so its copy overlaps with the GPU's work.
        # (Pinning the whole tensor would not help: indexing it returns pageable memory.)
        self._pin = store.type == "cpu" and self.device.type == "cuda"
        self.batch_size, self.hflip, self.seed = batch_size, hflip, seed
        self.rank, self.world_size, self.per_rank = rank, world_size, per_rank

    def __len__(self) -> int:
        """Batches per epoch (on this process)."""
        return self.per_rank // self.batch_size

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's image order and flip decisions for ``epoch``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.images), generator=gen)
        flips = torch.rand(len(self.images), generator=gen) < 0.5
        mine = order[self.rank::self.world_size][:self.per_rank]
        return mine, flips[mine]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """The batches of ``epoch``, from batch index ``start``."""
        order, flips = self._plan(epoch)
        order, flips = order.to(self.images.device), flips.to(self.device)   # one copy per epoch, not per batch
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x0 = to_model(self._to_device(self.images[idx]))
            if self.hflip:
                flip = flips[b * self.batch_size:(b + 1) * self.batch_size]
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            batch = {"x0": x0}
            if self.labels is not None:
                batch["labels"] = self._to_device(self.labels[idx])
            yield batch

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on ``self.device``: a no-op when it is there, an asynchronous copy from pinned memory
        to a GPU (safe: every later use runs on the same CUDA stream, after the copy)."""
        if tensor.device == self.device:
            return tensor
        if self._pin:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def __iter__(self) -> Iterator[dict]:
        return self.epoch(0)
