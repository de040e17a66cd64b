"""MNIST loads from every real on-disk layout, caches once, and fails with actionable messages."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils import data, fixtures
from utils.data import common


@pytest.mark.parametrize("layout", ["course", "teavanist", "folder"])
def test_jpg_layouts_load_as_gray_uint8(tmp_path, layout):
    fixtures.write_mnist_fixture(tmp_path / "data", layout, n_per_digit=3)
    ds = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    assert ds.images.shape == (30, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert sorted(ds.labels.tolist()) == sorted(list(range(10)) * 3)
    assert ds.images.float().mean() > 10  # real digits, not blank images


def test_jpg_digits_match_the_original_pixels(tmp_path):
    fixtures.write_mnist_fixture(tmp_path / "data", "course", n_per_digit=2)
    ds = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    original = data.offline_sample()
    first_zero = original.images[original.labels == 0][0].float()
    # JPG is lossy: the decoded digit is close to, not equal to, the original
    assert (ds.images[0].float() - first_zero).abs().mean() < 4


def test_decoding_is_cached(tmp_path, monkeypatch):
    fixtures.write_mnist_fixture(tmp_path / "data", "course", n_per_digit=2)
    first = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    assert len(list((tmp_path / "cache").glob("mnist_*.pt"))) == 1
    monkeypatch.setattr("utils.data.mnist.decode_images", lambda *a, **k: pytest.fail("decoded twice"))
    second = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    assert torch.equal(first.images, second.images)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def local_mirror(tmp_path):
    """The four gzipped IDX files served over HTTP on localhost, like the real MNIST mirrors."""
    import functools
    import http.server
    import threading

    folder = fixtures.write_mnist_fixture(tmp_path / "mirror", "idx_gz", n_per_digit=2)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_torchvision_download_path_works_against_a_local_mirror(tmp_path, monkeypatch, local_mirror):
    from torchvision.datasets import MNIST

    folder, url = local_mirror
    monkeypatch.setattr(MNIST, "mirrors", [url])
    monkeypatch.setattr(MNIST, "resources", [(name, _md5(folder / name)) for name, _ in MNIST.resources])
    ds = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=True)
    assert ds.images.shape == (20, 1, 28, 28) and "torchvision" in ds.source
    assert data.find_mnist(tmp_path / "data")[0] == "torchvision"


def test_an_interrupted_download_is_completed_not_taken_for_mnist(tmp_path, monkeypatch, local_mirror):
    from torchvision.datasets import MNIST

    folder, url = local_mirror
    monkeypatch.setattr(MNIST, "mirrors", [url])
    monkeypatch.setattr(MNIST, "resources", [(name, _md5(folder / name)) for name, _ in MNIST.resources])
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    first = folder / "train-images-idx3-ubyte.gz"
    (raw / first.name).write_bytes(first.read_bytes()[:100])   # cut off mid-file, the other three never came
    assert data.find_mnist(tmp_path / "data") is None
    ds = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=True)
    assert ds.images.shape == (20, 1, 28, 28)


def test_a_partial_copy_without_internet_names_the_missing_files(tmp_path):
    raw = fixtures.write_mnist_fixture(tmp_path / "data", "torchvision", n_per_digit=1)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).unlink()
        (raw / f"{name}.gz").unlink()
    with pytest.raises(data.DatasetError, match="only part of MNIST.*t10k-images-idx3-ubyte"):
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)


def test_a_damaged_gzip_is_reported_and_leaves_no_half_unpacked_file(tmp_path):
    raw = fixtures.write_mnist_fixture(tmp_path / "data", "torchvision", n_per_digit=1)
    (raw / "train-images-idx3-ubyte").unlink()
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:60])
    with pytest.raises(data.DatasetError, match="damaged.*Delete that folder"):
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    assert not (raw / "train-images-idx3-ubyte").exists() and not list(raw.glob("*.part"))


def test_failed_download_says_where_to_get_mnist(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [(tmp_path / "nowhere").as_uri() + "/"])
    with pytest.raises(data.DatasetError, match="data_links.md"):
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=True)


def test_failed_download_can_fall_back_to_the_offline_sample(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", [(tmp_path / "nowhere").as_uri() + "/"])
    with pytest.warns(UserWarning, match="5,000"):
        ds = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=True, allow_offline_sample=True)
    assert len(ds) == 5000


def test_missing_dataset_names_the_layouts_it_looked_for(tmp_path):
    with pytest.raises(data.DatasetError) as err:
        data.load_mnist(tmp_path / "empty", tmp_path / "cache", download=False)
    assert "mnist_dataset/data" in str(err.value) and "data_links.md" in str(err.value)


def test_images_outside_digit_folders_are_reported_with_where_how_many_and_the_layouts(tmp_path):
    flat = tmp_path / "data" / "mnist_jpgs"
    flat.mkdir(parents=True)
    for k in range(4):
        Image.new("L", (28, 28)).save(flat / f"{k}.jpg")
    with pytest.raises(data.DatasetError) as err:
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    message = str(err.value)
    assert f"Found 4 image files in a layout MNIST is not read from (4 in {flat})" in message
    assert "digit folders named 0–9 (the folder name is the label)" in message
    for layout in ("mnist_dataset/data/{0..9}", "MNIST - JPG - training/{0..9}", "MNIST/raw/"):
        assert layout in message


def test_images_deeper_than_two_folders_are_not_searched(tmp_path):
    deep = tmp_path / "data" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    Image.new("L", (28, 28)).save(deep / "0.jpg")
    with pytest.raises(data.DatasetError) as err:
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    assert "image files" not in str(err.value)


def test_digit_folders_with_missing_digits_are_named(tmp_path):
    root = fixtures.write_mnist_fixture(tmp_path / "data", "course", n_per_digit=1)
    for d in ("3", "7"):
        for f in (root / d).iterdir():
            f.unlink()
        (root / d).rmdir()
    with pytest.raises(data.DatasetError, match="missing: 3, 7"):
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)


def test_empty_digit_folders_are_reported(tmp_path):
    for d in range(10):
        (tmp_path / "data" / "mnist_dataset" / "data" / str(d)).mkdir(parents=True)
    with pytest.raises(data.DatasetError, match="contain no"):
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)


def test_unreadable_image_is_reported_by_name(tmp_path):
    root = fixtures.write_mnist_fixture(tmp_path / "data", "course", n_per_digit=2)
    (root / "4" / "1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(data.DatasetError, match=r"4/1\.jpg"):
        data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)


def test_images_of_other_sizes_are_resized(tmp_path):
    root = fixtures.write_mnist_fixture(tmp_path / "data", "folder", n_per_digit=1)
    Image.new("RGB", (56, 40), "white").save(root / "5" / "big.jpg")
    ds = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    assert ds.images.shape == (11, 1, 28, 28)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_16_bit_png_decodes_like_its_8_bit_version(tmp_path, mode):
    digit = data.offline_sample().images[0, 0].numpy()                   # (28, 28) uint8
    Image.fromarray(digit).save(tmp_path / "8bit.png")
    Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "16bit.png")   # 255 → 65535
    assert Image.open(tmp_path / "16bit.png").mode == "I;16"
    eight, sixteen = data.decode_images([tmp_path / "8bit.png", tmp_path / "16bit.png"], 28, mode, progress=False)
    assert (eight.int() - sixteen.int()).abs().max() <= 1


@pytest.mark.parametrize("pil_mode", ["I;16", "I"])   # "I": how older PIL opens a 16-bit PNG
def test_a_near_black_16_bit_png_stays_near_black(tmp_path, pil_mode):
    # values 0–255 of 65535: the bit depth the PNG declares decides, not the values
    dark = (data.offline_sample().images[0, 0].numpy().astype(np.uint16))
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert common.png_bit_depth(tmp_path / "dark16.png") == 16
    decoded = data.decode_images([tmp_path / "dark16.png"], 28, "L", progress=False)
    assert decoded.max() == 1 and decoded.sum() > 0                        # 255 / 257 rounds to 1: near black
    with Image.open(tmp_path / "dark16.png") as image:
        as_mode = image if pil_mode == "I;16" else image.convert("I")
        assert np.asarray(common._gray_to_8bit(as_mode, common.png_bit_depth(tmp_path / "dark16.png"))).max() == 1


def test_32_bit_gray_holding_16_bit_values_scales_like_16_bit():
    digit = data.offline_sample().images[0, 0].numpy()
    as_int32 = Image.fromarray(digit.astype(np.int32) * 257)             # mode "I": older PIL's 16-bit PNG
    assert np.array_equal(np.asarray(common._gray_to_8bit(as_int32)), digit)


def test_a_full_cache_disk_is_named_and_the_images_still_load(tmp_path, monkeypatch):
    import errno

    fixtures.write_mnist_fixture(tmp_path / "data", "folder", n_per_digit=1)

    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.warns(UserWarning, match=r"cache .*its disk is full.*cache_dir="):
        ds = data.load_mnist(tmp_path / "data", tmp_path / "cache", download=False)
    assert ds.images.shape == (10, 1, 28, 28) and not list((tmp_path / "cache").iterdir())   # no half-written cache


def test_value_range_helpers_round_trip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    model_space = data.to_model(x)
    assert model_space.min() == -1 and model_space.max() == 1
    torch.testing.assert_close(data.to_unit(model_space), x.float() / 255)
    torch.testing.assert_close(data.to_model(data.to_unit(model_space)), model_space)


def _imageset(n=40):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return data.ImageSet(images, torch.arange(n), "fake")


def test_batch_loader_visits_each_image_once_per_epoch():
    loader = data.BatchLoader(_imageset(40), 8, seed=1)
    seen = torch.cat([b["labels"] for b in loader.epoch(0)])
    assert len(loader) == 5 and sorted(seen.tolist()) == list(range(40))
    first = [b["x0"].min().item() for b in loader.epoch(0)]
    assert all(-1 <= v <= 1 for v in first)


def test_batch_loader_resumes_mid_epoch_with_the_same_batches():
    loader = data.BatchLoader(_imageset(40), 8, seed=1, hflip=True)
    full = [b["labels"] for b in loader.epoch(3)]
    resumed = [b["labels"] for b in loader.epoch(3, start=2)]
    assert all(torch.equal(a, b) for a, b in zip(full[2:], resumed))
    assert not torch.equal(full[0], [b["labels"] for b in loader.epoch(4)][0])  # a new order each epoch


def test_batch_loader_shards_across_processes_without_overlap():
    ranks = [data.BatchLoader(_imageset(40), 4, seed=0, rank=r, world_size=2) for r in (0, 1)]
    seen = [torch.cat([b["labels"] for b in loader.epoch(0)]) for loader in ranks]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert len(seen[0]) + len(seen[1]) == 40


def test_batch_loader_flips_about_half_the_images():
    n = 400
    images = torch.zeros(n, 1, 1, 2, dtype=torch.uint8)
    images[..., 1] = 255  # left pixel black, right pixel white; a flip swaps them
    loader = data.BatchLoader(data.ImageSet(images, None, "fake"), 100, hflip=True)
    x0 = torch.cat([b["x0"] for b in loader.epoch(0)])
    flipped = (x0[:, 0, 0, 0] > 0).float().mean().item()
    assert 0.35 < flipped < 0.65


def test_too_small_dataset_for_one_batch_is_an_error():
    with pytest.raises(data.DatasetError, match="batch_size"):
        data.BatchLoader(_imageset(5), 8)
