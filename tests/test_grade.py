"""Grading a folder of hand-ins: real exports, broken and malicious ones, the course accuracy, copies, CSV and HTML.

One folder of iCLEVR hand-ins is graded once (module fixture): zips written by the bundle's own export
(``utils.export``'s file table and zip writer on sets written as ``tests/test_export.py`` writes them,
with drawn scenes as images), the ways students really hand in, copies, and one crafted hand-in per
malicious or broken case the issue lists. Each test then reads that hand-in's row.
"""

import csv
import io
import json
import os
import pickle
import random
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import write_iclevr_set, write_imvfx_set
from torch import nn
from torchvision import transforms
from torchvision.models import resnet18

from utils import export, fixtures, grade, grade_copies, grade_report, viz
from utils.data import to_model
from utils.data.iclevr import BUNDLED_LABELS, load_label_lists, load_objects
from utils.grade_unpack import FileProblem, Limits, Rejected, open_hand_in, open_image, safe_name

from course_reference import course_compute_acc

SETS = ("test", "new_test")
LISTS = {name: load_label_lists(BUNDLED_LABELS / f"{name}.json") for name in SETS}


# ----------------------------------------------------------------------------- making hand-ins
def scenes(name: str, seed) -> torch.Tensor:
    """One drawn scene per label list of ``name`` (32, 3, 64, 64) in [-1, 1]: a stand-in for a student's samples."""
    pictures = [np.asarray(fixtures.draw_scene(names, random.Random(f"{seed}-{name}-{i}")).convert("RGB")
                           .resize((64, 64), Image.BILINEAR)) for i, names in enumerate(LISTS[name])]
    return to_model(torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2))


def iclevr_output(out: Path, seed) -> Path:
    """Notebook 03's output folder for one student: every file the export zips, with that student's images."""
    write_iclevr_set(out)
    for name in SETS:
        images = scenes(name, seed)
        viz.save_numbered(images, out / name)
        viz.save_grid(images, out / f"{name}_grid.png", nrow=8, expected=32)
    return out


def export_zip(out: Path, zip_path: Path) -> Path:
    """The hand-in zip exactly as ``utils.export`` writes it: its file table, its zip writer."""
    return export.write_zip(zip_path, export.iclevr_files(out))


def zip_folder(folder: Path, zip_path: Path, prefix: str = "", extra: dict | None = None, skip=()) -> Path:
    """Zip ``folder`` with every name under ``prefix``, plus ``extra`` {name: bytes}; names in ``skip`` left out."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and rel not in skip:
                archive.write(path, prefix + rel)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return zip_path


def transformed_copy(src: Path, dst: Path, change, *, reorder: bool = False, suffix: str = ".png") -> Path:
    """``src``'s output folder copied to ``dst`` with every test/new_test image passed through ``change``."""
    shutil.copytree(src, dst)
    for name in SETS:
        order = list(range(32))
        if reorder:
            random.Random(name).shuffle(order)
        originals = [Image.open(src / name / f"{i}.png").convert("RGB") for i in range(32)]
        for i in range(32):
            (dst / name / f"{i}.png").unlink()
        for i, k in enumerate(order):
            change(originals[k]).save(dst / name / f"{i}{suffix}", **({"quality": 70} if suffix == ".jpg" else {}))
    return dst


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG that declare ``width`` × ``height`` pixels (an image bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + png_chunk(b"IEND", b""))


def patch_zip(path: Path, edit) -> Path:
    """Rewrite the raw bytes of a zip with ``edit(bytearray)``: header fields zipfile would never write."""
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    return path


def headers(data: bytearray, signature: bytes):
    at = data.find(signature)
    while at >= 0:
        yield at
        at = data.find(signature, at + 4)


class Touch:
    """Unpickling this creates ``marker``: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


# ----------------------------------------------------------------------------- the graded folder
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fixtures.write_evaluator_fixture(tmp_path_factory.mktemp("evaluator") / "checkpoint.pth")


@pytest.fixture(scope="module")
def hand_ins(tmp_path_factory):
    """A folder of iCLEVR hand-ins (name → what it is); the student outputs they came from in ``work``."""
    root = tmp_path_factory.mktemp("course")
    subs, work = root / "submissions", root / "work"
    subs.mkdir()
    good = iclevr_output(work / "good", seed=1)
    export_zip(good, subs / "312551001_iclevr.zip")
    export_zip(iclevr_output(work / "honest", seed=2), subs / "312551002_iclevr.zip")
    # as students really hand in
    zip_folder(iclevr_output(work / "top", seed=3), subs / "312551003_iclevr.zip", prefix="312551003_iclevr/",
               extra={"312551003_iclevr/report.pdf": b"%PDF-1.4", "__MACOSX/._test": b"junk",
                      "312551003_iclevr/.DS_Store": b"junk"})
    shutil.copytree(iclevr_output(work / "folder", seed=4), subs / "312551004_iclevr")
    zip_folder(transformed_copy(iclevr_output(work / "jpeg0", seed=5), work / "jpeg", lambda im: im, suffix=".jpg"),
               subs / "312551005_iclevr.zip")
    zip_folder(transformed_copy(iclevr_output(work / "big0", seed=6), work / "big",
                                lambda im: im.resize((128, 128), Image.BICUBIC)), subs / "312551006_iclevr.zip")
    zip_folder(iclevr_output(work / "missing", seed=7), subs / "312551007_iclevr.zip",
               skip={"new_test/30.png", "new_test/31.png", "accuracy.json"})
    export_zip(iclevr_output(work / "王小明", seed=8), subs / "王小明 (312551008) lab6.zip")
    site = subs / "王小明_1234_assignsubmission_file_"          # a course site's per-student download folder
    site.mkdir()
    export_zip(iclevr_output(work / "site", seed=9), site / "312551009_iclevr.zip")
    # copies of 312551001
    export_zip(transformed_copy(good, work / "resaved", lambda im: Image.open(io.BytesIO(png_bytes(im)))),
               subs / "312551011_iclevr.zip")
    zip_folder(transformed_copy(good, work / "disguised", lambda im: im.resize((96, 96), Image.BICUBIC), reorder=True,
                                suffix=".jpg"), subs / "312551012_iclevr.zip")
    # two collapsed models: blank images are alike but are no copy
    for sid in ("312551013", "312551014"):
        out = iclevr_output(work / sid, seed=sid)
        for name in SETS:
            viz.save_numbered(torch.zeros(32, 3, 64, 64), out / name)
        export_zip(out, subs / f"{sid}_iclevr.zip")
    # malicious and broken
    zip_folder(good, subs / "312551020_iclevr.zip", extra={"../../evil_relative.png": b"x", "/tmp/evil_absolute.png": b"x",
                                                            "C:\\evil_drive.png": b"x"})
    with zipfile.ZipFile(zip_folder(good, subs / "312551021_iclevr.zip", skip={"test/0.png"}), "a") as archive:
        link = zipfile.ZipInfo("test/0.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with zipfile.ZipFile(subs / "312551022_iclevr.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("test/0.png", png_bytes(Image.new("RGB", (64, 64))))
        archive.writestr("padding.bin", bytes(20 * 2 ** 20))            # 20 MB of zeros in ~20 KB
    bomb = zip_folder(good, subs / "312551023_iclevr.zip")
    patch_zip(bomb, lambda d: [d.__setitem__(slice(at + 24, at + 28), struct.pack("<I", 0xFFFF_FFF0))
                               for at in headers(d, b"PK\x01\x02")])   # each file declares ~4 GB unpacked
    patch_zip(zip_folder(good, subs / "312551024_iclevr.zip"),
              lambda d: d.__setitem__(slice(d.rfind(b"PK\x05\x06") + 8, d.rfind(b"PK\x05\x06") + 12),
                                      struct.pack("<HH", 60_000, 60_000)))   # a forged count of entries
    truncated = png_bytes(Image.open(good / "test" / "2.png"))
    zip_folder(good, subs / "312551025_iclevr.zip", skip={"test/0.png", "test/1.png", "test/2.png", "test/3.png"},
               extra={"test/0.png": png_declaring(100_000, 100_000), "test/1.png": png_declaring(5_000, 5_000),
                      "test/2.png": truncated[:len(truncated) // 2], "test/3.png": b"<html>404 Not Found</html>"})
    zipfile.ZipFile(subs / "312551026_iclevr.zip", "w").close()
    patch_zip(zip_folder(good, subs / "312551027_iclevr.zip"),
              lambda d: [d.__setitem__(at + off, d[at + off] | 1) for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8))
                         for at in headers(d, sig)])                     # the "encrypted" bit on every entry
    big5 = "王小明".encode("big5")
    patch_zip(zip_folder(good, subs / "312551028_iclevr.zip", prefix="ABCDEF/"),
              lambda d: d.__setitem__(slice(None), d.replace(b"ABCDEF/", big5 + b"/")))
    marker = root / "UNPICKLED"
    payload = pickle.dumps(Touch(marker))
    zip_folder(good, subs / "312551029_iclevr.zip", skip={"accuracy.json", "test/5.png"},
               extra={"checkpoint.pth": payload, "accuracy.json": payload, "test/5.png": payload})
    inner = export_zip(good, work / "inner.zip")
    with zipfile.ZipFile(subs / "312551030_iclevr.zip", "w") as archive:
        archive.write(inner, "312551030_iclevr.zip")
    (subs / "312551031_iclevr.zip").write_bytes(os.urandom(4096))
    (subs / "312551032_iclevr.rar").write_bytes(b"Rar!\x1a\x07\x00")
    linked = subs / "312551033_iclevr"
    shutil.copytree(good, linked)
    (linked / "test" / "0.png").unlink()
    (linked / "test" / "0.png").symlink_to("/etc/passwd")
    (subs / "312551034_iclevr").symlink_to("/")
    zip_folder(good, subs / "<img src=x onerror=alert(1)>_iclevr.zip")
    zip_folder(good, subs / "=HYPERLINK(1)_iclevr.zip", skip={f"test/{i}.png" for i in range(32)})
    return {"root": root, "submissions": subs, "work": work, "marker": marker}


@pytest.fixture(scope="module")
def batch(hand_ins, checkpoint):
    grader = grade.make_grader("iclevr", hand_ins["root"] / "graded", evaluator=checkpoint, device="cpu")
    return grade.grade_folder(hand_ins["submissions"], grader, progress=False)


def row(batch, submission):
    return next(r for r in batch.rows if r.submission == submission)


def messages(r) -> str:
    return " | ".join(r.problems + [n.message for n in r.notes])


# ----------------------------------------------------------------------------- the course's accuracy
def course_accuracy(checkpoint, folder: Path, name: str) -> tuple[int, int]:
    """Hits and labels of ``folder/name/*.png`` as the course computes them: its network, PIL + ToTensor +
    Normalize(0.5, 0.5), and its ``compute_acc`` loop, written independently of ``utils``."""
    net = resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())
    net.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    net.eval()
    read = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    images = torch.stack([read(Image.open(folder / name / f"{i}.png").convert("RGB")) for i in range(32)])
    objects = load_objects(BUNDLED_LABELS / "objects.json")
    labels = torch.zeros(32, 24)
    for i, names in enumerate(LISTS[name]):
        labels[i, [objects[n] for n in names]] = 1
    with torch.no_grad():
        return course_compute_acc(net(images), labels)


def test_a_hand_in_from_the_export_is_ok_and_scored_exactly_as_the_course_scores_its_pngs(batch, hand_ins, checkpoint):
    r = row(batch, "312551001_iclevr.zip")
    assert r.status == "ok" and r.student == "312551001"
    for name in SETS:
        hits, total = course_accuracy(checkpoint, hand_ins["work"] / "good", name)
        assert (r.scores[name]["hits"], r.scores[name]["labels"]) == (hits, total)
        assert r.scores[name]["accuracy"] == hits / total
    assert [r.scores[n]["labels"] for n in SETS] == [72, 84]


def test_reading_a_png_as_the_course_does_equals_the_bundles_model_space_conversion():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).expand(3, 16, 16).contiguous()
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    course = transforms.Normalize((0.5,) * 3, (0.5,) * 3)(transforms.ToTensor()(image))
    assert torch.equal(course, to_model(pixels))


def test_a_claim_that_differs_from_the_measured_accuracy_is_flagged(batch):
    r = row(batch, "312551001_iclevr.zip")       # write_iclevr_set claims 0.5 for both sets
    assert "accuracy_mismatch" in r.flags
    assert r.scores["test"]["claimed"] == 0.5 and "claims test 0.5" in messages(r)


@pytest.mark.parametrize("claim, flagged", [
    ({"test": {"accuracy": 0.8333, "hits": 60, "labels": 72}}, False),
    ({"test": 0.83}, False),                       # rounded to 2 places
    ({"test": 83.33}, False),                      # a percentage
    ({"test_accuracy": 0.8}, False),               # rounded to 1 place
    ({"test": 0.86}, True),
    ({"test": {"accuracy": 0.8333, "hits": 61}}, True),
    ({"test": 1}, True),
])
def test_claims_are_compared_within_their_own_rounding(claim, flagged):
    graded = grade.Graded("x.zip", "x", scores={"test": {"hits": 60, "labels": 72, "accuracy": 60 / 72, "images": 32}})
    grade._claimed(json.loads(json.dumps(claim), parse_float=grade.Decimal), graded)
    assert ("accuracy_mismatch" in graded.flags) == flagged


# ----------------------------------------------------------------------------- as students hand in
def test_a_top_folder_extra_files_and_mac_junk_are_accepted(batch):
    r = row(batch, "312551003_iclevr.zip")
    assert r.status == "ok"
    assert "extra_files" in r.flags and "report.pdf" in messages(r)
    assert "__MACOSX" not in messages(r) and ".DS_Store" not in messages(r)


def test_an_unpacked_folder_is_graded_like_its_zip(batch):
    r = row(batch, "312551004_iclevr")
    assert r.status == "ok" and r.scores["test"]["images"] == 32


def test_jpeg_instead_of_png_is_scored_and_flagged(batch):
    r = row(batch, "312551005_iclevr.zip")
    assert r.scores["test"]["images"] == 32 and r.scores["new_test"]["images"] == 32
    assert "other_suffix" in r.flags and "not_png" in r.flags


def test_images_of_the_wrong_size_are_named_and_scored_after_the_courses_resize(batch):
    r = row(batch, "312551006_iclevr.zip")
    assert r.status == "incomplete"
    assert "test/: 32 of 32 images are wrong (first: test/0.png is 128×128 px; it must be 64×64)" in r.problems
    assert "resized" in r.flags and r.scores["test"]["images"] == 32


def test_missing_images_score_no_hit_and_missing_files_are_named(batch):
    r = row(batch, "312551007_iclevr.zip")
    assert r.status == "incomplete"
    assert "new_test/: 2 of 32 images missing (first: new_test/30.png)" in r.problems
    assert "accuracy.json: missing" in r.problems
    assert r.scores["new_test"]["images"] == 30 and r.scores["new_test"]["labels"] == 84


def test_another_zip_name_is_read_for_the_student_id_and_flagged(batch):
    r = row(batch, "王小明 (312551008) lab6.zip")
    assert r.student == "312551008" and r.status == "ok" and "name" in r.flags


def test_a_course_sites_folder_around_the_zip_is_graded_under_the_zips_student_id(batch):
    r = row(batch, "王小明_1234_assignsubmission_file_")
    assert r.student == "312551009" and r.status == "ok" and "nested_zip" in r.flags and "name" not in r.flags


@pytest.mark.parametrize("name, expected", [
    ("312551001_iclevr.zip", ("312551001", True)),
    ("312551001_iclevr", ("312551001", True)),
    ("Lab6_312551001_iclevr (1).zip", ("312551001", False)),
    ("wang_312551001.zip", ("312551001", False)),
    ("A1234567_hw2_2.zip", ("A1234567", False)),   # an IMVFX name handed to the iCLEVR grader
])
def test_student_id_is_read_from_the_name(name, expected):
    assert grade.student_id(name, "iclevr") == expected


def test_locate_finds_the_top_folder_and_another_image_suffix():
    entries = ["hw/out/test/0.png", "hw/out/test/1.jpg", "hw/old/test/1.png", "hw/out/accuracy.json", "README.md"]
    found = grade.locate(entries, ["test/0.png", "test/1.png", "accuracy.json", "loss_iclevr.jpg"])
    assert found == {"test/0.png": ("hw/out/test/0.png", False), "test/1.png": ("hw/out/test/1.jpg", True),
                     "accuracy.json": ("hw/out/accuracy.json", False)}


# ----------------------------------------------------------------------------- copies
def test_a_resaved_copy_and_a_resized_reordered_jpeg_copy_are_flagged_with_their_source(batch):
    pairs = {frozenset((batch.rows[p.a].student, batch.rows[p.b].student)): p for p in batch.pairs}
    for copier in ("312551011", "312551012"):
        pair = pairs[frozenset(("312551001", copier))]
        assert pair.score >= 0.9, (copier, pair.score)
    assert "copy" in row(batch, "312551012_iclevr.zip").flags


def test_honest_students_and_blank_sets_are_not_flagged_as_copies(batch):
    # the hand-ins made from 312551001's set (copied, or with a few files broken) are copies of each other;
    # no other pair may be flagged
    from_good = {"312551001_iclevr.zip", "312551011_iclevr.zip", "312551012_iclevr.zip", "312551020_iclevr.zip",
                 "312551021_iclevr.zip", "312551025_iclevr.zip", "312551028_iclevr.zip", "312551029_iclevr.zip",
                 "312551030_iclevr.zip", "312551033_iclevr", "<img src=x onerror=alert(1)>_iclevr.zip",
                 "=HYPERLINK(1)_iclevr.zip"}
    for pair in batch.pairs:
        a, b = batch.rows[pair.a].submission, batch.rows[pair.b].submission
        assert a in from_good and b in from_good, (a, b)
    assert len(batch.pairs) == len(from_good) * (len(from_good) - 1) // 2
    assert "blank" in row(batch, "312551013_iclevr.zip").flags
    assert "copy" not in row(batch, "312551013_iclevr.zip").flags


def test_copy_detection_is_order_free_and_survives_resize_and_jpeg():
    originals = [viz.grid_image(im[None], nrow=1, padding=0) for im in scenes("test", seed=20)]
    others = [viz.grid_image(im[None], nrow=1, padding=0) for im in scenes("test", seed=21)]

    def hashed(key, images):
        return grade_copies.ImageSet(key, [str(i) for i in range(len(images))],
                                     np.array([grade_copies.image_hash(im) for im in images]),
                                     np.zeros(len(images), bool))

    def disguised(im):
        buffer = io.BytesIO()
        im.resize((48, 48), Image.BILINEAR).save(buffer, format="JPEG", quality=60)
        return Image.open(buffer)

    sets = [hashed("a", originals), hashed("b", [disguised(im) for im in originals[::-1]]), hashed("c", others)]
    pairs = grade_copies.find_copies(sets)
    assert [(p.a, p.b, len(p.matches)) for p in pairs] == [(0, 1, 32)]
    assert all(m.i == 31 - m.j for m in pairs[0].matches)


def test_hashes_survive_the_cache_round_trip():
    images = grade_copies.ImageSet("a", ["x", "y"], np.array([[1, 2, 3, 2 ** 63 + 5], [0, 0, 0, 7]], dtype=np.uint64),
                                   np.array([False, True]))
    again = grade_copies.ImageSet.from_json("a", json.loads(json.dumps(images.to_json())))
    assert np.array_equal(again.hashes, images.hashes) and list(again.blank) == [False, True]


def test_generated_images_that_are_training_images_are_flagged(tmp_path, checkpoint):
    data = fixtures.write_iclevr_fixture(tmp_path / "data", n_scenes=4)
    out = iclevr_output(tmp_path / "work", seed=9)
    train = sorted((data / "iclevr").glob("*.png"))
    for i in range(6):                                  # six "generated" images are training images, resized
        Image.open(train[i]).convert("RGB").resize((64, 64), Image.BILINEAR).save(out / "test" / f"{i}.png")
    subs = tmp_path / "subs"
    subs.mkdir()
    export_zip(out, subs / "312551040_iclevr.zip")
    grader = grade.make_grader("iclevr", tmp_path / "graded", evaluator=checkpoint, device="cpu")
    training = grade_copies.hash_training_images(data, tmp_path / "graded" / "cache", progress=False)
    assert len(training.names) == 12
    result = grade.grade_folder(subs, grader, training=training, progress=False)
    r = result.rows[0]
    assert "training_copy" in r.flags and "6 of 64 generated images are training images" in messages(r)
    cached = grade_copies.hash_training_images(data, tmp_path / "graded" / "cache", progress=False)
    assert cached.names == training.names and np.array_equal(cached.hashes, training.hashes)
    assert "Generated images that are training images" in result.html_path.read_text()


# ----------------------------------------------------------------------------- untrusted input
def test_zip_entries_that_climb_out_or_are_absolute_are_skipped_and_nothing_is_written(batch, hand_ins):
    r = row(batch, "312551020_iclevr.zip")
    assert "unsafe_path" in r.flags and r.status == "incomplete"
    assert "evil_relative.png" in messages(r) and "evil_absolute.png" in messages(r) and "evil_drive" in messages(r)
    assert not Path("/tmp/evil_absolute.png").exists()
    assert not [p for p in hand_ins["root"].parent.rglob("evil*")]
    assert r.scores["test"]["images"] == 32              # the real files are still graded


def test_a_link_inside_a_zip_is_not_followed(batch):
    r = row(batch, "312551021_iclevr.zip")
    assert "link" in r.flags and "test/: 1 of 32 images missing (first: test/0.png)" in r.problems


def test_a_link_inside_a_folder_is_not_followed(batch):
    r = row(batch, "312551033_iclevr")
    assert "link" in r.flags and r.scores["test"]["images"] == 31


def test_a_submission_that_is_a_link_is_not_followed(batch):
    r = row(batch, "312551034_iclevr")
    assert r.status == "rejected" and "is a link" in r.problems[0]


@pytest.mark.parametrize("submission, reason", [
    ("312551022_iclevr.zip", "ratio"),                       # 20 MB of zeros packed into ~20 KB
    ("312551023_iclevr.zip", "unpacks to"),                  # declared sizes of gigabytes
    ("312551024_iclevr.zip", "declares 60,000 files"),       # a forged entry count
])
def test_zip_bombs_are_rejected_without_unpacking(batch, submission, reason):
    r = row(batch, submission)
    assert r.status == "rejected" and reason in r.problems[0] and "zip bomb" in r.problems[0]


def test_image_bombs_truncated_and_fake_pngs_each_get_a_reason_and_the_rest_is_graded(batch):
    r = row(batch, "312551025_iclevr.zip")
    assert r.status == "incomplete" and r.scores["test"]["images"] == 28
    assert "test/: 4 of 32 images are wrong (first: test/0.png is an image bomb" in messages(r)
    reasons = {}
    for name, data in (("huge", png_declaring(100_000, 100_000)), ("large", png_declaring(5_000, 5_000)),
                       ("html", b"<html>404 Not Found</html>")):
        with pytest.raises(FileProblem) as err:
            open_image(data)
        reasons[name] = str(err.value)
    assert "image bomb" in reasons["huge"] and "image bomb" in reasons["large"] and "5,000×5,000" in reasons["large"]
    assert "looks like HTML" in reasons["html"]


def test_a_truncated_png_says_so():
    data = png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"))
    with pytest.raises(FileProblem, match="truncated or damaged"):
        open_image(data[: len(data) // 2])


@pytest.mark.parametrize("submission, reason", [
    ("312551026_iclevr.zip", "is empty"),
    ("312551027_iclevr.zip", "password-protected"),
    ("312551031_iclevr.zip", "not a zip file"),
    ("312551032_iclevr.rar", "a .rar archive"),
])
def test_unusable_zips_are_rejected_with_the_reason(batch, submission, reason):
    r = row(batch, submission)
    assert r.status == "rejected" and reason in r.problems[0]


def test_file_names_in_another_encoding_are_flagged_and_the_hand_in_still_graded(batch):
    r = row(batch, "312551028_iclevr.zip")
    assert r.status == "ok" and "encoding" in r.flags and r.scores["test"]["images"] == 32


def test_pickles_are_reported_never_loaded(batch, hand_ins):
    r = row(batch, "312551029_iclevr.zip")
    assert not hand_ins["marker"].exists()
    assert "model_file" in r.flags and "checkpoint.pth" in messages(r)
    assert "accuracy.json: not valid JSON" in messages(r)
    assert "test/5.png is not an image (it looks like a Python pickle)" in messages(r)


def test_a_zip_inside_the_zip_is_graded(batch):
    r = row(batch, "312551030_iclevr.zip")
    assert r.status == "ok" and "nested_zip" in r.flags and r.scores["test"]["images"] == 32


@pytest.mark.parametrize("name, safe", [
    ("test/0.png", "test/0.png"), ("./a//b.png", "a/b.png"), ("a\\b.png", "a/b.png"), ("../x.png", None),
    ("a/../../x.png", None), ("/etc/passwd", None), ("C:\\x.png", None), ("a\x00b.png", None), ("", None),
])
def test_safe_name(name, safe):
    assert safe_name(name) == safe


def test_the_grader_writes_only_in_its_output_folder_and_leaves_no_scratch(batch, hand_ins):
    graded = hand_ins["root"] / "graded"
    assert not (graded / ".scratch").exists()
    assert {p.name for p in graded.iterdir()} == {"grades.csv", "report.html", "thumbs", "cache"}
    assert sorted(p.name for p in hand_ins["root"].iterdir()) == ["graded", "submissions", "work"]


def test_a_failure_of_the_grader_on_one_hand_in_does_not_stop_the_batch(tmp_path, hand_ins, checkpoint, monkeypatch):
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("312551001_iclevr.zip", "312551002_iclevr.zip"):
        shutil.copy(hand_ins["submissions"] / name, subs / name)
    real = grade.GRADERS["iclevr"]

    def flaky(hand_in, grader, scratch, graded):
        if graded.submission.startswith("312551001"):
            raise ZeroDivisionError("a bug")
        return real(hand_in, grader, scratch, graded)

    monkeypatch.setitem(grade.GRADERS, "iclevr", flaky)
    grader = grade.make_grader("iclevr", tmp_path / "graded", evaluator=checkpoint, device="cpu")
    result = grade.grade_folder(subs, grader, progress=False)
    assert [r.status for r in result.rows] == ["error", "ok"]
    assert "ZeroDivisionError: a bug" in result.rows[0].problems[0]


def test_open_hand_in_refuses_a_folder_beyond_the_limits(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(b"x")
    with pytest.raises(Rejected, match="beyond a hand-in"):
        open_hand_in(tmp_path, Limits(max_entries=3))


# ----------------------------------------------------------------------------- cache
def test_a_second_run_reuses_unchanged_hand_ins_by_content(tmp_path, hand_ins, checkpoint, monkeypatch):
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("312551001_iclevr.zip", "312551002_iclevr.zip", "312551026_iclevr.zip"):
        shutil.copy(hand_ins["submissions"] / name, subs / name)
    grader = grade.make_grader("iclevr", tmp_path / "graded", evaluator=checkpoint, device="cpu")
    first = grade.grade_folder(subs, grader, progress=False)
    graded = []
    real = grade.GRADERS["iclevr"]
    monkeypatch.setitem(grade.GRADERS, "iclevr", lambda h, g, s, r: graded.append(r.submission) or real(h, g, s, r))
    export_zip(iclevr_output(tmp_path / "new", seed=12), subs / "312551002_iclevr.zip")   # a new hand-in
    second = grade.grade_folder(subs, grader, progress=False)
    assert graded == ["312551002_iclevr.zip"]
    assert grade_report.csv_rows(second)[1][0] == grade_report.csv_rows(first)[1][0]
    other = grade.make_grader("iclevr", tmp_path / "graded", evaluator=checkpoint, device="cpu",
                              labels=_labels_copy(tmp_path))
    assert other.cache_dir != grader.cache_dir       # other label files: nothing reused


def _labels_copy(tmp_path):
    folder = tmp_path / "labels"
    shutil.copytree(BUNDLED_LABELS, folder)
    lists = LISTS["test"][::-1]
    (folder / "test.json").write_text(json.dumps(lists))
    return folder


# ----------------------------------------------------------------------------- CSV and HTML
def test_the_csv_has_one_row_per_hand_in_and_formulas_are_neutralised(batch, hand_ins):
    with open(batch.csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list(hand_ins["submissions"].iterdir()))
    good = next(r for r in rows if r["submission"] == "312551001_iclevr.zip")
    assert good["status"] == "ok" and good["test_hits"].endswith("/72") and "312551011" in good["copies_of"]
    formula = next(r for r in rows if "HYPERLINK" in r["submission"])
    assert formula["student"].startswith("'=") and formula["submission"].startswith("'=")


class Page(HTMLParser):
    """The report page's table rows (cell texts), scripts, image sources and CSP."""

    def __init__(self):
        super().__init__()
        self.rows, self.scripts, self.images, self.csp, self.headers = [], 0, [], "", []
        self._cell, self._in_body, self._in_th = None, False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._cell = []
        elif tag == "th":
            self._in_th = True
            self.headers.append("")
        elif tag == "script":
            self.scripts += 1
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.csp = attrs["content"]

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(" ".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data.strip())
        if self._in_th:
            self.headers[-1] += data


@pytest.fixture(scope="module")
def page(batch):
    parser = Page()
    parser.feed(batch.html_path.read_text(encoding="utf-8"))
    return parser


def test_the_report_lists_every_hand_in_with_status_scores_and_thumbnails(batch, page):
    assert page.headers == ["student", "status", "test", "new_test", "flags", "problems and notes", "hand-in images"]
    assert len(page.rows) == len(batch.rows)
    good = next(cells for cells in page.rows if cells[0].startswith("312551001"))
    score = row(batch, "312551001_iclevr.zip").scores["test"]
    assert good[1] == "ok" and f"{score['accuracy']:.4f}" in good[2] and "/72" in good[2]
    thumbs = [src for src in page.images if src.startswith("thumbs/")]
    assert thumbs and all((batch.html_path.parent / src).is_file() for src in thumbs)


def test_the_report_shows_each_flagged_pair_side_by_side(batch):
    text = batch.html_path.read_text(encoding="utf-8")
    assert text.count('class="pair"') == len(batch.pairs) > 0
    assert "312551001</a> ↔ <a" in text and "background-image:url('thumbs/" in text


def test_names_from_hand_ins_are_escaped_and_only_our_script_runs(batch, page):
    text = batch.html_path.read_text(encoding="utf-8")
    assert "<img src=x onerror" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert page.scripts == 1
    assert "script-src 'sha256-" in page.csp and "default-src 'none'" in page.csp
    import base64
    import hashlib
    digest = base64.b64encode(hashlib.sha256(grade_report.SCRIPT.encode()).digest()).decode()
    assert f"<script>{grade_report.SCRIPT}</script>" in text and digest in page.csp


# ----------------------------------------------------------------------------- IMVFX
def imvfx_output(work: Path, seed: int) -> tuple[Path, Path]:
    """Notebooks 01 and 02's output folders for one student: real MNIST digits, drawn scenes for the faces."""
    mnist_dir, anime_dir = work / "mnist", work / "anime"
    mnist_dir.mkdir(parents=True)
    anime_dir.mkdir(parents=True)
    write_imvfx_set(mnist_dir, anime_dir)
    digits = fixtures.offline_sample().images
    viz.save_grid(to_model(digits[seed * 25:(seed + 1) * 25]), mnist_dir / "result_mnist.jpg", nrow=5)
    viz.save_grid(scenes("test", seed)[:25], anime_dir / "result_anime.jpg", nrow=5)
    return mnist_dir, anime_dir


def imvfx_zip(work: Path, zip_path: Path, readme: str = "Trained 30 epochs on a T4.\n", **names) -> Path:
    files = export.imvfx_files(work / "mnist", work / "anime")
    (work / "readme.txt").write_text(readme)
    files.append(export.HandInFile("readme.txt", work / "readme.txt", "test"))
    return export.write_zip(zip_path, files)


@pytest.fixture(scope="module")
def imvfx_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("imvfx")
    subs = root / "submissions"
    subs.mkdir()
    good = root / "good"
    imvfx_output(good, seed=1)
    imvfx_zip(good, subs / "312551001_hw2_2.zip")
    imvfx_output(root / "honest", seed=2)
    imvfx_zip(root / "honest", subs / "312551002_hw2_2.zip")
    imvfx_zip(good, subs / "312551003_hw2_2.zip", readme=export.README_TEMPLATE)
    copy = root / "copy"
    shutil.copytree(good, copy)
    for name in ("mnist/result_mnist.jpg", "anime/result_anime.jpg"):
        grid = Image.open(good / name)
        grid.resize((grid.width * 2, grid.height * 2), Image.BICUBIC).save(copy / name, quality=60)
    zip_folder(copy, subs / "312551004_hw2_2.zip", skip={"readme.txt"})
    four = root / "four"
    imvfx_output(four, seed=5)
    viz.save_grid(torch.zeros(16, 3, 64, 64), four / "anime" / "result_anime.jpg", nrow=4, expected=16)
    (four / "mnist" / "loss_mnist.jpg").write_bytes(b"not a jpeg")
    imvfx_zip(four, subs / "312551005_hw2_2.zip")
    out = root / "graded"
    result = subprocess.run([sys.executable, "-m", "utils.grade", "imvfx", str(subs), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert result.returncode == 0, result.stderr
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        return {r["student"]: r for r in csv.DictReader(f)}, result.stdout


def test_imvfx_command_grades_the_folder_and_prints_where_the_report_is(imvfx_batch):
    rows, stdout = imvfx_batch
    assert "5 hand-ins graded" in stdout and "report.html" in stdout
    assert rows["312551001"]["status"] == "ok" and rows["312551002"]["status"] == "ok"


def test_imvfx_readme_template_and_missing_readme_are_named(imvfx_batch):
    rows, _ = imvfx_batch
    assert "readme.txt: is still the template" in rows["312551003"]["problems"]
    assert "readme.txt: missing" in rows["312551004"]["problems"]


def test_imvfx_wrong_grid_and_broken_loss_plot_are_named(imvfx_batch):
    rows, _ = imvfx_batch
    problems = rows["312551005"]["problems"]
    assert rows["312551005"]["status"] == "incomplete"
    assert "result_anime.jpg: is a grid of 4 per row × 4 rows; the assignment needs 5 per row × 5 rows" in problems
    assert "loss_mnist.jpg: is not an image" in problems


def test_imvfx_copies_are_found_cell_by_cell_in_resized_grids(imvfx_batch):
    rows, _ = imvfx_batch
    assert "312551004" in rows["312551001"]["copies_of"] and "312551003" in rows["312551001"]["copies_of"]
    assert rows["312551002"]["copies_of"] == "" and rows["312551005"]["copies_of"] == ""


def test_grid_cells_cut_a_resized_grid_where_its_cells_are():
    images = torch.linspace(-1, 1, 25).reshape(25, 1, 1, 1).expand(25, 3, 28, 28)
    grid = viz.grid_image(images, nrow=5)
    cells = grade.grid_cells(grid.resize((grid.width * 2, grid.height * 2)), 28)
    assert len(cells) == 25 and cells[7][0] == (1, 2)
    value = np.asarray(cells[7][1]).mean()
    assert abs(value - (images[7, 0, 0, 0].item() + 1) * 127.5) < 2
