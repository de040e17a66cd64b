"""The student edition (scripts/student_edition.py): generated from the solution notebooks, kept in sync,
runs to its first stub and stops there with the stub's message, and gives back the solutions when they
are pasted in again."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("student_edition", ROOT / "scripts" / "student_edition.py")
student_edition = importlib.util.module_from_spec(spec)
spec.loader.exec_module(student_edition)

# The regions the course asks students to write, by notebook: the function each region sits in.
REQUIRED = {
    "01_mnist_ddpm.ipynb": ["def q_sample_by_hand", "def loss_by_hand", "def p_sample_step_by_hand", "def sample_by_hand"],
    "02_anime_faces_ddpm.ipynb": ["def cosine_betas"],
    "03_iclevr_cfg.ipynb": ["def drop_labels_by_hand", "def guidance_mix_by_hand"],
}


def _solution(name):
    return json.loads((ROOT / "notebooks" / name).read_text())


def _next_code_cell(nb, i):
    return next(j for j in range(i + 1, len(nb["cells"])) if nb["cells"][j]["cell_type"] == "code")


def _region_cells(nb):
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and student_edition.regions("".join(c["source"]))]


def test_a_region_becomes_a_stub_that_raises_and_pasting_back_restores_it():
    source = ("def f(x):\n    \"\"\"doc\"\"\"\n    # BEGIN SOLUTION: return twice x (\"x + x\")\n    y = x + x\n"
              "    return y\n    # END SOLUTION\n\nprint(f(2))")
    stubbed = student_edition.student_source(source)
    assert stubbed == ('def f(x):\n    """doc"""\n    # TODO: return twice x ("x + x")\n'
                       '    raise NotImplementedError("Not implemented yet: return twice x (\\"x + x\\"). Write it here, '
                       'then run this cell and the check after it.")\n\nprint(f(2))')
    namespace = {}
    with pytest.raises(NotImplementedError, match=r'Not implemented yet: return twice x \("x \+ x"\)'):
        exec(stubbed, namespace)
    cell = {"cell_type": "code", "source": source.splitlines(keepends=True), "outputs": [], "execution_count": 3,
            "metadata": {}}
    student = student_edition.student_notebook({"cells": [cell]})
    assert student["cells"][0]["outputs"] == [] and student["cells"][0]["execution_count"] is None
    assert student_edition.paste_back(student, {"cells": [cell]})["cells"][0]["source"] == cell["source"]
    for broken in ("# BEGIN SOLUTION: a\nx = 1\n", "x = 1\n# END SOLUTION\n",
                   "# BEGIN SOLUTION: a\n# BEGIN SOLUTION: b\n# END SOLUTION\n"):
        with pytest.raises(student_edition.RegionError):
            student_edition.regions(broken)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_each_notebook_marks_the_regions_the_course_asks_for_each_followed_by_its_check(name):
    nb = _solution(name)
    cells = _region_cells(nb)
    sources = ["".join(nb["cells"][i]["source"]) for i in cells]
    for function in REQUIRED[name]:
        assert any(function in s for s in sources), f"{name}: no solution region in {function}"
    for i in cells:  # the region's cell or the code cell after it checks it, with explained asserts
        checked = "".join(nb["cells"][i]["source"]) + "".join(nb["cells"][_next_code_cell(nb, i)]["source"])
        assert "assert" in checked and "f\"" in checked, f"{name}, cell {i}: no explained check after the region"


def test_the_committed_student_edition_is_what_the_generator_writes():
    assert student_edition.main(["--check"]) == 0, "run: python scripts/student_edition.py"
    assert {p.name for p in (ROOT / "notebooks" / "student").glob("*.ipynb")} == set(REQUIRED)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_pasting_the_solutions_back_gives_the_solution_notebook(name):
    solution = _solution(name)
    student = json.loads((ROOT / "notebooks" / "student" / name).read_text())
    pasted = student_edition.paste_back(student, solution)
    assert [c["source"] for c in pasted["cells"]] == [c["source"] for c in solution["cells"]]
    # … which is the notebook nbval runs (notebooks/<name>): the solutions pass there.


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_the_student_edition_runs_to_its_first_stub_and_stops_there_with_its_message(name, tmp_path, monkeypatch):
    import papermill

    student = json.loads((ROOT / "notebooks" / "student" / name).read_text())
    first = _region_cells(_solution(name))[0]
    task = student_edition.regions("".join(_solution(name)["cells"][first]["source"]))[0][3]
    monkeypatch.setenv("DDPM_WORKDIR", str(tmp_path / "work"))
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ROOT / "notebooks" / "student" / name), str(tmp_path / "out.ipynb"),
                                   kernel_name="python3", cwd=str(ROOT / "notebooks" / "student"), progress_bar=False)
    assert err.value.ename == "NotImplementedError"
    assert f"Not implemented yet: {task}"[:80] in err.value.evalue
    executed = json.loads((tmp_path / "out.ipynb").read_text())     # (papermill adds a note cell on top)
    failed = ["".join(c["source"]) for c in executed["cells"] if c["cell_type"] == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    # a stub inside a function raises where the function is first called: its cell or the check right after it
    where = ["".join(student["cells"][i]["source"]) for i in (first, _next_code_cell(student, first))]
    assert len(failed) == 1 and failed[0] in where, "it did not stop at the first stub (its cell or its check)"


def test_an_interrupted_make_student_leaves_every_student_notebook_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(student_edition, "ROOT", tmp_path)
    monkeypatch.setattr(student_edition, "STUDENT", tmp_path / "student")
    assert student_edition.main([]) == 0
    before = {p.name: p.read_text() for p in (tmp_path / "student").iterdir()}
    real_write = Path.write_text

    def half_then_interrupted(self, text, *args, **kwargs):     # Ctrl-C in the middle of a write
        real_write(self, text[:len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        student_edition.main([])
    monkeypatch.undo()
    after = {p.name: p.read_text() for p in (tmp_path / "student").iterdir()}
    assert after == before and all(json.loads(text) for text in after.values())   # no temp file, no torn JSON
