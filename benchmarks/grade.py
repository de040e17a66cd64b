"""Grading a course's iCLEVR hand-ins: time, memory, and how well copies are told from honest work.

1. ``--students`` synthetic students (default 100), 64 images each (32 test + 32 new_test, one per label
   list of the course's files), each zipped with the export's own file table and zip writer. The images
   stand in for model samples: each label list's objects drawn at random places and sizes, with each
   student's own background tint, blur and noise. They are graded by the command a TA runs
   (``python -m utils.grade iclevr``, in a subprocess: its wall time and peak memory), then once more
   (the cache).
2. False positives: every pair of these honest students (100 → 4,950 pairs) that the grader flags as a
   copy; per image, the distance to the nearest image of another student.
3. Copies: ``--copies`` per kind, each of a different honest student (re-saved, resized up / down, JPEG
   q75 / q50, reordered, all of these at once, half the images copied, and a 4-px crop as a stress test),
   added to the folder with one hand-in carrying a 256 MB checkpoint (memory must not grow with it), and
   graded again: the share of copies flagged with their source, and the distances of copied images.
4. ``--smoke-exports``: hand-ins made the way students make them, by the CLI's smoke runs and
   ``export.export_iclevr`` / ``export.export_imvfx``, graded by both commands; the accuracy the grader
   measures on the PNGs must equal the one the run wrote in ``accuracy.json``.

Run: python benchmarks/grade.py [--students 100] [--copies 10] [--smoke-exports]   (→ benchmarks/results/grade.md)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from _common import RESULTS, write_result
from PIL import Image, ImageDraw, ImageFilter

from utils import export, fixtures, grade_copies, viz
from utils.data import to_model
from utils.data.iclevr import BUNDLED_LABELS, COLORS, load_label_lists

ROOT = Path(__file__).resolve().parent.parent
SETS = ("test", "new_test")
LIAR = 3                      # the one honest student whose accuracy.json claims 0.2 more than its images score
LISTS = {name: load_label_lists(BUNDLED_LABELS / f"{name}.json") for name in SETS}


# ----------------------------------------------------------------------------- synthetic students
def student_images(student: int) -> dict[str, list[Image.Image]]:
    """One student's 64 samples: each label list's objects at random places, in the student's own style."""
    style = random.Random(f"style-{student}")
    gray = style.uniform(95, 150)
    tint = np.array([style.uniform(-12, 12) for _ in range(3)])
    blur, noise, scale = style.uniform(0.3, 1.2), style.uniform(2, 8), style.uniform(0.8, 1.2)
    out = {}
    for name in SETS:
        images = []
        for i, names in enumerate(LISTS[name]):
            rng = random.Random(f"{student}-{name}-{i}")
            image = Image.new("RGB", (64, 64), tuple(int(v) for v in np.clip(gray + tint, 0, 255)))
            draw = ImageDraw.Draw(image)
            for obj in names:
                color, shape = obj.split(" ")
                size = rng.uniform(10, 18) * scale
                x, y = rng.uniform(2, 62 - size), rng.uniform(18, 62 - size)     # the floor: lower part of the image
                draw.ellipse([x + 2, y + size - 3, x + size + 4, y + size + 3], fill=(70, 70, 70))   # shadow
                fill = COLORS[color]
                if shape == "cube":
                    draw.rectangle([x, y, x + size, y + size], fill=fill)
                elif shape == "sphere":
                    draw.ellipse([x, y, x + size, y + size], fill=fill)
                    draw.ellipse([x + size * .25, y + size * .2, x + size * .45, y + size * .4],
                                 fill=tuple(min(255, c + 60) for c in fill))    # highlight
                else:
                    draw.rounded_rectangle([x + size * .2, y, x + size * .8, y + size], radius=size / 5, fill=fill)
            image = image.filter(ImageFilter.GaussianBlur(blur))
            pixels = np.asarray(image, np.float32) + np.random.default_rng(rng.randrange(2 ** 31)).normal(0, noise, (64, 64, 3))
            images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
        out[name] = images
    return out


def write_output(out: Path, images: dict[str, list[Image.Image]], claims: dict, suffix: str = ".png") -> Path:
    """Notebook 03's output folder with these images (``.jpg`` files: JPEG q70) and ``claims`` as its
    ``accuracy.json``: every file the export zips."""
    import torch

    for name in SETS:
        (out / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images[name]):
            image.save(out / name / f"{i}{suffix}", **({"quality": 70} if suffix == ".jpg" else {}))
        tensor = to_model(torch.from_numpy(np.stack([np.asarray(im.convert("RGB").resize((64, 64)))
                                                     for im in images[name]])).permute(0, 3, 1, 2))
        viz.save_grid(tensor, out / f"{name}_grid.png", nrow=8, expected=32)
    viz.denoising_strip([tensor[:1]] * 8, out / "denoising_process.png")
    (out / "accuracy.json").write_text(json.dumps(claims))
    (out / "guidance_sweep.csv").write_text("guidance_scale,test,new_test\n1.0,0.5,0.5\n")
    for name in ("guidance_sweep.png", "loss_iclevr.jpg"):
        Image.new("RGB", (320, 240), "white").save(out / name)
    return out


def zip_output(out: Path, zip_path: Path) -> Path:
    """Zip an output folder: with the export's writer when its names are the export's, else file by file."""
    files = export.iclevr_files(out)
    if all(item.source.is_file() for item in files):
        return export.write_zip(zip_path, files)
    import zipfile

    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(out.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(out).as_posix())
    return zip_path


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def resave(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def reordered(images, seed):
    order = list(range(32))
    random.Random(seed).shuffle(order)
    return {name: [images[name][k] for k in order] for name in SETS}, order


# kind → (change one image, reorder, suffix, share of images copied)
COPIES = {
    "re-saved PNG": (resave, False, ".png", 1.0),
    "resized up to 128 px": (lambda im: im.resize((128, 128), Image.BICUBIC), False, ".png", 1.0),
    "resized down to 40 px and back": (lambda im: im.resize((40, 40), Image.BILINEAR).resize((64, 64), Image.BICUBIC),
                                       False, ".png", 1.0),
    "JPEG q75 round trip": (lambda im: jpeg(im, 75), False, ".png", 1.0),
    "JPEG q50 round trip": (lambda im: jpeg(im, 50), False, ".png", 1.0),
    "reordered": (lambda im: im, True, ".png", 1.0),
    "resized to 96 px, reordered, handed in as JPEG q70 .jpg": (lambda im: im.resize((96, 96), Image.BICUBIC), True,
                                                                ".jpg", 1.0),
    "half the images copied": (lambda im: im, False, ".png", 0.5),
    "cropped 4 px and resized back (stress)": (lambda im: im.crop((4, 4, 64, 64)).resize((64, 64), Image.BICUBIC),
                                               False, ".png", 1.0),
}


def make_copy(kind: str, source: int, own: int) -> tuple[dict, list[int]]:
    """A copier's images: ``source``'s changed by ``kind`` (a share of them; the rest the copier's own ``own``)."""
    change, reorder, _, share = COPIES[kind]
    original = student_images(source)
    mine = student_images(own)
    images = {name: [change(im) for im in original[name]] for name in SETS}
    if share < 1:
        images["new_test"] = mine["new_test"]
    order = list(range(32))
    if reorder:
        images, order = reordered(images, f"copy-{source}")
    return images, order


class Claims:
    """What each synthetic student's notebook writes in ``accuracy.json``: the course accuracy of its images as
    saved (``iclevr_accuracy.accuracy`` on the 8-bit pixels, as notebook 03 computes it)."""

    def __init__(self, evaluator: Path):
        import torch

        from utils import iclevr_accuracy
        from utils.data.iclevr import encode_labels, load_objects

        self.torch, self.accuracy = torch, iclevr_accuracy.accuracy
        self.net = iclevr_accuracy.load_evaluator(evaluator, "cpu")
        objects = load_objects(BUNDLED_LABELS / "objects.json")
        self.labels = {name: encode_labels(LISTS[name], objects) for name in SETS}

    def __call__(self, images: dict[str, list[Image.Image]], lie: float = 0.0) -> dict:
        out = {}
        for name in SETS:
            pixels = np.stack([np.asarray(im.convert("RGB")) for im in images[name]])
            acc = self.accuracy(self.net, to_model(self.torch.from_numpy(pixels).permute(0, 3, 1, 2)), self.labels[name])
            out[name] = {"accuracy": min(1.0, acc.value + lie), "hits": acc.hits, "labels": acc.total}
        return out


# ----------------------------------------------------------------------------- running the grader
PEAK = ("import resource, runpy, sys\n"
        "sys.argv = ['utils.grade', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('utils.grade', run_name='__main__')\n"
        "finally:\n    use = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    print('PEAK_KB', use.ru_maxrss, 'CPU_S', use.ru_utime + use.ru_stime, file=sys.stderr)\n")


def run_grader(submissions: Path, out: Path, evaluator: Path, *extra: str) -> dict:
    """``python -m utils.grade iclevr`` in a subprocess: wall time, peak memory (RSS), its CSV rows."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK, "iclevr", str(submissions), "--evaluator", str(evaluator),
                             "--out", str(out), "--quiet", *extra], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr)
    usage = result.stderr.rsplit("PEAK_KB", 1)[1].split()
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"seconds": seconds, "cpu_seconds": float(usage[2]), "peak_mb": int(usage[0]) / 1024, "rows": rows,
            "stdout": result.stdout.strip()}


def flagged_pairs(rows: list[dict]) -> set[frozenset]:
    pairs = set()
    for r in rows:
        for item in filter(None, r["copies_of"].split("; ")):
            pairs.add(frozenset((r["student"], item.rsplit(" (", 1)[0])))
    return pairs


def load_sets(out: Path) -> dict[str, grade_copies.ImageSet]:
    """Every graded hand-in's hashed images, from the grader's cache (student id → ImageSet)."""
    sets = {}
    with open(out / "grades.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for path in (out / "cache").rglob(f"{r['sha256']}.json"):
            data = json.loads(path.read_text())
            if data["images"]:
                sets[r["student"]] = grade_copies.ImageSet.from_json(r["student"], data["images"])
    return sets


def percentiles(values, qs=(0, 0.1, 1, 50)) -> str:
    values = np.asarray(values)
    return " / ".join(f"{np.percentile(values, q):.0f}" for q in qs)


# ----------------------------------------------------------------------------- smoke exports
def smoke_exports(work: Path) -> str:
    """Hand-ins written by the CLI's smoke runs and the export, graded by both commands."""
    env = {**os.environ, "DDPM_SMOKE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    lines = []
    for name in ("iclevr", "mnist", "anime"):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "utils.cli", "--config", name, "--preset", "smoke", "--workdir",
                        str(work / name), "--max_steps", "2"], check=True, env=env, cwd=ROOT, capture_output=True)
        lines.append(f"smoke run {name}: {time.perf_counter() - start:.0f} s")
    subs_ic, subs_im = work / "subs_iclevr", work / "subs_imvfx"
    subs_ic.mkdir()
    subs_im.mkdir()
    out_ic = work / "iclevr" / "outputs" / "iclevr"
    hand_in = export.export_iclevr("312550001", out_ic, subs_ic)
    zips = work / "imvfx_zip"
    zips.mkdir()
    (zips / "readme.txt").write_text("Smoke run of notebooks 01 and 02.\n")     # the readme the student edited
    imvfx_zip = export.export_imvfx("312550001", work / "mnist" / "outputs" / "mnist",
                                    work / "anime" / "outputs" / "anime", zips).zip_path
    shutil.move(imvfx_zip, subs_im / imvfx_zip.name)
    evaluator = next((work / "iclevr").rglob("checkpoint.pth"))
    result = run_grader(subs_ic, work / "graded_iclevr", evaluator)
    r = result["rows"][0]
    claimed = json.loads((out_ic / "accuracy.json").read_text())
    lines.append(f"iCLEVR export {hand_in.zip_path.name}: status {r['status']}, flags '{r['flags']}'; measured "
                 f"test {r['test_hits']} = {r['test_accuracy']}, new_test {r['new_test_hits']} = {r['new_test_accuracy']}; "
                 f"the run's accuracy.json: test {claimed['test']['hits']}/{claimed['test']['labels']}, new_test "
                 f"{claimed['new_test']['hits']}/{claimed['new_test']['labels']}")
    imvfx = subprocess.run([sys.executable, "-m", "utils.grade", "imvfx", str(subs_im), "--out",
                            str(work / "graded_imvfx"), "--quiet"], env=env, cwd=ROOT, capture_output=True, text=True)
    with open(work / "graded_imvfx" / "grades.csv", newline="", encoding="utf-8") as f:
        r = next(csv.DictReader(f))
    lines.append(f"IMVFX export {r['submission']}: status {r['status']}, flags '{r['flags']}', problems "
                 f"'{r['problems']}' ({imvfx.stdout.strip().splitlines()[0]})")
    return "\n".join(f"- {line}" for line in lines)


def screenshot(work: Path, subs: Path, copies: dict, evaluator: Path, claims: Claims) -> str:
    """A small folder of typical cases (honest, a liar, two copies, an incomplete and an empty hand-in),
    graded, and screenshots of its report page in headless Chromium (→ results/grade_report*.png)."""
    demo = work / "demo"
    demo.mkdir()
    kinds = ("JPEG q50 round trip", "resized to 96 px, reordered, handed in as JPEG q70 .jpg")
    picked = [min(sid for sid, (k, _, _) in copies.items() if k == kind) for kind in kinds]
    names = [f"{312600000 + s}_iclevr.zip" for s in range(6)] + [f"{copies[sid][1]}_iclevr.zip" for sid in picked]
    names += [f"{sid}_iclevr.zip" for sid in picked]
    for name in dict.fromkeys(names):
        shutil.copy(subs / name, demo / name)
    images = student_images(900)
    out = write_output(work / "tmp", images, claims(images))
    for path in (out / "new_test" / "30.png", out / "new_test" / "31.png", out / "accuracy.json"):
        path.unlink()
    zip_output(out, demo / "312600900_iclevr.zip")
    shutil.rmtree(out)
    zipfile.ZipFile(demo / "312600901_iclevr.zip", "w").close()
    graded = work / "demo_graded"
    run_grader(demo, graded, evaluator)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        return "(no Chromium here: no screenshot)"
    page = (graded / "report.html").read_text(encoding="utf-8")
    head, body = page.split("<body>", 1)
    copies_only = graded / "report_copies.html"        # the page's own copies section, as the page renders it
    copies_only.write_text(head + "<body>" + body[body.index('<h2 id="copies">'):], encoding="utf-8")
    shots = []
    for name, html, height in (("grade_report.png", graded / "report.html", 1400),
                               ("grade_report_copies.png", copies_only, 900)):
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size=1400,{height}", f"--screenshot={RESULTS / name}", html.as_uri()],
                       capture_output=True, timeout=180, check=True)
        shots.append(f"[`{name}`]({name})")
    return f"{len(list(demo.iterdir()))} hand-ins graded and opened in headless Chromium: " + ", ".join(shots)


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--copies", type=int, default=10, help="copies of each kind")
    parser.add_argument("--smoke-exports", action="store_true")
    parser.add_argument("--screenshot", action="store_true", help="grade a small folder of typical cases and "
                        "screenshot its report page in headless Chromium")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="grade-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    evaluator = fixtures.write_evaluator_fixture(work / "checkpoint.pth")
    subs = work / "submissions"
    subs.mkdir(exist_ok=True)
    claims = Claims(evaluator)
    start = time.perf_counter()
    for s in range(args.students):
        images = student_images(s)
        out = write_output(work / "tmp", images, claims(images, lie=0.2 if s == LIAR else 0.0))
        zip_output(out, subs / f"{312600000 + s}_iclevr.zip")
        shutil.rmtree(out)
    made = time.perf_counter() - start
    out = work / "graded"
    first = run_grader(subs, out, evaluator)
    again = run_grader(subs, out, evaluator)
    honest_ids = [r["student"] for r in first["rows"]]
    mismatched = [r["student"] for r in first["rows"] if "accuracy_mismatch" in r["flags"]]
    false_pairs = flagged_pairs(first["rows"])
    sets = load_sets(out)
    every = np.concatenate([sets[k].hashes for k in honest_ids])
    owner = np.concatenate([np.full(len(sets[k].names), i) for i, k in enumerate(honest_ids)])
    nearest, same_label = [], []
    for i, k in enumerate(honest_ids):
        d = grade_copies.distances(sets[k].hashes, every)
        d[:, owner == i] = 10 ** 6
        nearest += list(d.min(axis=1))
        others = [j for j in range(len(honest_ids)) if j != i]
        same_label += list(np.concatenate([d[np.arange(64), np.flatnonzero(owner == j)] for j in others[:20]]))
    image_fp = float(np.mean(np.array(nearest) <= grade_copies.MAX_DISTANCE))
    closest = max(grade_copies.find_copies([sets[k] for k in honest_ids], min_fraction=0, min_matches=1),
                  key=lambda p: len(p.matches), default=None)
    closest_text = (f"{len(closest.matches)} of {closest.compared} images (score {closest.score:.3f})" if closest
                    else "no image at all")
    baseline = subprocess.run([sys.executable, "-c", "import resource, torch, torchvision, utils.grade; "
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                              capture_output=True, text=True, cwd=ROOT, check=True)
    baseline_mb = int(baseline.stdout) / 1024

    # copies, and one hand-in with a large checkpoint inside
    copies = {}
    k = 0
    for kind, (_, _, suffix, _) in COPIES.items():
        for c in range(args.copies):
            source, own = k % args.students, (k + 7) % args.students
            images, order = make_copy(kind, source, own)
            sid = str(312700000 + k)
            o = write_output(work / "tmp", images, claims(student_images(source)), suffix=suffix)   # its claims too
            zip_output(o, subs / f"{sid}_iclevr.zip")
            shutil.rmtree(o)
            copies[sid] = (kind, str(312600000 + source), order)
            k += 1
    heavy = subs / "312799999_iclevr.zip"
    shutil.copy(subs / "312600001_iclevr.zip", heavy)
    with zipfile.ZipFile(heavy, "a", zipfile.ZIP_STORED) as archive, archive.open("checkpoint.pth", "w", force_zip64=True) as f:
        chunk = os.urandom(1 << 20)
        for _ in range(256):
            f.write(chunk)
    second = run_grader(subs, out, evaluator)
    pairs = flagged_pairs(second["rows"])
    copy_sets = load_sets(out)
    by_kind: dict[str, list] = {}
    for sid, (kind, source, order) in copies.items():
        found = frozenset((sid, source)) in pairs
        score = next((float(item.rsplit(" (", 1)[1].rstrip(")")) for r in second["rows"] if r["student"] == sid
                      for item in filter(None, r["copies_of"].split("; ")) if item.startswith(source)), 0.0)
        d = grade_copies.distances(copy_sets[sid].hashes, copy_sets[source].hashes)
        matched = [d[SETS.index(n) * 32 + i, SETS.index(n) * 32 + order[i]] for n in SETS for i in range(32)]
        share = COPIES[kind][3]
        matched = matched[:int(64 * share)]
        by_kind.setdefault(kind, []).append((found, score, matched))
    honest_after = [p for p in pairs if not any(s in copies or s == "312799999" for s in p)]
    lines = [f"| {kind} | {sum(f for f, _, _ in v)}/{len(v)} | {np.mean([s for _, s, _ in v]):.2f} | "
             f"{np.max([m for _, _, ms in v for m in ms]):.0f} / {np.percentile([m for _, _, ms in v for m in ms], 99):.0f} |"
             for kind, v in by_kind.items()]
    n_pairs = args.students * (args.students - 1) // 2
    heavy_row = next(r for r in second["rows"] if r["student"] == "312799999")
    smoke = smoke_exports(work / "smoke") if args.smoke_exports else "(not run: --smoke-exports)"
    shots = screenshot(work, subs, copies, evaluator, claims) if args.screenshot else "(not run: --screenshot)"
    report = f"""
# Grading iCLEVR hand-ins (`benchmarks/grade.py`)

Load average when it started: {load:.2f} (2 cores; other jobs were running on this machine, so times are
upper bounds). The grader ran as a TA runs it, `python -m utils.grade iclevr SUBMISSIONS --evaluator
checkpoint.pth`, in a subprocess with OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "1")}, on synthetic hand-ins
(each label list's objects drawn at random places in the student's own tint, blur and noise; the evaluator
is the randomly initialised stand-in: accuracy values are meaningless, their cost is real).

## Time and memory

| run | hand-ins | wall time | CPU time (user + sys) | CPU per hand-in | peak memory (RSS) |
|---|---|---|---|---|---|
| first run | {args.students} (64 images each) | {first['seconds']:.1f} s | {first['cpu_seconds']:.1f} s | {first['cpu_seconds'] / args.students:.2f} s | {first['peak_mb']:.0f} MB |
| second run, same folder (cache by content hash) | {args.students} | {again['seconds']:.1f} s | {again['cpu_seconds']:.1f} s | — | {again['peak_mb']:.0f} MB |
| copies added (graded: only the new ones) | {len(second['rows'])} (+ one with a 256 MB checkpoint) | {second['seconds']:.1f} s | {second['cpu_seconds']:.1f} s | — | {second['peak_mb']:.0f} MB |

The CPU time is what grading costs on a free core; the wall time is what it took next to the other jobs.

Writing the {args.students} synthetic zips took {made:.0f} s (not part of grading). The hand-in with the 256 MB
checkpoint: status {heavy_row['status']}, flags `{heavy_row['flags']}` (the checkpoint is hashed as a stream for the
cache key and never read into memory or unpickled). Peak memory is the grading process's high-water mark; importing
torch (the CUDA build), torchvision and the grader alone takes {baseline_mb:.0f} MB of it. It does not grow with the
number or size of hand-ins: one hand-in is open at a time, and only its 64 hashes (2 KB) are kept.

Each student's `accuracy.json` holds what its notebook computes on the images as saved; one student
({312600000 + LIAR}) claims 0.2 more. Flagged for a claim beyond rounding: {", ".join(mismatched) or "none"}.

## False positives (honest students)

- Pairs of different honest students flagged as copies: **{len(false_pairs)} of {n_pairs:,}** (after the copies were
  added: {len(honest_after)} honest pairs flagged).
- Per image, distance (bits of 256) to the nearest image of any other student, min / 0.1 % / 1 % / median:
  {percentiles(nearest)}; to the image of the same label list of another student: {percentiles(same_label)}.
  Share of honest images with another student's image within the match threshold ({grade_copies.MAX_DISTANCE} bits):
  {image_fp:.2%}. A pair needs at least half of the smaller set matched one to one ({grade_copies.MIN_FRACTION});
  the closest honest pair matched {closest_text}.

## Copies ({args.copies} of each kind, each of a different student)

| copy | flagged with its source | mean score | distance of copied images, max / 99 % |
|---|---|---|---|
{chr(10).join(lines)}

## Hand-ins from the bundle's own smoke runs and export

{smoke}

## The report page in a browser

{shots}
"""
    write_result("grade", report)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
