"""Hand-in packaging: check that an assignment's files are all there and right, then zip them.

* IMVFX DDPM homework: ``result_mnist.jpg``, ``loss_mnist.jpg`` (notebook 01), ``result_anime.jpg``,
  ``loss_anime.jpg`` (notebook 02) and a ``readme.txt``, zipped as ``<student_id>_hw2_2.zip``.
* DLP iCLEVR lab (notebook 03): ``test/0.png … 31.png``, ``new_test/0.png … 31.png``, the two
  8×4 grids, ``denoising_process.png``, ``accuracy.json``, the guidance sweep and ``loss_iclevr.jpg``.

The check opens every file and reads the grid layout from the pixel size, and reads from each output
folder's ``provenance.json`` (``utils.handin_set``) which checkpoint made each file: a set whose files come
from different checkpoints (a Ctrl-C while sampling), or that were changed after they were written, is
refused with the stale file named. Every problem is reported at once, each with the notebook section (and
the command) that writes the file again, and nothing is zipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .data.iclevr import COURSE_LISTS
from .handin import ACCURACY, DENOISING, FILES, ICLEVR_SETS, SWEEP_CSV, SWEEP_PLOT, grid_name
from .handin_set import HandInError, HandInSet, Source, file_sha256, provenance, unfinished  # noqa: F401  (re-exported)

GRID_PADDING = 2       # pixels between and around the images of a grid (viz.save_grid's default)
ICLEVR_SET_SIZE = COURSE_LISTS   # label lists in test.json and in new_test.json
README_MARKER = "[edit me]"

NB01, NB02, NB03 = "notebook 01_mnist_ddpm", "notebook 02_anime_faces_ddpm", "notebook 03_iclevr_cfg"
NEEDS_EVALUATOR = "it needs the evaluator checkpoint.pth: data_links.md, section iCLEVR"


@dataclass(frozen=True)
class HandInFile:
    """One file of a hand-in: its name in the zip, where the notebook wrote it, and what it must be."""

    name: str                            # path inside the zip, e.g. "result_mnist.jpg" or "test/0.png"
    source: Path                         # where the notebook wrote it
    made_by: str                         # the notebook and section that write it
    grid: tuple[int, int] | None = None  # (images per row, rows) of a grid image
    image_size: int | None = None        # H = W of each image (of each grid image for a grid)
    command: str = ""                    # the command that writes its whole set again from the checkpoint

    @property
    def set_dir(self) -> Path:
        """The output folder whose ``provenance.json`` records this file (``test/0.png`` → its parent's parent)."""
        return self.source.parents[len(Path(self.name).parts) - 1]


@dataclass
class HandIn:
    """A written zip: its path, its entries, and the readme on disk (IMVFX only)."""

    zip_path: Path
    names: list[str]
    readme: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)   # which checkpoints; newer sets not finished

    def __str__(self) -> str:
        lines = [f"{self.zip_path} ({len(self.names)} files):", "  " + ", ".join(_compact(self.names)), *self.notes]
        if self.readme is not None and README_MARKER in self.readme.read_text():
            lines.append(f"readme.txt is still the template: edit {self.readme} (the lines marked "
                         f"{README_MARKER}), then run this cell again.")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the two sets
def imvfx_files(mnist_dir: str | Path, anime_dir: str | Path, *, mnist_image_size: int = 28,
                anime_image_size: int = 64) -> list[HandInFile]:
    """The IMVFX images: notebook 01's in ``mnist_dir``, notebook 02's in ``anime_dir`` (their output_dir)."""
    mnist_dir, anime_dir = Path(mnist_dir), Path(anime_dir)
    mnist, anime = FILES["mnist"], FILES["anime"]
    mnist_command, anime_command = _command("mnist", mnist_dir), _command("anime", anime_dir)
    return [
        HandInFile(mnist.grid, mnist_dir / mnist.grid, f'{NB01}, section "Algorithm 2: sampling"',
                   grid=(5, 5), image_size=mnist_image_size, command=mnist_command),
        HandInFile(mnist.loss, mnist_dir / mnist.loss, f'{NB01}, section "Train"', command=mnist_command),
        HandInFile(anime.grid, anime_dir / anime.grid, f'{NB02}, section "Sample"',
                   grid=(5, 5), image_size=anime_image_size, command=anime_command),
        HandInFile(anime.loss, anime_dir / anime.loss, f'{NB02}, section "Train"', command=anime_command),
    ]


def _command(name: str, output_dir: Path) -> str:
    """The CLI command that writes notebook ``name``'s set in ``output_dir`` again (from its checkpoint: with
    resume on, a finished run trains nothing more). An experiment's folder (``<name>-<run_name>``) names it."""
    run_name = output_dir.name[len(name) + 1:] if output_dir.name.startswith(f"{name}-") else ""
    return f"python -m utils.cli --config {name}" + (f" --run_name {run_name}" if run_name else "")


def iclevr_files(output_dir: str | Path, *, image_size: int = 64) -> list[HandInFile]:
    """The DLP iCLEVR lab's files in notebook 03's ``output_dir``."""
    out = Path(output_dir)
    command = _command("iclevr", out)
    sampled = f'{NB03}, section "The hand-in images"'
    files = [HandInFile(f"{name}/{i}.png", out / name / f"{i}.png", sampled, image_size=image_size)
             for name in ICLEVR_SETS for i in range(ICLEVR_SET_SIZE)]
    files += [HandInFile(grid_name(name), out / grid_name(name), sampled, grid=(8, 4), image_size=image_size)
              for name in ICLEVR_SETS]
    choosing = f'{NB03}, section "Choosing w" ({NEEDS_EVALUATOR})'
    files += [
        HandInFile(DENOISING, out / DENOISING, f'{NB03}, section "The denoising process"'),
        HandInFile(ACCURACY, out / ACCURACY, f'{NB03}, section "Accuracy, as the course computes it" ({NEEDS_EVALUATOR})'),
        HandInFile(SWEEP_CSV, out / SWEEP_CSV, choosing),
        HandInFile(SWEEP_PLOT, out / SWEEP_PLOT, choosing),
        HandInFile(FILES["iclevr"].loss, out / FILES["iclevr"].loss, f'{NB03}, section "Train"'),
    ]
    return [dataclasses.replace(item, command=command) for item in files]


# ----------------------------------------------------------------------------- checks
def grid_layout(width: int, height: int, image_size: int, padding: int = GRID_PADDING) -> tuple[int, int] | None:
    """(images per row, rows) of a ``viz.save_grid`` grid of ``image_size``-px images, or None if no grid is that size.

    A grid of c × r images is c·(s + p) + p pixels wide and r·(s + p) + p high (s = image_size, p = padding).
    """
    cell = image_size + padding
    if (width - padding) % cell or (height - padding) % cell:
        return None
    return (width - padding) // cell, (height - padding) // cell


def check_file(item: HandInFile) -> str | None:
    """What is wrong with one hand-in file (without its name), or None when it is fine."""
    path = item.source
    if not path.is_file():
        return f"missing (expected at {path})"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
        except ValueError as err:
            return f"not valid JSON ({err})"
        return None
    if path.suffix not in (".png", ".jpg", ".jpeg", ".gif"):
        return None
    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
    except Exception as err:  # PIL raises many types for broken files
        return f"cannot be decoded as an image ({err})"
    if item.grid is not None:
        return _grid_problem(width, height, item.grid, item.image_size)
    if item.image_size is not None and (width, height) != (item.image_size, item.image_size):
        return f"is {width}×{height} px; it must be {item.image_size}×{item.image_size}"
    return None


def _grid_problem(width: int, height: int, grid: tuple[int, int], image_size: int) -> str | None:
    columns, rows = grid
    want = (columns * (image_size + GRID_PADDING) + GRID_PADDING, rows * (image_size + GRID_PADDING) + GRID_PADDING)
    if (width, height) == want:
        return None
    need = f"{columns} per row × {rows} rows ({columns * rows} images, {want[0]}×{want[1]} px)"
    found = grid_layout(width, height, image_size)
    if found is None:
        return (f"is {width}×{height} px, which is no grid of {image_size}-px images with {GRID_PADDING}-px padding; "
                f"the assignment needs {need}")
    return f"is a grid of {found[0]} per row × {found[1]} rows; the assignment needs {need}"


# ----------------------------------------------------------------------------- provenance: one checkpoint per set
def provenance_problems(files: list[HandInFile]) -> dict[str, str]:
    """What is wrong with where each file comes from (name → problem), per output folder: no record of the
    checkpoint that made it, changed since it was written, or made from another checkpoint than the newest
    file of its folder (a stale file of an interrupted run)."""
    problems: dict[str, str] = {}
    by_dir: dict[Path, list[HandInFile]] = {}
    for item in files:
        if item.source.is_file():
            by_dir.setdefault(item.set_dir, []).append(item)
    for folder, items in by_dir.items():
        records = provenance(folder)
        known: dict[str, dict] = {}
        for item in items:
            record = records.get(item.name)
            if not isinstance(record, dict) or "run_id" not in record:
                problems[item.name] = (f"records no checkpoint (no entry in {folder / 'provenance.json'}: written by "
                                       "hand, copied, or by an older version of this bundle), so it cannot be "
                                       "checked to belong with the rest of the set")
            elif record.get("sha256") != file_sha256(item.source):
                problems[item.name] = (f"was changed after {Source(record['run_id'], record['step'])} wrote it "
                                       "(overwritten by other code or by hand)")
            else:
                known[item.name] = record
        if not known:
            continue
        newest_name = max(known, key=lambda n: (known[n].get("time", 0), known[n]["step"]))
        newest = Source(known[newest_name]["run_id"], known[newest_name]["step"])
        for name, record in known.items():
            made = Source(record["run_id"], record["step"])
            if made != newest:
                problems[name] = (f"is stale: made from {made}, while {newest_name} is from {newest} (a run "
                                  "interrupted before it wrote its whole set?)")
    return problems


def report(files: list[HandInFile]) -> list[tuple[str, str | None, str]]:
    """One (label, problem or None, made_by) per file, with a folder's files (``test/0.png`` …) as one entry."""
    groups: dict[str, list[HandInFile]] = {}
    for item in files:
        key = item.name.split("/")[0] + "/" if "/" in item.name else item.name
        groups.setdefault(key, []).append(item)
    origin = provenance_problems(files)
    rows = []
    for label, items in groups.items():
        problems = [(item.name, check_file(item) or origin.get(item.name)) for item in items]
        bad = [(name, problem) for name, problem in problems if problem]
        if len(items) == 1:
            problem = bad[0][1] if bad else None
        elif not bad:
            problem = None
        elif all(p.startswith("missing") for _, p in bad):
            problem = f"{len(bad)} of {len(items)} images missing (first: {bad[0][0]}, in {items[0].source.parent})"
        else:
            problem = f"{len(bad)} of {len(items)} images are wrong (first: {bad[0][0]} {bad[0][1]})"
        label = f"{label} ({len(items)} images)" if len(items) > 1 else label
        made_by = items[0].made_by + (f", or for the whole set `{items[0].command}`" if items[0].command else "")
        rows.append((label, problem, made_by))
    return rows


def status(files: list[HandInFile]) -> str:
    """A table of the set: ``ok`` or what is wrong, and for a problem the notebook section that writes the file;
    then the checkpoint each output folder's files come from, and any set started there and not finished."""
    rows = report(files)
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{label:{width}s}  " + ("ok" if problem is None else f"{problem}; made by {made_by}")
             for label, problem, made_by in rows]
    for folder in dict.fromkeys(item.set_dir for item in files):
        records = provenance(folder)
        sources = {Source(r["run_id"], r["step"]) for item in files if item.set_dir == folder
                   and isinstance(r := records.get(item.name), dict) and "run_id" in r}
        if len(sources) == 1:
            lines.append(f"{folder}: made from {next(iter(sources))}")
        for source, names in unfinished(folder):
            lines.append(f"{folder}: a newer set from {source} was started ({', '.join(_compact(names))}) and not "
                         "finished (interrupted?): the files above are the previous set. Run the cells that write the "
                         "rest (through the one that hands the set in), or the command above, to replace them.")
    return "\n".join(lines)


def check(files: list[HandInFile], assignment: str) -> None:
    """Raise ``HandInError`` naming every missing or wrong file and the notebook section that writes it."""
    problems = [(label, problem, made_by) for label, problem, made_by in report(files) if problem]
    if problems:
        lines = [f"The {assignment} hand-in is not ready ({len(problems)} problem{'s' * (len(problems) > 1)}):"]
        lines += [f"  • {label}: {problem}. Made by {made_by}." for label, problem, made_by in problems]
        lines.append("Run those cells (or fix the files), then run the export again. Nothing was zipped.")
        raise HandInError("\n".join(lines))


def check_student_id(student_id) -> str:
    """The student id, if it is letters and digits only (it names the zip); else ``HandInError``."""
    where = 'Set student_id in the parameters cell at the top of the notebook (e.g. student_id = "312551001")'
    if not isinstance(student_id, str) or not student_id:
        raise HandInError(f"student_id is empty. {where}, then run the export again.")
    if not re.fullmatch(r"[A-Za-z0-9]+", student_id):
        raise HandInError(f"student_id={student_id!r} may hold only letters and digits (no spaces): it names the "
                          f"zip, e.g. 312551001_hw2_2.zip. {where}.")
    return student_id


# ----------------------------------------------------------------------------- export
README_TEMPLATE = """\
IMVFX HW2-2: Denoising diffusion (DDPM) on MNIST and Anime Faces

Files
  result_mnist.jpg, loss_mnist.jpg   notebook 01_mnist_ddpm.ipynb
  result_anime.jpg, loss_anime.jpg   notebook 02_anime_faces_ddpm.ipynb

How to run the code
  1. Install: pip install -r requirements.txt (in Google Colab torch is already there; the
     first cell of each notebook installs the rest).
  2. Data: see data_links.md (MNIST downloads itself; put the Anime Faces folder in data/).
  3. Open notebooks/01_mnist_ddpm.ipynb, choose a GPU runtime, and run all cells. It writes
     result_mnist.jpg and loss_mnist.jpg to outputs/mnist/.
  4. Open notebooks/02_anime_faces_ddpm.ipynb and run all cells. It writes result_anime.jpg and
     loss_anime.jpg to outputs/anime/, and its last cell writes this zip.
  Settings are in each notebook's parameters cell; without Jupyter:
     papermill notebooks/01_mnist_ddpm.ipynb out.ipynb -p num_epochs 30

Settings I used [edit me]: epochs, batch size, sampler, noise schedule, training time, GPU.
Notes for the grader [edit me]: anything you changed or want to point out.
"""


def write_readme(path: str | Path) -> Path:
    """Write the readme.txt template at ``path`` unless a readme is already there (yours is kept)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(README_TEMPLATE)
    return path


def write_zip(path: str | Path, files: list[HandInFile]) -> Path:
    """Zip ``files`` under their hand-in names; written to a temp file and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in files:
            archive.write(item.source, item.name)
    os.replace(tmp, path)
    return path


def export_imvfx(student_id: str, mnist_dir: str | Path, anime_dir: str | Path, zip_dir: str | Path | None = None,
                 *, mnist_image_size: int = 28, anime_image_size: int = 64) -> HandIn:
    """Check the IMVFX set and write ``<student_id>_hw2_2.zip`` in ``zip_dir`` (default: anime_dir's parent).

    The zip holds the four images and ``readme.txt``, taken from ``zip_dir/readme.txt`` (a template
    is written there the first time: edit it and export again).
    """
    student_id = check_student_id(student_id)
    files = imvfx_files(mnist_dir, anime_dir, mnist_image_size=mnist_image_size, anime_image_size=anime_image_size)
    check(files, "IMVFX HW2-2")
    zip_dir = Path(zip_dir) if zip_dir is not None else Path(anime_dir).parent
    readme = write_readme(zip_dir / "readme.txt")
    files.append(HandInFile("readme.txt", readme, "utils.export.write_readme"))
    notes = _origin_notes(files[:-1])
    path = write_zip(zip_dir / f"{student_id}_hw2_2.zip", files)
    return HandIn(path, [item.name for item in files], readme, notes)


def export_iclevr(student_id: str, output_dir: str | Path, zip_dir: str | Path | None = None, *,
                  image_size: int = 64) -> HandIn:
    """Check the DLP iCLEVR set in ``output_dir`` and write ``<student_id>_iclevr.zip`` in ``zip_dir``
    (default: output_dir's parent). Your report and code go with it as the lab asks."""
    student_id = check_student_id(student_id)
    files = iclevr_files(output_dir, image_size=image_size)
    check(files, "DLP iCLEVR")
    zip_dir = Path(zip_dir) if zip_dir is not None else Path(output_dir).parent
    path = write_zip(zip_dir / f"{student_id}_iclevr.zip", files)
    return HandIn(path, [item.name for item in files], notes=_origin_notes(files))


def _origin_notes(files: list[HandInFile]) -> list[str]:
    """For a checked set: the checkpoint each folder's files come from, and any newer set left unfinished there."""
    notes = []
    for folder in dict.fromkeys(item.set_dir for item in files):
        record = provenance(folder).get(next(item.name for item in files if item.set_dir == folder), {})
        notes.append(f"  {folder.name}: made from {Source(record['run_id'], record['step'])}")
        notes += [f"  Note: a newer set from {source} was started in {folder} and not finished ({', '.join(_compact(names))}"
                  "): this zip holds the previous, complete set. To hand in the newer model, run its sampling cells to "
                  "the end, then export again." for source, names in unfinished(folder)]
    return notes


def _compact(names: list[str]) -> list[str]:
    """Names with each folder's files shown as one ``folder/ (n files)`` entry."""
    out, seen = [], {}
    for name in names:
        if "/" in name:
            folder = name.split("/")[0]
            seen[folder] = seen.get(folder, 0) + 1
            if seen[folder] == 1:
                out.append(folder)
        else:
            out.append(name)
    return [f"{n}/ ({seen[n]} files)" if n in seen else n for n in out]
