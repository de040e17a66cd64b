"""iCLEVR data: label encoding, the on-disk layouts, the loader and its errors, the fixture."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from utils import fixtures
from utils.data import DatasetError
from utils.data import iclevr

LABELS = iclevr.BUNDLED_LABELS


@pytest.fixture
def objects():
    return iclevr.load_objects(LABELS / "objects.json")


@pytest.fixture
def fixture_dir(tmp_path):
    return fixtures.write_iclevr_fixture(tmp_path / "data", n_scenes=3)


def test_bundled_label_files_are_the_course_files():
    assert len(iclevr.load_objects(LABELS / "objects.json")) == 24
    assert [sum(map(len, iclevr.load_label_lists(LABELS / f))) for f in ("test.json", "new_test.json")] == [72, 84]


def _write_test_json(tmp_path, lists):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(lists))
    return path


def test_label_list_with_four_objects_is_refused_with_its_position(tmp_path):
    lists = json.loads((LABELS / "test.json").read_text())
    lists[5] = ["red cube", "blue sphere", "gray cylinder", "cyan cube"]
    path = _write_test_json(tmp_path, lists)
    with pytest.raises(DatasetError, match=r"test.json: label list #5 .*'cyan cube'\] holds 4 objects.*1–3"):
        iclevr.load_label_lists(path)


def test_empty_label_list_is_refused(tmp_path):
    lists = json.loads((LABELS / "test.json").read_text())
    lists[0] = []
    with pytest.raises(DatasetError, match=r"label list #0 .*\[\] holds 0 objects"):
        iclevr.load_label_lists(_write_test_json(tmp_path, lists))


def test_label_file_without_32_lists_is_refused(tmp_path):
    lists = json.loads((LABELS / "test.json").read_text())[:31]
    with pytest.raises(DatasetError, match=r"test.json holds 31 label lists, expected 32"):
        iclevr.load_label_lists(_write_test_json(tmp_path, lists))


def test_other_label_files_may_hold_any_number_of_lists(tmp_path):
    lists = [["red cube"], ["blue sphere", "gray cylinder"]]
    assert iclevr.load_label_lists(_write_test_json(tmp_path, lists), expected_lists=None) == lists


def test_object_names_follow_objects_json_order(objects):
    assert iclevr.object_names() == sorted(objects, key=objects.get)


@pytest.mark.parametrize("name", ["test.json", "new_test.json"])
def test_encode_decode_round_trips_on_the_real_label_files(objects, name):
    lists = iclevr.load_label_lists(LABELS / name)
    decoded = iclevr.decode_labels(iclevr.encode_labels(lists, objects), objects)
    assert [sorted(d) for d in decoded] == [sorted(names) for names in lists]


def test_encode_sets_one_entry_per_object(objects):
    y = iclevr.encode_labels([["red sphere", "cyan cylinder", "cyan cube"]], objects)
    assert y.shape == (1, 24) and y.dtype == torch.float32
    assert torch.nonzero(y[0]).flatten().tolist() == sorted([objects["red sphere"], objects["cyan cylinder"],
                                                              objects["cyan cube"]])


def test_unknown_object_name_is_named_and_valid_names_listed(objects):
    with pytest.raises(ValueError, match=r"'pink cube'.*gray cube.*yellow cylinder"):
        iclevr.encode_labels([["red cube"], ["pink cube"]], objects)


def test_object_listed_twice_is_an_error(objects):
    with pytest.raises(ValueError, match="twice"):
        iclevr.encode_labels([["red cube", "red cube"]], objects)


def test_fixture_has_the_real_layout(fixture_dir):
    train = json.loads((fixture_dir / "train.json").read_text())
    assert sorted(train) == [f"CLEVR_train_{s:06d}_{k}.png" for s in range(3) for k in range(3)]
    assert [len(v) for v in train.values()] == [1, 2, 3] * 3
    with Image.open(fixture_dir / "iclevr" / "CLEVR_train_000000_2.png") as im:
        assert (im.size, im.mode) == ((320, 240), "RGBA")
    for name in iclevr.LABEL_FILES:
        assert (fixture_dir / name).read_text() == (LABELS / name).read_text()


def test_drawn_objects_have_their_label_colors():
    image = fixtures.draw_scene(["cyan cube"], random.Random(0)).convert("RGB")
    assert iclevr.COLORS["cyan"] in {color for _, color in image.getcolors()}


def test_load_iclevr_gives_uint8_images_and_multi_hot_labels(fixture_dir, tmp_path, objects):
    data = iclevr.load_iclevr(fixture_dir, tmp_path / "cache", image_size=64)
    train = json.loads((fixture_dir / "train.json").read_text())
    assert data.images.shape == (9, 3, 64, 64) and data.images.dtype == torch.uint8
    assert torch.equal(data.labels, iclevr.encode_labels(list(train.values()), objects))


def test_second_load_needs_only_the_json_files_and_the_cache(fixture_dir, tmp_path):
    first = iclevr.load_iclevr(fixture_dir, tmp_path / "cache")
    shutil.rmtree(fixture_dir / "iclevr")
    assert torch.equal(iclevr.load_iclevr(fixture_dir, tmp_path / "cache").images, first.images)


def test_missing_image_folder_names_the_folders_searched(fixture_dir, tmp_path):
    shutil.rmtree(fixture_dir / "iclevr")
    with pytest.raises(DatasetError, match=r"CLEVR_train_000000_0.png, but no folder holds it.*iclevr"):
        iclevr.load_iclevr(fixture_dir, tmp_path / "cache")


def test_finds_everything_inside_an_iclevr_folder(tmp_path):
    fixtures.write_iclevr_fixture(tmp_path / "data" / "iclevr", n_scenes=1)
    files = iclevr.find_iclevr(tmp_path / "data")
    assert files.label_dir == tmp_path / "data" / "iclevr"
    assert files.image_dir == tmp_path / "data" / "iclevr" / "iclevr"


def test_finds_images_next_to_the_label_files(fixture_dir):
    for png in (fixture_dir / "iclevr").glob("*.png"):
        png.rename(fixture_dir / png.name)
    (fixture_dir / "iclevr").rmdir()
    assert iclevr.find_iclevr(fixture_dir).image_dir == fixture_dir


def test_missing_train_json_points_to_data_links(tmp_path):
    with pytest.raises(DatasetError, match="train.json.*data_links.md"):
        iclevr.find_iclevr(tmp_path)


def test_missing_images_are_named(fixture_dir, tmp_path):
    (fixture_dir / "iclevr" / "CLEVR_train_000001_1.png").unlink()
    (fixture_dir / "iclevr" / "CLEVR_train_000002_0.png").unlink()
    with pytest.raises(DatasetError, match=r"2 of 9 .*CLEVR_train_000001_1.png, CLEVR_train_000002_0.png"):
        iclevr.load_iclevr(fixture_dir, tmp_path / "cache")


def test_missing_objects_json_is_named(fixture_dir, tmp_path):
    (fixture_dir / "objects.json").unlink()
    with pytest.raises(DatasetError, match="objects.json is missing"):
        iclevr.load_iclevr(fixture_dir, tmp_path / "cache")


def test_truncated_json_file_is_named(fixture_dir, tmp_path):
    train = fixture_dir / "train.json"
    train.write_text(train.read_text()[:40])
    with pytest.raises(DatasetError, match=r"train.json is not valid JSON"):
        iclevr.load_iclevr(fixture_dir, tmp_path / "cache")


def test_unknown_object_in_train_json_names_the_file(fixture_dir, tmp_path):
    train = json.loads((fixture_dir / "train.json").read_text())
    first = next(iter(train))
    train[first] = ["pink cube"]
    (fixture_dir / "train.json").write_text(json.dumps(train))
    with pytest.raises(DatasetError, match=r"train.json does not match .*objects.json.*'pink cube'"):
        iclevr.load_iclevr(fixture_dir, tmp_path / "cache")


def test_alpha_is_dropped_like_the_course_loader_not_composited(fixture_dir, tmp_path):
    path = sorted((fixture_dir / "iclevr").glob("*.png"))[0]
    rgba = Image.open(path).convert("RGBA")
    rgba.putalpha(0)                       # fully transparent: only the color under alpha remains
    rgba.save(path)
    images = iclevr.load_iclevr(fixture_dir, tmp_path / "cache", image_size=64).images
    names = list(json.loads((fixture_dir / "train.json").read_text()))
    expected = Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR)
    actual = images[names.index(path.name)].permute(1, 2, 0).numpy()
    assert np.array_equal(actual, np.asarray(expected))
