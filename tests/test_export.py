"""Hand-in export: the exact zip contents, and one clear error naming each bad file and who makes it."""

import json
import zipfile

import pytest
import torch
from PIL import Image

from utils import export, viz


MNIST_RUN, ANIME_RUN, ICLEVR_RUN = (export.Source("20261201-101500-aaaaaa", 6), export.Source("20261201-111500-bbbbbb", 6),
                                   export.Source("20261201-121500-cccccc", 6))


def write_imvfx_set(mnist_dir, anime_dir):
    mnist, anime = export.HandInSet(mnist_dir, MNIST_RUN), export.HandInSet(anime_dir, ANIME_RUN)
    viz.save_grid(torch.zeros(25, 1, 28, 28), mnist.path("result_mnist.jpg"), nrow=5)
    viz.save_grid(torch.zeros(25, 3, 64, 64), anime.path("result_anime.jpg"), nrow=5)
    for path in (mnist.path("loss_mnist.jpg"), anime.path("loss_anime.jpg")):
        Image.new("RGB", (80, 60), "white").save(path)
    mnist.commit()
    anime.commit()


def write_iclevr_set(out, source=ICLEVR_RUN):
    hand_in = export.HandInSet(out, source)
    for name in ("test", "new_test"):
        for i in range(32):
            Image.new("RGB", (64, 64)).save(hand_in.path(f"{name}/{i}.png"))
        viz.save_grid(torch.zeros(32, 3, 64, 64), hand_in.path(f"{name}_grid.png"), nrow=8, expected=32)
    viz.denoising_strip([torch.zeros(1, 3, 64, 64)] * 8, hand_in.path("denoising_process.png"))
    hand_in.path("accuracy.json").write_text(json.dumps({"test": {"accuracy": 0.5}, "new_test": {"accuracy": 0.5}}))
    hand_in.path("guidance_sweep.csv").write_text("guidance_scale,test,new_test\n1.0,0.5,0.5\n")
    for name in ("guidance_sweep.png", "loss_iclevr.jpg"):
        Image.new("RGB", (80, 60)).save(hand_in.path(name))
    return hand_in.commit()


@pytest.fixture
def imvfx_dirs(tmp_path):
    mnist_dir, anime_dir = tmp_path / "outputs" / "mnist", tmp_path / "outputs" / "anime"
    mnist_dir.mkdir(parents=True)
    anime_dir.mkdir(parents=True)
    write_imvfx_set(mnist_dir, anime_dir)
    return mnist_dir, anime_dir


def test_imvfx_set_zips_with_exactly_the_assignment_names(imvfx_dirs):
    hand_in = export.export_imvfx("312551001", *imvfx_dirs)
    assert hand_in.zip_path == imvfx_dirs[1].parent / "312551001_hw2_2.zip"
    with zipfile.ZipFile(hand_in.zip_path) as archive:
        assert sorted(archive.namelist()) == ["loss_anime.jpg", "loss_mnist.jpg", "readme.txt",
                                              "result_anime.jpg", "result_mnist.jpg"]
        assert "How to run the code" in archive.read("readme.txt").decode()


def test_readme_is_a_template_until_the_student_edits_it(imvfx_dirs):
    hand_in = export.export_imvfx("312551001", *imvfx_dirs)
    assert "still the template" in str(hand_in)
    hand_in.readme.write_text("Trained 30 epochs on a T4.\n")
    again = export.export_imvfx("312551001", *imvfx_dirs)
    assert "still the template" not in str(again)
    with zipfile.ZipFile(again.zip_path) as archive:
        assert archive.read("readme.txt").decode() == "Trained 30 epochs on a T4.\n"


def test_missing_file_is_named_with_the_notebook_that_makes_it_and_nothing_is_zipped(imvfx_dirs):
    mnist_dir, anime_dir = imvfx_dirs
    (anime_dir / "result_anime.jpg").unlink()
    with pytest.raises(export.HandInError, match=r"result_anime\.jpg: missing .*02_anime_faces_ddpm") as err:
        export.export_imvfx("312551001", mnist_dir, anime_dir)
    assert "1 problem)" in str(err.value)
    assert not list(anime_dir.parent.glob("*.zip"))


def test_wrong_grid_layout_is_named_with_the_layout_found_and_the_notebook(imvfx_dirs):
    mnist_dir, anime_dir = imvfx_dirs
    viz.save_grid(torch.zeros(16, 1, 28, 28), mnist_dir / "result_mnist.jpg", nrow=4, expected=16)
    with pytest.raises(export.HandInError, match=r"result_mnist\.jpg: is a grid of 4 per row × 4 rows; the assignment "
                                                 r"needs 5 per row × 5 rows .*01_mnist_ddpm"):
        export.export_imvfx("312551001", mnist_dir, anime_dir)


def test_all_problems_are_reported_together(imvfx_dirs):
    mnist_dir, anime_dir = imvfx_dirs
    (mnist_dir / "loss_mnist.jpg").unlink()
    (anime_dir / "result_anime.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(export.HandInError, match="2 problems") as err:
        export.export_imvfx("312551001", mnist_dir, anime_dir)
    assert "loss_mnist.jpg: missing" in str(err.value) and "result_anime.jpg: cannot be decoded" in str(err.value)


def test_image_of_no_grid_size_is_reported(tmp_path):
    Image.new("L", (150, 152)).save(tmp_path / "result_mnist.jpg")
    item = export.imvfx_files(tmp_path, tmp_path)[0]
    assert "150×152 px, which is no grid of 28-px images" in export.check_file(item)


def test_grid_layout_is_read_from_pixel_size_image_size_and_padding():
    assert export.grid_layout(5 * 30 + 2, 5 * 30 + 2, 28) == (5, 5)
    assert export.grid_layout(8 * 66 + 2, 4 * 66 + 2, 64) == (8, 4)
    assert export.grid_layout(153, 152, 28) is None


@pytest.mark.parametrize("student_id", ["", None, "3125 51001", "../312551001", "王小明"])
def test_invalid_student_id_is_refused_with_what_to_do(imvfx_dirs, student_id):
    with pytest.raises(export.HandInError, match="student_id"):
        export.export_imvfx(student_id, *imvfx_dirs)


def test_zip_name_uses_the_student_id(imvfx_dirs):
    assert export.export_imvfx("A1234567", *imvfx_dirs).zip_path.name == "A1234567_hw2_2.zip"


def test_iclevr_set_zips_every_required_file(tmp_path):
    out = tmp_path / "outputs" / "iclevr"
    write_iclevr_set(out)
    hand_in = export.export_iclevr("312551001", out)
    with zipfile.ZipFile(hand_in.zip_path) as archive:
        names = set(archive.namelist())
    assert {f"test/{i}.png" for i in range(32)} <= names and {f"new_test/{i}.png" for i in range(32)} <= names
    assert names - {n for n in names if "/" in n} == {
        "test_grid.png", "new_test_grid.png", "denoising_process.png", "accuracy.json",
        "guidance_sweep.csv", "guidance_sweep.png", "loss_iclevr.jpg"}
    assert hand_in.zip_path.name == "312551001_iclevr.zip"


def test_iclevr_grid_with_4_per_row_and_missing_images_are_named_with_notebook_03(tmp_path):
    out = tmp_path / "iclevr"
    write_iclevr_set(out)
    viz.save_grid(torch.zeros(32, 3, 64, 64), out / "test_grid.png", nrow=4, expected=32)
    for i in range(30, 32):
        (out / "new_test" / f"{i}.png").unlink()
    (out / "accuracy.json").unlink()
    with pytest.raises(export.HandInError) as err:
        export.export_iclevr("312551001", out)
    message = str(err.value)
    assert "test_grid.png: is a grid of 4 per row × 8 rows; the assignment needs 8 per row × 4 rows" in message
    assert "new_test/ (32 images): 2 of 32 images missing (first: new_test/30.png" in message
    assert "accuracy.json: missing" in message and "evaluator checkpoint.pth" in message
    assert message.count("03_iclevr_cfg") == 3


def test_status_lists_every_entry_with_ok_or_the_problem(tmp_path):
    out = tmp_path / "iclevr"
    write_iclevr_set(out)
    (out / "loss_iclevr.jpg").unlink()
    lines = export.status(export.iclevr_files(out)).splitlines()
    assert len(lines) == 10  # two folders and seven files, then the checkpoint they come from
    assert lines[0].startswith("test/ (32 images)") and lines[0].endswith("ok")
    assert "loss_iclevr.jpg" in lines[8] and "missing" in lines[8] and 'section "Train"' in lines[8]
    assert lines[9] == f"{out}: made from run {ICLEVR_RUN.run_id} step 6"


# ----------------------------------------------------------------------------- one checkpoint per set
def test_a_mixed_set_is_refused_naming_the_stale_file_and_what_makes_it_again(imvfx_dirs):
    mnist_dir, anime_dir = imvfx_dirs                            # a set from run ...aaaaaa, step 6
    newer = export.HandInSet(mnist_dir, export.Source(MNIST_RUN.run_id, 80))   # trained on to step 80, then
    Image.new("RGB", (80, 60), "gray").save(newer.path("loss_mnist.jpg"))      # only the loss plot was made again
    newer.commit()
    with pytest.raises(export.HandInError) as err:
        export.export_imvfx("312551001", mnist_dir, anime_dir)
    message = str(err.value)
    assert (f"result_mnist.jpg: is stale: made from run {MNIST_RUN.run_id} step 6, while loss_mnist.jpg is from "
            f"run {MNIST_RUN.run_id} step 80") in message
    assert 'section "Algorithm 2: sampling", or for the whole set `python -m utils.cli --config mnist`' in message
    assert "1 problem)" in message and not list(anime_dir.parent.glob("*.zip"))


def test_a_file_changed_after_it_was_written_is_refused(imvfx_dirs):
    mnist_dir, anime_dir = imvfx_dirs
    viz.save_grid(torch.ones(25, 3, 64, 64), anime_dir / "result_anime.jpg", nrow=5)   # an old cell, or by hand
    with pytest.raises(export.HandInError, match=rf"result_anime\.jpg: was changed after run {ANIME_RUN.run_id} "
                                                 r"step 6 wrote it .*02_anime_faces_ddpm"):
        export.export_imvfx("312551001", mnist_dir, anime_dir)


def test_files_that_record_no_checkpoint_are_refused(tmp_path):
    mnist_dir, anime_dir = tmp_path / "mnist", tmp_path / "anime"
    write_imvfx_set(mnist_dir, anime_dir)
    (mnist_dir / "provenance.json").unlink()                    # e.g. files from before provenance, or copied in
    with pytest.raises(export.HandInError, match=r"result_mnist\.jpg: records no checkpoint"):
        export.export_imvfx("312551001", mnist_dir, anime_dir)


def test_the_zip_says_which_checkpoint_made_each_half_and_mentions_an_unfinished_newer_set(imvfx_dirs):
    mnist_dir, anime_dir = imvfx_dirs
    interrupted = export.HandInSet(anime_dir, export.Source(ANIME_RUN.run_id, 90))
    Image.new("RGB", (80, 60), "gray").save(interrupted.path("loss_anime.jpg"))   # then Ctrl-C while sampling
    text = str(export.export_imvfx("312551001", mnist_dir, anime_dir))
    assert f"mnist: made from run {MNIST_RUN.run_id} step 6" in text and f"anime: made from run {ANIME_RUN.run_id} step 6" in text
    assert f"a newer set from run {ANIME_RUN.run_id} step 90 was started" in text and "previous, complete set" in text
