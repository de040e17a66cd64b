"""Generate the student edition of the notebooks: every solution region becomes a stub that raises.

    python scripts/student_edition.py           # writes notebooks/student/<notebook>.ipynb
    python scripts/student_edition.py --check   # exit 1 (and say which) when notebooks/student/ is out of date

In a solution notebook (notebooks/0*.ipynb), a region is marked inside a code cell:

    def q_sample_by_hand(x0, t, noise, abar=alphas_cumprod):
        \"\"\"...\"\"\"
        # BEGIN SOLUTION: x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε (eq. 4), with ᾱ_t from abar[t]
        a = abar[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise
        # END SOLUTION

In the student edition the lines from BEGIN to END become, at the BEGIN line's indentation,

        # TODO: x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε (eq. 4), with ᾱ_t from abar[t]
        raise NotImplementedError("Not implemented yet: x_t = … Write it here, then run this cell and the check after it.")

so running the student edition stops at the first region not written yet, with what to write. The
check cell after each region grades it. Everything else is kept; outputs are cleared. ``paste_back``
puts solutions into a student edition again (tests: it gives back the solution notebook).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
STUDENT = NOTEBOOKS / "student"
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION: (?P<task>.+?)\s*$")
END = re.compile(r"^[ \t]*# END SOLUTION\s*$")
STUB = ("{indent}# TODO: {task}\n"
        "{indent}raise NotImplementedError(\"Not implemented yet: {message}. Write it here, then run this cell and "
        "the check after it.\")\n")


class RegionError(ValueError):
    """A BEGIN SOLUTION without its END (or the other way round)."""


def regions(source: str) -> list[tuple[int, int, str, str]]:
    """(first line, last line, indentation, task) of every solution region in a cell's source, in order."""
    found, start = [], None
    for i, line in enumerate(source.splitlines()):
        begin = BEGIN.match(line)
        if begin:
            if start is not None:
                raise RegionError(f"line {i + 1}: BEGIN SOLUTION inside the region that starts on line {start[0] + 1}")
            start = (i, begin["indent"], begin["task"])
        elif END.match(line):
            if start is None:
                raise RegionError(f"line {i + 1}: END SOLUTION without a BEGIN SOLUTION")
            found.append((start[0], i, start[1], start[2]))
            start = None
    if start is not None:
        raise RegionError(f"line {start[0] + 1}: BEGIN SOLUTION without an END SOLUTION")
    return found


def stub(indent: str, task: str) -> str:
    message = task.replace("\\", "\\\\").replace('"', '\\"')
    return STUB.format(indent=indent, task=task, message=message)


def student_source(source: str) -> str:
    """The source with every solution region replaced by its stub."""
    lines = source.splitlines(keepends=True)
    for first, last, indent, task in reversed(regions(source)):
        lines[first:last + 1] = [stub(indent, task)]
    text = "".join(lines)
    return text if source.endswith("\n") or not text.endswith("\n") else text[:-1]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def student_notebook(nb: dict) -> dict:
    """A copy of ``nb`` with stubs for its solution regions and no outputs."""
    out = copy.deepcopy(nb)
    for cell in out["cells"]:
        if cell["cell_type"] != "code":
            continue
        cell["source"] = student_source(_source(cell)).splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return out


def paste_back(student: dict, solution: dict) -> dict:
    """``student`` with each stub replaced by the solution region it stands for (same cell, same order)."""
    out = copy.deepcopy(student)
    for cell, solved in zip(out["cells"], solution["cells"]):
        if cell["cell_type"] != "code" or not regions(_source(solved)):
            continue
        lines = _source(cell).splitlines(keepends=True)
        answers = _source(solved).splitlines(keepends=True)
        for first, last, indent, task in reversed(regions(_source(solved))):
            at = next(i for i in range(len(lines)) if lines[i].rstrip("\n") == f"{indent}# TODO: {task}")
            lines[at:at + 2] = answers[first:last + 1]
        cell["source"] = "".join(lines).splitlines(keepends=True)
    return out


def notebooks_with_regions() -> dict[Path, dict]:
    """Every solution notebook that has a region, by path."""
    out = {}
    for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
        nb = json.loads(path.read_text())
        if any(regions(_source(c)) for c in nb["cells"] if c["cell_type"] == "code"):
            out[path] = nb
    return out


def _dump(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    """``text`` at ``path`` through a temp file and a rename: an interruption leaves the old notebook whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that notebooks/student/ is up to date")
    args = parser.parse_args(argv)
    stale = []
    for path, nb in notebooks_with_regions().items():
        target, text = STUDENT / path.name, _dump(student_notebook(nb))
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target)
        else:
            STUDENT.mkdir(exist_ok=True)
            _write_atomically(target, text)
            print(f"{target.relative_to(ROOT)}: {sum(len(regions(_source(c))) for c in nb['cells'] if c['cell_type'] == 'code')} "
                  "region(s) to write")
    if stale:
        print("Out of date (run: python scripts/student_edition.py): " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
