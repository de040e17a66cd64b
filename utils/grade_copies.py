"""Copies between hand-ins, and generated images that are training images, from perceptual hashes.

Every generated image (iCLEVR: ``test/*.png`` and ``new_test/*.png``; IMVFX: each cell of the two 5×5
grids) gets a 256-bit perceptual hash (``imagehash.phash`` with ``hash_size=16``: the signs of the
lowest 16×16 DCT coefficients of a 64×64 gray copy). Re-saving leaves it unchanged; resizing and JPEG
round trips flip a few bits; a different image differs in about half. Two images match when at most
``MAX_DISTANCE`` bits differ. Two students' sets are a likely copy when most of the smaller set's images
have a match in the other, each used once: the order of the images does not matter. Blank images (one
flat color: a collapsed model) match each other by nature and are left out of the comparison.

Thresholds from ``benchmarks/grade.py`` (results in ``benchmarks/results/grade.md``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 16           # 16×16 DCT signs: 256 bits per image
MAX_DISTANCE = 40        # bits an image and its copy may differ in (JPEG q50 and resizing stay below it)
MIN_FRACTION = 0.5       # share of the smaller set's images with a copy in the other that flags a pair
MIN_MATCHES = 4          # and at least this many images, so that a set of a few images is not flagged by chance
MIN_STD = 2.0            # gray-level standard deviation (0–255) below which an image is blank
WORDS = HASH_SIZE * HASH_SIZE // 64


def image_hash(image: Image.Image) -> np.ndarray:
    """The image's perceptual hash as ``WORDS`` uint64 words (256 bits)."""
    bits = imagehash.phash(image.convert("RGB"), hash_size=HASH_SIZE).hash    # (16, 16) bool
    return np.packbits(bits.ravel()).view(">u8").astype(np.uint64)


def is_blank(image: Image.Image) -> bool:
    """True when the image is one flat color (no structure to compare)."""
    return float(np.asarray(image.convert("L"), dtype=np.float32).std()) < MIN_STD


def distances(a: np.ndarray, b: np.ndarray, *, block: int = 4096) -> np.ndarray:
    """Hamming distances (bits) between hashes ``a`` (n, WORDS) and ``b`` (m, WORDS): an (n, m) int array."""
    out = np.empty((len(a), len(b)), dtype=np.int32)
    for start in range(0, len(b), block):
        xor = a[:, None, :] ^ b[None, start:start + block, :]
        out[:, start:start + block] = np.bitwise_count(xor).sum(axis=-1)
    return out


@dataclass
class ImageSet:
    """One hand-in's hashed images: ``names[i]`` (``test/3.png``, ``result_anime.jpg[2, 4]``), its hash, blank or not."""

    key: str
    names: list[str]
    hashes: np.ndarray                # (n, WORDS) uint64
    blank: np.ndarray                 # (n,) bool

    def to_json(self) -> dict:
        return {"names": self.names, "hashes": [h.tobytes().hex() for h in self.hashes],
                "blank": [bool(b) for b in self.blank]}

    @classmethod
    def from_json(cls, key: str, data: dict) -> ImageSet:
        hashes = np.array([np.frombuffer(bytes.fromhex(h), dtype=np.uint64) for h in data["hashes"]],
                          dtype=np.uint64).reshape(-1, WORDS)
        return cls(key, list(data["names"]), hashes, np.array(data["blank"], dtype=bool))

    @property
    def informative(self) -> np.ndarray:
        """Indices of the images that are not blank: the ones compared."""
        return np.flatnonzero(~self.blank)


@dataclass
class Match:
    """Image ``i`` of one set and image ``j`` of the other differ in ``distance`` bits."""

    i: int
    j: int
    distance: int


@dataclass
class CopyPair:
    """Two hand-ins (indices into the list given to ``find_copies``) and their matched images."""

    a: int
    b: int
    matches: list[Match]
    compared: int                     # informative images in the smaller set

    @property
    def score(self) -> float:
        """Share of the smaller set's images that have a copy in the other (1.0: all of them)."""
        return len(self.matches) / max(self.compared, 1)


def one_to_one(d: np.ndarray, max_distance: int = MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """Pairs (row, column, distance) with distance ≤ ``max_distance``, closest first, each row and column used once."""
    rows, cols = np.nonzero(d <= max_distance)
    order = np.argsort(d[rows, cols], kind="stable")
    used_r, used_c, out = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            out.append((r, c, int(d[r, c])))
    return out


def compare(a: ImageSet, b: ImageSet, max_distance: int = MAX_DISTANCE) -> tuple[list[Match], int]:
    """The one-to-one matches between two sets' informative images, and how many images the smaller set compares."""
    ia, ib = a.informative, b.informative
    if not len(ia) or not len(ib):
        return [], min(len(ia), len(ib))
    pairs = one_to_one(distances(a.hashes[ia], b.hashes[ib]), max_distance)
    return [Match(int(ia[r]), int(ib[c]), dist) for r, c, dist in pairs], min(len(ia), len(ib))


def find_copies(sets: list[ImageSet], *, max_distance: int = MAX_DISTANCE, min_fraction: float = MIN_FRACTION,
                min_matches: int = MIN_MATCHES, same_owner=None) -> list[CopyPair]:
    """Every pair of sets whose images are copies of each other (see the module doc), highest score first.

    ``same_owner(a, b)``: True for two hand-ins of one student (a re-submission), which are not compared.
    Each set is compared with all later ones in one array operation; only pairs with a close image are
    matched one to one. Memory: one set's images × all images, in blocks.
    """
    owner = np.concatenate([np.full(len(s.informative), k) for k, s in enumerate(sets)] or [np.zeros(0, int)])
    every = np.concatenate([s.hashes[s.informative] for s in sets] or [np.zeros((0, WORDS), np.uint64)])
    pairs = []
    for k, s in enumerate(sets):
        later = owner > k
        if not later.any() or not len(s.informative):
            continue
        close = distances(s.hashes[s.informative], every[later]).min(axis=0) <= max_distance   # per later image
        for other in np.unique(owner[later][close]):
            other = int(other)
            if same_owner is not None and same_owner(k, other):
                continue
            matches, compared = compare(s, sets[other], max_distance)
            pair = CopyPair(k, other, matches, compared)
            if len(matches) >= min_matches and pair.score >= min_fraction:
                pairs.append(pair)
    return sorted(pairs, key=lambda p: (-p.score, p.a, p.b))


# ----------------------------------------------------------------------------- training data
@dataclass
class TrainingHashes:
    """The hashes of a folder of training images (``names`` relative to it)."""

    folder: Path
    names: list[str] = field(default_factory=list)
    hashes: np.ndarray = field(default_factory=lambda: np.zeros((0, WORDS), np.uint64))

    def matches(self, images: ImageSet, max_distance: int = MAX_DISTANCE) -> list[tuple[int, str, int]]:
        """(image index, training file, distance) for each informative image of ``images`` that is a training image."""
        idx = images.informative
        if not len(idx) or not len(self.hashes):
            return []
        d = distances(images.hashes[idx], self.hashes)
        nearest = d.argmin(axis=1)
        return [(int(i), self.names[int(n)], int(d[r, n])) for r, (i, n) in enumerate(zip(idx, nearest))
                if d[r, n] <= max_distance]


def hash_training_images(folder: str | Path, cache_dir: str | Path | None = None, *, progress: bool = True,
                         open_image=None) -> TrainingHashes:
    """Hash every image under ``folder`` (all sub-folders); with ``cache_dir`` the hashes are kept there
    (``.npy``, no pickle) and reused while the files' names, sizes and times are unchanged."""
    from tqdm.auto import tqdm

    from .data.common import IMAGE_SUFFIXES

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not p.is_symlink())
    names = [p.relative_to(folder).as_posix() for p in files]
    listing = "\n".join(f"{n}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}" for n, p in zip(names, files))
    key = hashlib.sha256(f"{HASH_SIZE}\n{listing}".encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"training-{key}.npy" if cache_dir else None
    if cached is not None and cached.is_file():
        return TrainingHashes(folder, json.loads(cached.with_suffix(".json").read_text()),
                              np.load(cached, allow_pickle=False))
    kept, hashes = [], []
    for name, path in tqdm(list(zip(names, files)), desc="hashing training images", disable=not progress):
        try:
            image = open_image(path.read_bytes()) if open_image else Image.open(path)
            hashes.append(image_hash(image))
            kept.append(name)
        except Exception:   # a damaged training image is skipped: it cannot have been copied either
            continue
    result = TrainingHashes(folder, kept, np.array(hashes, dtype=np.uint64).reshape(-1, WORDS))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, result.hashes, allow_pickle=False)
        cached.with_suffix(".json").write_text(json.dumps(kept))
    return result
