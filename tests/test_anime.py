"""Anime Faces loads from every real layout, counts each face once, converts to RGB, caches once,
and turns every download failure into a message a student can act on. Nothing is downloaded."""

import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from utils import config, data, fixtures
from utils.data import anime


def _load(tmp_path, **kwargs):
    return data.load_anime(tmp_path / "data", tmp_path / "cache", progress=False, **kwargs)


def _offline(*args, **kwargs):
    raise ConnectionError("Temporary failure in name resolution")


@pytest.mark.parametrize("layout", ["course", "kaggle", "huggingface", "folder"])
def test_every_layout_loads_each_face_once_as_color_uint8(tmp_path, layout):
    fixtures.write_anime_fixture(tmp_path / "data", layout, n=6)
    faces = _load(tmp_path)
    assert faces.images.shape == (6, 3, 64, 64) and faces.images.dtype == torch.uint8
    assert faces.labels is None


def test_nested_duplicate_folder_is_skipped_not_counted(tmp_path):
    root = fixtures.write_anime_fixture(tmp_path / "data", "kaggle", n=5)
    assert len(list((root / "data").glob("*.png"))) == 5   # the real duplicate: every file twice
    files, skipped = data.list_anime_files(root)
    assert len(files) == 5 and skipped == 5
    assert all(p.parent == root for p in files)


def test_nested_file_without_an_identical_twin_is_kept(tmp_path):
    root = fixtures.write_anime_fixture(tmp_path / "data", "huggingface", n=4)
    Image.new("RGB", (64, 64), (255, 0, 0)).save(root / "data" / "99.png")    # only in the nested folder
    Image.new("RGB", (64, 64), (0, 0, 255)).save(root / "data" / "3.png")     # same name, other content
    files, skipped = data.list_anime_files(root)
    assert len(files) == 6 and skipped == 3


def test_a_stray_image_in_data_dir_does_not_hide_the_real_copy(tmp_path):
    fixtures.write_anime_fixture(tmp_path / "data", "course", n=5)
    Image.new("RGB", (64, 64)).save(tmp_path / "data" / "preview.png")
    assert data.find_anime(tmp_path / "data")[0] == "course"
    assert len(_load(tmp_path)) == 5


def test_a_copy_with_only_the_nested_folder_is_found(tmp_path):
    root = fixtures.write_anime_fixture(tmp_path / "data", "kaggle", n=4)
    for png in root.glob("*.png"):
        png.unlink()
    assert data.find_anime(tmp_path / "data") == ("kaggle", root)
    assert len(_load(tmp_path)) == 4


def test_a_later_session_prefers_the_largest_cache(tmp_path):
    import os

    (tmp_path / "cache").mkdir()
    big, small = tmp_path / "cache" / "anime_64px_big.pt", tmp_path / "cache" / "anime_64px_small.pt"
    big.write_bytes(b"x" * 1000)
    small.write_bytes(b"x" * 10)
    os.utime(big, (1, 1))  # the big one is older: a smoke run wrote the small one later
    assert anime.find_cache(tmp_path / "cache") == big


def test_rgba_png_becomes_its_rgb_pixels(tmp_path):
    root = fixtures.write_anime_fixture(tmp_path / "data", "course", n=4)
    assert Image.open(root / "1.png").mode == "RGBA"
    faces = _load(tmp_path)
    expected = np.array(Image.open(root / "1.png").convert("RGB"))
    assert torch.equal(faces.images[0], torch.from_numpy(expected).permute(2, 0, 1))


def test_image_that_is_not_64px_is_resized(tmp_path):
    root = fixtures.write_anime_fixture(tmp_path / "data", "course", n=4)
    assert Image.open(root / "2.png").size == (80, 80)
    faces = _load(tmp_path)
    expected = np.array(Image.open(root / "2.png").convert("RGB").resize((64, 64), Image.BILINEAR))
    assert torch.equal(faces.images[1], torch.from_numpy(expected).permute(2, 0, 1))


def test_unreadable_file_is_reported_by_name(tmp_path):
    root = fixtures.write_anime_fixture(tmp_path / "data", "course", n=4)
    (root / "7.png").write_bytes(b"not a png")
    with pytest.raises(data.DatasetError, match=r"7\.png"):
        _load(tmp_path)


def test_decoding_happens_once_then_the_cache_is_reused(tmp_path, monkeypatch):
    fixtures.write_anime_fixture(tmp_path / "data", "kaggle", n=4)
    first = _load(tmp_path)
    assert len(list((tmp_path / "cache").glob("anime_64px_*.pt"))) == 1
    monkeypatch.setattr(anime, "decode_images", lambda *a, **k: pytest.fail("decoded twice"))
    assert torch.equal(_load(tmp_path).images, first.images)


def test_a_later_session_uses_the_cache_without_the_raw_files(tmp_path, monkeypatch):
    fixtures.write_anime_fixture(tmp_path / "data", "kaggle", n=4)
    first = _load(tmp_path)
    monkeypatch.setattr(anime, "download_anime", lambda *a, **k: pytest.fail("downloaded although cached"))
    later = data.load_anime(tmp_path / "fresh-session", tmp_path / "cache", download="kaggle")
    assert torch.equal(later.images, first.images)
    assert "cached" in later.source and "duplicates skipped" in later.source


def test_an_earlier_download_in_download_dir_is_reused(tmp_path, monkeypatch):
    fixtures.write_anime_fixture(tmp_path / "downloads" / "anime-faces-hf", "huggingface", n=4)
    monkeypatch.setattr(anime, "download_anime", lambda *a, **k: pytest.fail("downloaded twice"))
    faces = _load(tmp_path, download="huggingface", download_dir=tmp_path / "downloads")
    assert len(faces) == 4


def test_nothing_on_disk_and_no_download_says_where_it_looked(tmp_path):
    with pytest.raises(data.DatasetError, match="anime_face_dataset/data.*data_links.md"):
        _load(tmp_path)


@pytest.mark.parametrize("source", ["kaggle", "huggingface"])
def test_download_then_load_reads_what_the_library_fetched(tmp_path, monkeypatch, source):
    # Local stand-ins: kagglehub returns an unpacked folder, huggingface_hub a path to data.zip.
    fixture = tmp_path / "fetched"
    root = fixtures.write_anime_fixture(fixture, source, n=5)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in root.rglob("*.png"):
            zf.write(path, path.relative_to(fixture))
    monkeypatch.setitem(sys.modules, "kagglehub", SimpleNamespace(dataset_download=lambda handle: str(fixture)))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: str(archive))
    faces = _load(tmp_path, download=source, download_dir=tmp_path / "downloads")
    assert faces.images.shape == (5, 3, 64, 64)


@pytest.mark.parametrize("source, module, function", [
    ("kaggle", "kagglehub", "dataset_download"),
    ("huggingface", "huggingface_hub", "hf_hub_download"),
    ("gdown", "gdown", "download"),
])
def test_offline_download_becomes_an_actionable_dataset_error(tmp_path, monkeypatch, source, module, function):
    monkeypatch.setitem(sys.modules, module, SimpleNamespace(**{function: _offline}))
    with pytest.raises(data.DatasetError, match=f"(?s)with {source} failed: ConnectionError.*internet connection"):
        data.download_anime(tmp_path, source, gdown_id="abc123")


def test_gdown_refusal_is_reported_as_a_refusal(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", SimpleNamespace(download=lambda **k: None))  # quota exceeded
    with pytest.raises(data.DatasetError, match="refused file id abc123"):
        data.download_anime(tmp_path, "gdown", gdown_id="abc123")


def test_gdown_without_a_file_id_asks_for_one(tmp_path):
    with pytest.raises(data.DatasetError, match="needs gdown_id"):
        data.download_anime(tmp_path, "gdown")


def test_missing_download_library_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # makes `import kagglehub` fail
    with pytest.raises(data.DatasetError, match="pip install kagglehub"):
        data.download_anime(tmp_path, "kaggle")


def test_smoke_batches_are_color_64px_in_model_range(tmp_path):
    cfg = config.make_config("anime", "smoke", workdir=str(tmp_path))
    fixtures.write_anime_fixture(cfg.data_dir, "kaggle", n=16)
    faces = data.load_anime(cfg.data_dir, cfg.cache_dir, progress=False)
    batch = next(data.BatchLoader(faces, cfg.batch_size, hflip=cfg.hflip).epoch(0))["x0"]
    assert batch.shape == (cfg.batch_size, 3, 64, 64)
    assert -1 <= batch.min() < batch.max() <= 1


def test_a_cpu_tensor_always_fits_on_the_cpu():
    assert data.fits_on_device(torch.zeros(21_376, 3, 64, 64, dtype=torch.uint8), "cpu")


def test_smoke_preset_never_downloads():
    assert config.make_config("anime", "smoke").download == ""


def test_unknown_download_source_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="'kaggle', 'huggingface', 'gdown'"):
        config.make_config("anime", "smoke", download="torrent")
