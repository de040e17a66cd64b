"""Grade a whole course's hand-ins in one command: format, course-evaluator accuracy, copies, a report page.

    python -m utils.grade iclevr SUBMISSIONS --evaluator checkpoint.pth
    python -m utils.grade imvfx SUBMISSIONS

SUBMISSIONS is a folder of zips (``<student_id>_iclevr.zip``, ``<student_id>_hw2_2.zip``) or of unpacked
folders, as students hand them in: other names, a top folder inside the zip, extra or missing files,
JPEG instead of PNG. Each one gets one row, never a crash of the batch:

* **iCLEVR**: ``test/`` and ``new_test/`` scored by the course evaluator exactly as the course protocol
  does (``utils.iclevr_accuracy``; each PNG read as the course reads it: ``convert("RGB")``, ``ToTensor``,
  ``Normalize(0.5, 0.5)``), against the course's label files; a missing image scores no hit. The
  student's ``accuracy.json`` is compared with it, and every file checked as ``utils.export`` checks it
  before zipping (sizes, the 8×4 grids, the denoising row).
* **IMVFX**: the four images and ``readme.txt`` present and decodable, the 5×5 grids of the right cell size.
* **Copies** (``utils.grade_copies``): near-identical image sets between students, and, with
  ``--training-data``, generated images that are training images.

Hand-ins are untrusted (``utils.grade_unpack``): read in memory with size caps, images decoded by a few
known decoders after their size is checked, nothing unpickled or run. Results go to ``OUT/grades.csv`` and
``OUT/report.html`` (``utils.grade_report``); each hand-in's result is kept in ``OUT/cache/`` under its
content hash, so grading the folder again only grades what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
from PIL import Image

from . import export
from .grade_copies import ImageSet, TrainingHashes, find_copies, hash_training_images, image_hash, is_blank
from .grade_unpack import MODEL_SUFFIXES, FileProblem, HandIn, Limits, Note, Rejected, open_hand_in, open_image

GRADER_VERSION = 1          # part of the cache key: raise it when grading changes what a hand-in gets
ASSIGNMENTS = {"iclevr": "iclevr", "imvfx": "hw2_2"}        # assignment → the zip name's suffix
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
THUMB_WIDTH = 360           # px, grids in the report
CELL = 48                   # px, one image on a contact sheet
TRAINING_COPIES = 4         # generated images that are training images before a hand-in is flagged


# ----------------------------------------------------------------------------- one hand-in's result
@dataclass
class Graded:
    """One hand-in's row: who, the status, what is wrong, the scores, its hashed images and thumbnails."""

    submission: str                     # its name in SUBMISSIONS
    student: str
    status: str = "ok"                  # ok | incomplete | rejected | error
    sha256: str = ""
    problems: list[str] = field(default_factory=list)      # what is not as the assignment asks
    notes: list[Note] = field(default_factory=list)        # flags for the TA (copies, unsafe entries, …)
    scores: dict[str, dict] = field(default_factory=dict)  # iCLEVR: set → hits, labels, accuracy, claimed, images
    images: ImageSet | None = None
    thumbs: dict[str, str] = field(default_factory=dict)   # caption → path relative to the report folder
    sheet: dict | None = None           # the contact sheet of ``images``: path, columns, cell
    inner_name: str = ""                # the zip graded inside a folder or zip that only wrapped it

    @property
    def flags(self) -> list[str]:
        return list(dict.fromkeys(n.code for n in self.notes))

    def note(self, code: str, message: str, problem: bool = False) -> None:
        self.notes.append(Note(code, message, problem))

    def to_json(self) -> dict:
        return {"status": self.status, "problems": self.problems, "scores": self.scores, "thumbs": self.thumbs,
                "sheet": self.sheet, "inner_name": self.inner_name,
                "notes": [[n.code, n.message, n.problem] for n in self.notes],
                "images": self.images.to_json() if self.images is not None else None}

    @classmethod
    def from_json(cls, data: dict, submission: str, sha256: str) -> Graded:
        graded = cls(submission, "", data["status"], sha256, list(data["problems"]), [Note(*n) for n in data["notes"]],
                     data["scores"], None, data["thumbs"], data["sheet"], data["inner_name"])
        if data["images"] is not None:
            graded.images = ImageSet.from_json(submission, data["images"])
        return graded


@dataclass
class Grader:
    """What grading needs besides the hand-in: the assignment, the evaluator and labels, limits, folders."""

    assignment: str
    out: Path
    evaluator: object = None                     # the course's ResNet-18 (iCLEVR)
    evaluator_sha256: str = ""
    label_sets: dict = field(default_factory=dict)  # iCLEVR: "test" → (label lists, multi-hot (32, 24))
    label_files_sha256: str = ""
    limits: Limits = field(default_factory=Limits)
    mnist_size: int = 28
    anime_size: int = 64
    iclevr_size: int = 64

    @property
    def cache_dir(self) -> Path:
        """Cached rows, one folder per grading setup: another evaluator or other labels never reuse a row."""
        setup = json.dumps([GRADER_VERSION, self.assignment, self.evaluator_sha256, self.label_files_sha256,
                            self.limits.__dict__, self.mnist_size, self.anime_size, self.iclevr_size])
        return self.out / "cache" / hashlib.sha256(setup.encode()).hexdigest()[:16]

    def files(self, root: Path) -> list[export.HandInFile]:
        """The assignment's files (names, grids, sizes) as ``utils.export`` lists them, placed under ``root``."""
        if self.assignment == "iclevr":
            return export.iclevr_files(root, image_size=self.iclevr_size)
        return export.imvfx_files(root, root, mnist_image_size=self.mnist_size, anime_image_size=self.anime_size) + [
            export.HandInFile("readme.txt", root / "readme.txt", "the student (export writes a template to edit)")]


# ----------------------------------------------------------------------------- names and content
def student_id(name: str, assignment: str) -> tuple[str, bool]:
    """The student id in a hand-in's name, and whether the name is exactly ``<id>_<suffix>.zip`` (or the folder)."""
    stem = re.sub(r"\.zip$", "", printable(name), flags=re.IGNORECASE)
    suffix = ASSIGNMENTS[assignment]
    if re.fullmatch(rf"[A-Za-z0-9]+_{suffix}", stem):
        return stem[:-len(suffix) - 1], True
    others = "|".join(ASSIGNMENTS.values())
    found = re.search(rf"([A-Za-z0-9]+)_(?:{others})", stem) or re.search(r"[A-Za-z]*\d{6,}", stem)
    if found:
        return found.group(1 if found.lastindex else 0), False
    return stem, False


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (os.fsdecode's surrogates) become U+FFFD, controls '?'."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def content_sha256(path: Path, limits: Limits) -> str:
    """SHA-256 of a zip's bytes, or of a folder's file names and contents (links not followed)."""
    digest = hashlib.sha256()
    if path.is_symlink():
        digest.update(b"link:" + os.fsencode(path.name))
    elif path.is_dir():
        total, count = 0, 0
        for folder, dirs, names in sorted(os.walk(path)):
            dirs.sort()
            for n in sorted(names):
                file = Path(folder) / n
                if file.is_symlink() or not file.is_file():
                    continue
                count, total = count + 1, total + file.stat().st_size
                if count > limits.max_entries or total > limits.max_total_bytes:
                    return "too-large:" + digest.hexdigest()
                digest.update(os.fsencode(file.relative_to(path).as_posix()) + b"\0")
                _hash_file(file, digest)
    else:
        _hash_file(path, digest)
    return digest.hexdigest()


def _hash_file(path: Path, digest) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)


def locate(entries, wanted: list[str]) -> dict[str, tuple[str, bool]]:
    """Where each wanted file is in the hand-in: name → (entry, found with another image suffix).

    Names compare without case. The hand-in's own top folder (``312551001_iclevr/``, ``outputs/iclevr/``)
    is the folder that holds most wanted files; a file with the same stem and another image suffix
    (``test/0.jpg`` for ``test/0.png``) stands in for a missing one.
    """
    index: dict[str, list[tuple[str, str, str]]] = {}     # lower-case name without suffix → (entry, prefix, suffix)
    depth = {len(w.split("/")) for w in wanted}
    for entry in entries:
        parts = entry.split("/")
        for k in depth:
            if len(parts) < k:
                continue
            tail = "/".join(parts[-k:])
            stem, dot, suffix = tail.rpartition(".")
            if dot:
                index.setdefault(stem.lower(), []).append((entry, "/".join(parts[:-k]), "." + suffix.lower()))
    prefixes: dict[str, int] = {}
    for w in wanted:
        for _, prefix, _ in index.get(w.rpartition(".")[0].lower(), []):
            prefixes[prefix] = prefixes.get(prefix, 0) + 1
    best = max(prefixes, key=lambda p: (prefixes[p], -len(p)), default="")
    found = {}
    for w in wanted:
        stem, suffix = w.rpartition(".")[0].lower(), "." + w.rpartition(".")[2].lower()
        candidates = index.get(stem, [])
        allowed = IMAGE_SUFFIXES if suffix in IMAGE_SUFFIXES else (suffix,)
        ranked = sorted((c for c in candidates if c[2] in allowed),
                        key=lambda c: (c[1] != best, c[2] != suffix, len(c[1])))
        if ranked:
            found[w] = (ranked[0][0], ranked[0][2] != suffix)
    return found


# ----------------------------------------------------------------------------- checks
def _check_files(hand_in: HandIn, grader: Grader, scratch: Path, graded: Graded) -> dict[str, Image.Image]:
    """Check every file of the assignment as ``export.check_file`` does; return the decoded images.

    Each image is decoded here, under the size limits; ``export.check_file`` (which reads an image's pixel
    size: the grid layout, the image size) then gets a blank PNG of that size that we wrote in ``scratch``,
    so the export's checker never opens a hand-in's bytes. Fills ``graded.problems`` and notes.
    """
    items = grader.files(scratch)
    where = locate(hand_in.entries, [item.name for item in items])
    problems: dict[str, str | None] = {}
    images: dict[str, Image.Image] = {}
    swapped, not_png = [], []
    for item in items:
        if item.name not in where:
            problems[item.name] = "missing"
            continue
        entry, other_suffix = where[item.name]
        if other_suffix:
            swapped.append((item.name, entry))
        try:
            data = hand_in.read(entry)
            item.source.parent.mkdir(parents=True, exist_ok=True)
            if item.name.endswith((".png", ".jpg")):
                image = open_image(data, hand_in.limits)
                if item.name.endswith(".png") and image.format != "PNG":
                    not_png.append(f"{entry} ({image.format})")
                images[item.name] = image
                Image.new("L", image.size).save(item.source, format="PNG", compress_level=1)   # what check_file reads: the size
            else:
                item.source.write_bytes(data)
            problems[item.name] = export.check_file(item)
        except FileProblem as err:
            problems[item.name] = str(err)
    if swapped:
        graded.note("other_suffix", f"{len(swapped)} file{'s' * (len(swapped) > 1)} handed in with another suffix "
                    f"({', '.join(f'{e} for {n}' for n, e in swapped[:2])}{' …' if len(swapped) > 2 else ''})")
    if not_png:
        graded.note("not_png", f"{len(not_png)} image{'s' * (len(not_png) > 1)} the assignment asks as PNG "
                    f"{'are' if len(not_png) > 1 else 'is'} another format ({', '.join(not_png[:2])}"
                    f"{' …' if len(not_png) > 2 else ''}): a lossy format changes what the evaluator sees")
    if not any(p != "missing" for p in problems.values()):
        raise Rejected("holds none of the assignment's files (looked for " + ", ".join(
            i.name for i in items if "/" not in i.name or i.name.endswith("/0.png")) + f"); it holds: {_listing(hand_in)}")
    graded.problems += _summarize(items, problems)
    _note_extras(hand_in, {e for e, _ in where.values()}, items, graded)
    return images


def _summarize(items: list[export.HandInFile], problems: dict[str, str | None]) -> list[str]:
    """One sentence per file with a problem, a folder's images (``test/0.png`` …) as one, like ``export.report``."""
    groups: dict[str, list[str]] = {}
    for item in items:
        groups.setdefault(item.name.split("/")[0] + "/" if "/" in item.name else item.name, []).append(item.name)
    out = []
    for label, names in groups.items():
        bad = [(n, problems[n]) for n in names if problems.get(n)]
        if not bad:
            continue
        if len(names) == 1:
            out.append(f"{label}: {bad[0][1]}")
        elif all(p == "missing" for _, p in bad):
            out.append(f"{label}: {len(bad)} of {len(names)} images missing (first: {bad[0][0]})")
        else:
            out.append(f"{label}: {len(bad)} of {len(names)} images are wrong (first: {bad[0][0]} {bad[0][1]})")
    return out


def _note_extras(hand_in: HandIn, used: set[str], items: list[export.HandInFile], graded: Graded) -> None:
    extra = [e for e in hand_in.entries if e not in used]
    models = [e for e in extra if e.lower().endswith(MODEL_SUFFIXES)]
    if models:
        graded.note("model_file", f"holds {len(models)} model or pickle file{'s' * (len(models) > 1)} "
                    f"({', '.join(models[:3])}): not loaded (the grader never unpickles a hand-in)")
    folders = {i.name.split("/")[0] for i in items if "/" in i.name}
    more = [e for e in extra if len(e.split("/")) >= 2 and e.split("/")[-2] in folders and e.lower().endswith(IMAGE_SUFFIXES)]
    if more:
        graded.note("extra_images", f"{len(more)} more image{'s' * (len(more) > 1)} than the assignment's "
                    f"{len([i for i in items if '/' in i.name])} in {', '.join(sorted(folders))} "
                    f"({', '.join(more[:3])}{' …' if len(more) > 3 else ''})")
    rest = [e for e in extra if e not in models and e not in more]
    if rest:
        graded.note("extra_files", f"{len(rest)} other file{'s' * (len(rest) > 1)} not graded "
                    f"({', '.join(rest[:3])}{' …' if len(rest) > 3 else ''})")


def _listing(hand_in: HandIn, most: int = 5) -> str:
    names = list(hand_in.entries)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


# ----------------------------------------------------------------------------- iCLEVR
def _grade_iclevr(hand_in: HandIn, grader: Grader, scratch: Path, graded: Graded) -> None:
    import torch
    from torchvision.transforms import functional as TF

    from .iclevr_accuracy import accuracy

    images = _check_files(hand_in, grader, scratch, graded)
    names, hashes, blank, course = [], [], [], []
    for set_name, (_, labels) in grader.label_sets.items():
        present, batch, resized = [], [], 0
        for i in range(len(labels)):
            image = images.get(f"{set_name}/{i}.png")
            if image is None:
                continue
            rgb = image.convert("RGB")                           # as the course reads a PNG
            names.append(f"{set_name}/{i}.png")
            hashes.append(image_hash(rgb))
            blank.append(is_blank(rgb))
            course.append(rgb)
            if rgb.size != (grader.iclevr_size, grader.iclevr_size):
                rgb, resized = TF.resize(rgb, [grader.iclevr_size] * 2), resized + 1   # the course's Resize((64, 64))
            batch.append(TF.normalize(TF.to_tensor(rgb), [0.5] * 3, [0.5] * 3))    # ToTensor, Normalize(0.5, 0.5)
            present.append(i)
        total = int(labels.sum())
        hits = 0
        if present:
            hits = accuracy(grader.evaluator, torch.stack(batch), labels[present]).hits
        graded.scores[set_name] = {"hits": hits, "labels": total, "accuracy": hits / total, "images": len(present)}
        if resized:
            graded.note("resized", f"{resized} {set_name} image{'s' * (resized > 1)} not "
                        f"{grader.iclevr_size}×{grader.iclevr_size}: resized as the course's loader does before scoring")
    _claimed(read_claims(hand_in), graded)
    if names:
        graded.images = ImageSet(graded.submission, names, np.array(hashes, dtype=np.uint64), np.array(blank))
        _note_blank(graded)
        graded.sheet = _write_sheet(course, grader, graded, columns=8)
    _check_denoising(images.get("denoising_process.png"), grader, graded)
    for name in ("test_grid.png", "new_test_grid.png", "denoising_process.png"):
        if name in images:
            graded.thumbs[name] = _write_thumb(images[name], grader, graded, name)


def read_claims(hand_in: HandIn) -> dict | None:
    """The hand-in's ``accuracy.json``, parsed with exact decimals (None when missing or unreadable)."""
    where = locate(hand_in.entries, ["accuracy.json"])
    if "accuracy.json" not in where:
        return None
    try:
        data = json.loads(hand_in.read(where["accuracy.json"][0], 1 << 20), parse_float=Decimal)
    except (FileProblem, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _claimed(data: dict | None, graded: Graded) -> None:
    """Compare the accuracies ``accuracy.json`` claims with the measured ones; a difference beyond the
    claim's own rounding (0.83 stands for 0.825–0.835) or other hit counts are flagged."""
    if data is None:
        return
    for set_name, score in graded.scores.items():
        value = data.get(set_name, data.get(f"{set_name}_accuracy", data.get(f"{set_name}_acc")))
        claimed_hits = None
        if isinstance(value, dict):
            claimed_hits = value.get("hits")
            value = value.get("accuracy", value.get("acc"))
        if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
            continue
        value = Decimal(value)
        try:
            places = max(0, -value.as_tuple().exponent)
        except (TypeError, InvalidOperation):
            continue
        percent = value > 1
        if not percent and value == value.to_integral_value():
            places = max(places, 2)                  # a claim of 1 means 1.00, not 1 ± 0.5
        claimed = float(value) / (100 if percent else 1)
        tolerance = 0.5 * 10.0 ** -places / (100 if percent else 1) + 1e-9
        score["claimed"] = claimed
        measured = score["accuracy"]
        wrong_hits = isinstance(claimed_hits, int) and claimed_hits != score["hits"]
        if abs(claimed - measured) > tolerance or wrong_hits:
            shown = str(value) if len(str(value)) <= 8 else f"{value:.4f}"
            graded.note("accuracy_mismatch", f"accuracy.json claims {set_name} {shown}{'%' * percent}"
                        + (f" ({claimed_hits} hits)" if isinstance(claimed_hits, int) else "")
                        + f"; the course evaluator measures {measured:.4f} ({score['hits']}/{score['labels']}) "
                        f"on the handed-in images" + (f" ({score['images']} of 32 there)" if score["images"] < 32 else ""))


def _check_denoising(image: Image.Image | None, grader: Grader, graded: Graded) -> None:
    """``denoising_process.png`` must be one row of at least 8 images, noise to clean."""
    if image is None:
        return
    width, height = image.size
    layout = export.grid_layout(width, height, grader.iclevr_size)
    if layout is not None and layout[1] == 1 and layout[0] >= 8:
        return
    if layout is None and width >= 7.5 * height:     # another image size, but a row of 8 or more
        return
    graded.problems.append(f"denoising_process.png: is {width}×{height} px, not one row of at least 8 "
                           f"{grader.iclevr_size}-px images from noise to clean")


# ----------------------------------------------------------------------------- IMVFX
def _grade_imvfx(hand_in: HandIn, grader: Grader, scratch: Path, graded: Graded) -> None:
    images = _check_files(hand_in, grader, scratch, graded)
    names, hashes, blank, cells = [], [], [], []
    for name, size in (("result_mnist.jpg", grader.mnist_size), ("result_anime.jpg", grader.anime_size)):
        if name not in images:
            continue
        for (row, col), cell in grid_cells(images[name].convert("RGB"), size):
            names.append(f"{name}[{row}, {col}]")
            hashes.append(image_hash(cell))
            blank.append(is_blank(cell))
            cells.append(cell)
    if names:
        graded.images = ImageSet(graded.submission, names, np.array(hashes, dtype=np.uint64), np.array(blank))
        _note_blank(graded)
        graded.sheet = _write_sheet(cells, grader, graded, columns=10)
    where = locate(hand_in.entries, ["readme.txt"])
    if "readme.txt" in where and not any(p.startswith("readme.txt:") for p in graded.problems):
        text = hand_in.read(where["readme.txt"][0]).decode("utf-8", "replace")   # read once already: within the cap
        if not text.strip():
            graded.problems.append("readme.txt: is empty")
        elif export.README_MARKER in text:
            graded.problems.append(f"readme.txt: is still the template (the lines marked {export.README_MARKER})")
    for name in ("result_mnist.jpg", "result_anime.jpg", "loss_mnist.jpg", "loss_anime.jpg"):
        if name in images:
            graded.thumbs[name] = _write_thumb(images[name], grader, graded, name)


def grid_cells(grid: Image.Image, image_size: int, layout: tuple[int, int] = (5, 5)):
    """The cells of a ``viz.save_grid`` grid: ((row, column), image) pairs. A grid of another pixel size
    (resized) is cut where its cells would be after resizing; one of no grid layout counts as one image."""
    width, height = grid.size
    found = export.grid_layout(width, height, image_size)
    columns, rows = found or layout
    pad = export.GRID_PADDING
    full_w, full_h = columns * (image_size + pad) + pad, rows * (image_size + pad) + pad
    sx, sy = width / full_w, height / full_h
    if min(width / columns, height / rows) < 8:
        return [((0, 0), grid)]
    out = []
    for r in range(rows):
        for c in range(columns):
            left, top = pad + c * (image_size + pad), pad + r * (image_size + pad)
            box = (round(left * sx), round(top * sy), round((left + image_size) * sx), round((top + image_size) * sy))
            out.append(((r, c), grid.crop(box)))
    return out


# ----------------------------------------------------------------------------- report images
def _note_blank(graded: Graded) -> None:
    n = int(graded.images.blank.sum())
    if n:
        graded.note("blank", f"{n} of {len(graded.images.names)} images are blank (one flat color): left out of "
                    "the copy comparison")


def _thumb_name(graded: Graded, what: str) -> str:
    return f"thumbs/{graded.sha256[:16]}-{re.sub(r'[^A-Za-z0-9]+', '_', what)}.png"


def _write_thumb(image: Image.Image, grader: Grader, graded: Graded, what: str) -> str:
    """A copy of ``image`` at most ``THUMB_WIDTH`` px wide, re-encoded by us, in the report folder; its relative path."""
    name = _thumb_name(graded, what)
    thumb = image.convert("RGB")
    if thumb.width > THUMB_WIDTH:
        thumb = thumb.resize((THUMB_WIDTH, max(1, round(thumb.height * THUMB_WIDTH / thumb.width))), Image.LANCZOS)
    (grader.out / name).parent.mkdir(parents=True, exist_ok=True)
    thumb.save(grader.out / name, format="PNG", compress_level=3)
    return name


def _write_sheet(images: list[Image.Image], grader: Grader, graded: Graded, columns: int) -> dict:
    """All compared images on one sheet of ``CELL``-px cells (the report shows matched pairs from it)."""
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * CELL, rows * CELL), "white")
    for k, image in enumerate(images):
        sheet.paste(image.convert("RGB").resize((CELL, CELL), Image.BILINEAR), ((k % columns) * CELL, (k // columns) * CELL))
    name = _thumb_name(graded, "sheet")
    (grader.out / name).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(grader.out / name, format="PNG", compress_level=3)
    return {"path": name, "columns": columns, "cell": CELL}


# ----------------------------------------------------------------------------- one hand-in, the batch
GRADERS = {"iclevr": _grade_iclevr, "imvfx": _grade_imvfx}


def grade_one(path: Path, grader: Grader, *, use_cache: bool = True) -> Graded:
    """Grade one hand-in (zip or folder). Never raises: a hand-in that cannot be graded gets status
    ``rejected`` with the reason; a failure of the grader itself gets ``error`` with the exception."""
    graded = Graded(printable(path.name), "")
    try:
        graded.sha256 = content_sha256(path, grader.limits)
    except OSError as err:
        graded.status, graded.problems = "rejected", [f"cannot be read ({err.strerror or err})"]
        return _identify(graded, grader)
    cached = grader.cache_dir / f"{graded.sha256}.json"
    if use_cache and cached.is_file():
        try:
            row = Graded.from_json(json.loads(cached.read_text()), graded.submission, graded.sha256)
            if all((grader.out / p).is_file() for p in [*row.thumbs.values(), *([row.sheet["path"]] if row.sheet else [])]):
                return _identify(row, grader)
        except (ValueError, KeyError, TypeError):
            pass                                    # an unreadable cache entry: grade again
    hand_in = None
    scratch = Path(tempfile.mkdtemp(prefix="handin-", dir=_scratch_root(grader)))
    try:
        hand_in = open_hand_in(path, grader.limits)
        graded.notes += hand_in.notes
        graded.inner_name = hand_in.inner_name
        GRADERS[grader.assignment](hand_in, grader, scratch, graded)
        problem = graded.problems or any(n.problem for n in graded.notes)
        graded.status = "incomplete" if problem else "ok"
    except Rejected as err:
        graded.status, graded.problems, graded.scores, graded.images = "rejected", [str(err)], {}, None
    except Exception as err:                                   # a bug of ours must not stop the batch
        graded.status = "error"
        graded.problems = [f"the grader failed on this hand-in ({type(err).__name__}: {err}); please report it"]
        traceback.print_exc(file=sys.stderr)
    finally:
        if hand_in is not None:
            hand_in.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if graded.status != "error":
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(graded.to_json()))
        os.replace(tmp, cached)
    return _identify(graded, grader)


def _identify(graded: Graded, grader: Grader) -> Graded:
    """The student id from the hand-in's name, or from the zip inside it when only that one is named properly."""
    student, exact = student_id(graded.submission, grader.assignment)
    if not exact and graded.inner_name:
        inner, inner_exact = student_id(graded.inner_name, grader.assignment)
        if inner_exact:
            student, exact = inner, True
    graded.student = student
    if not exact:
        graded.note("name", f"named {graded.submission!r}, not <student_id>_{ASSIGNMENTS[grader.assignment]}.zip; "
                    f"read as student {student!r}")
    return graded


def _scratch_root(grader: Grader) -> Path:
    root = grader.out / ".scratch"
    root.mkdir(parents=True, exist_ok=True)
    return root


def submissions_in(folder: Path, out: Path | None = None) -> list[Path]:
    """The hand-ins in ``folder``: every entry but hidden ones and the grader's own output folder, in natural order."""
    def key(p: Path):
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]
    skip = out.resolve() if out is not None else None
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".") and p.resolve() != skip), key=key)


@dataclass
class Batch:
    """A graded folder: the rows, the flagged pairs, and where the report went."""

    grader: Grader
    rows: list[Graded]
    pairs: list
    training: dict[int, list] = field(default_factory=dict)   # row index → (image, training file, distance)
    csv_path: Path | None = None
    html_path: Path | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.status] = out.get(row.status, 0) + 1
        return out


def grade_folder(submissions: str | Path, grader: Grader, *, training: TrainingHashes | None = None,
                 use_cache: bool = True, progress: bool = True) -> Batch:
    """Grade every hand-in in ``submissions``, compare them for copies, write ``grades.csv`` and ``report.html``."""
    from tqdm.auto import tqdm

    from . import grade_report

    submissions = Path(submissions)
    if not submissions.is_dir():
        raise SystemExit(f"{submissions} is not a folder: give the folder that holds the hand-ins (zips or folders).")
    grader.out.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(submissions_in(submissions, grader.out), desc=f"grading {grader.assignment}", unit="hand-in",
               disable=not progress)
    for path in bar:
        bar.set_postfix_str(printable(path.name)[:30])
        rows.append(grade_one(path, grader, use_cache=use_cache))
    shutil.rmtree(grader.out / ".scratch", ignore_errors=True)
    batch = Batch(grader, rows, [])
    _flag_batch(batch, training)
    batch.csv_path = grade_report.write_csv(batch, grader.out / "grades.csv")
    batch.html_path = grade_report.write_html(batch, grader.out / "report.html")
    return batch


def _flag_batch(batch: Batch, training: TrainingHashes | None) -> None:
    """Flags that need the whole batch: one student twice, copies between students, training images."""
    by_student: dict[str, list[Graded]] = {}
    for row in batch.rows:
        by_student.setdefault(row.student, []).append(row)
    for student, rows in by_student.items():
        if len(rows) > 1:
            for row in rows:
                others = ", ".join(r.submission for r in rows if r is not row)
                row.note("duplicate_id", f"student {student} handed in more than once (also {others})")
    hashed = [k for k, row in enumerate(batch.rows) if row.images is not None]
    sets = [batch.rows[k].images for k in hashed]
    same = lambda a, b: batch.rows[hashed[a]].student == batch.rows[hashed[b]].student   # noqa: E731
    partners: dict[int, list] = {}
    for pair in find_copies(sets, same_owner=same):
        pair.a, pair.b = hashed[pair.a], hashed[pair.b]
        batch.pairs.append(pair)
        partners.setdefault(pair.a, []).append((pair.b, pair))
        partners.setdefault(pair.b, []).append((pair.a, pair))
    for k, found in partners.items():
        if len(found) == 1:
            other, pair = batch.rows[found[0][0]], found[0][1]
            message = (f"{len(pair.matches)} of {pair.compared} images match {other.student}'s ({other.submission}; "
                       f"score {pair.score:.2f})")
        else:
            message = f"images match {len(found)} other hand-ins: " + ", ".join(
                f"{batch.rows[o].student} ({len(p.matches)} of {p.compared})" for o, p in found[:5]) + (
                " …" if len(found) > 5 else "")
        batch.rows[k].note("copy", message + "; see Possible copies")
    if training is None:
        return
    for k in hashed:
        row = batch.rows[k]
        found = training.matches(row.images)
        if len(found) >= TRAINING_COPIES:
            batch.training[k] = found
            i, file, distance = found[0]
            row.note("training_copy", f"{len(found)} of {len(row.images.names)} generated images are training images "
                     f"(e.g. {row.images.names[i]} ≈ {file}, {distance} bits apart)")


# ----------------------------------------------------------------------------- command line
def load_iclevr_labels(label_dir: str | Path) -> tuple[dict, str]:
    """test.json and new_test.json from ``label_dir`` as {set: (lists, multi-hot)}, and the files' SHA-256."""
    from .data import iclevr

    label_dir = Path(label_dir)
    objects = iclevr.load_objects(label_dir / "objects.json")
    sets = {}
    digest = hashlib.sha256()
    for name in ("objects", "test", "new_test"):
        digest.update((label_dir / f"{name}.json").read_bytes())
        if name != "objects":
            lists = iclevr.load_label_lists(label_dir / f"{name}.json")
            sets[name] = (lists, iclevr.encode_labels(lists, objects))
    return sets, digest.hexdigest()


def make_grader(assignment: str, out: str | Path, *, evaluator: str | Path | None = None,
                labels: str | Path | None = None, device: str | None = None, limits: Limits = Limits(),
                **sizes) -> Grader:
    """A ``Grader`` for ``assignment``; iCLEVR loads the course evaluator (``weights_only``) and the label files."""
    grader = Grader(assignment, Path(out), limits=limits, **sizes)
    if assignment == "iclevr":
        from .data.iclevr import BUNDLED_LABELS
        from .devices import pick_device
        from .iclevr_accuracy import load_evaluator

        if evaluator is None:
            raise SystemExit("iCLEVR grading needs the course evaluator: --evaluator path/to/checkpoint.pth")
        grader.evaluator = load_evaluator(evaluator, device or pick_device())
        digest = hashlib.sha256()
        _hash_file(Path(evaluator), digest)
        grader.evaluator_sha256 = digest.hexdigest()
        grader.label_sets, grader.label_files_sha256 = load_iclevr_labels(labels or BUNDLED_LABELS)
    return grader


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m utils.grade", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="assignment", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("submissions", type=Path, help="folder of hand-ins: zips or unpacked folders")
    common.add_argument("--out", type=Path, help="where grades.csv, report.html and the cache go "
                        "(default: SUBMISSIONS_graded beside the folder)")
    common.add_argument("--training-data", type=Path, help="a folder of training images: flags generated images "
                        "that are training images (hashes cached in OUT/cache)")
    common.add_argument("--no-cache", action="store_true", help="grade every hand-in again")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    ic = sub.add_parser("iclevr", parents=[common], help="DLP iCLEVR lab: <id>_iclevr.zip")
    ic.add_argument("--evaluator", type=Path, required=True, help="the course's checkpoint.pth (loaded weights-only)")
    ic.add_argument("--labels", type=Path, help="folder with objects.json, test.json, new_test.json "
                    "(default: the course's files bundled in utils/data/iclevr_labels)")
    ic.add_argument("--device", help="where the evaluator runs (default: cuda → mps → cpu)")
    im = sub.add_parser("imvfx", parents=[common], help="IMVFX HW2-2: <id>_hw2_2.zip")
    im.add_argument("--mnist-size", type=int, default=28, help="px of one MNIST image in result_mnist.jpg")
    im.add_argument("--anime-size", type=int, default=64, help="px of one face in result_anime.jpg")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Batch:
    args = parse_args(argv)
    out = args.out or args.submissions.parent / f"{args.submissions.name}_graded"
    if args.assignment == "iclevr":
        grader = make_grader("iclevr", out, evaluator=args.evaluator, labels=args.labels, device=args.device)
    else:
        grader = make_grader("imvfx", out, mnist_size=args.mnist_size, anime_size=args.anime_size)
    training = None
    if args.training_data:
        training = hash_training_images(args.training_data, out / "cache", progress=not args.quiet,
                                        open_image=lambda data: open_image(data, grader.limits))
    batch = grade_folder(args.submissions, grader, training=training, use_cache=not args.no_cache,
                         progress=not args.quiet)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(batch.counts().items()))
    print(f"{len(batch.rows)} hand-ins graded ({counts}); {len(batch.pairs)} possible copy pair"
          f"{'s' * (len(batch.pairs) != 1)}.\n  {batch.csv_path}\n  {batch.html_path}")
    return batch


if __name__ == "__main__":
    main()
