"""FID and KID (torchmetrics) against closed forms, with small injected feature extractors."""

import hashlib
import os
import shlex

import pytest
import torch
import torch.hub
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from utils import compare, config, fid


def correlated_gaussian(n: int, dim: int = 6, seed: int = 0) -> torch.Tensor:
    """n samples (n, dim) float64 of a Gaussian with a non-diagonal covariance."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ mixing


def test_fid_of_a_set_with_itself_is_zero():
    x = correlated_gaussian(500)
    assert fid.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_a_shifted_set_is_the_squared_mean_shift():
    # identical covariances → Tr(Σ + Σ − 2 (Σ Σ)^½) = 0, leaving ‖μ1 − μ2‖²
    x = correlated_gaussian(500)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.25], dtype=torch.float64)
    assert fid.frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)


def test_fid_of_a_scaled_set_is_the_trace_formula():
    # Σ2 = c² Σ1, equal means → Tr(Σ1 + c² Σ1 − 2c Σ1) = (1 − c)² Tr(Σ1)
    x = correlated_gaussian(500)
    x = x - x.mean(0)
    c = 0.5
    expected = (1 - c) ** 2 * torch.cov(x.T).trace().item()
    assert fid.frechet_distance(x, c * x) == pytest.approx(expected, rel=1e-5)


def test_kid_is_near_zero_for_two_samples_of_one_distribution_and_not_for_shifted_ones():
    a, b = correlated_gaussian(300, seed=1), correlated_gaussian(300, seed=2)
    b = b @ torch.linalg.solve(_mixing(2), _mixing(1))          # same distribution as a
    same, same_std = fid.kernel_inception_distance(a, b, subset_size=100, subsets=20)
    shifted, _ = fid.kernel_inception_distance(a, a + 2.0, subset_size=100, subsets=20)
    assert abs(same) < 3 * same_std + 0.05
    assert shifted > 20 * abs(same)


def _mixing(seed: int, dim: int = 6) -> torch.Tensor:
    return torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_image_sets_through_the_injected_extractor_give_zero_fid():
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    extractor = fid.feature_extractor("random")
    real = fid.extract_features(images, extractor, batch_size=16, progress=False)
    fake = fid.extract_features(images.float() / 127.5 - 1, extractor, batch_size=7, progress=False)
    assert real.shape == (40, extractor.num_features)
    result = fid.fid_kid(real, fake, kid_subset_size=20, kid_subsets=5)
    assert result.fid == pytest.approx(0.0, abs=1e-4) and (result.num_real, result.num_fake) == (40, 40)


def test_kid_subsets_shrink_below_the_smaller_set_so_their_spread_means_something():
    real, fake = correlated_gaussian(40, seed=1), correlated_gaussian(12, seed=2)
    result = fid.fid_kid(real, fake, kid_subset_size=20, kid_subsets=5)
    assert (result.num_real, result.num_fake, result.kid_subset_size) == (40, 12, 6)    # half of 12: subsets differ
    assert result.kid_std > 0                                   # a subset of all 12 would give ± 0 every time
    assert fid.kid_subset_for(1000, 5000, 5000) == 1000 and fid.kid_subset_for(1000, 500, 500) == 250


def test_a_generator_is_scored_against_as_many_of_the_first_real_images():
    extractor = fid.feature_extractor("random")
    real_images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    real = fid.extract_features(real_images, extractor, progress=False)
    cmp = config.make_config("compare", "smoke", fid_batch_size=3)

    def sample_fn(n, seed):                              # seeded images in [-1, 1]
        return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    result, fake = compare.score_generator(sample_fn, real, extractor, cmp, num=8, progress=False)
    images = torch.cat([sample_fn(n, cmp.seed + i) for i, n in enumerate((3, 3, 2))])
    assert torch.equal(fake, fid.extract_features(images, extractor, progress=False))
    expected = fid.fid_kid(real[:8], fake, kid_subset_size=cmp.kid_subset_size, kid_subsets=cmp.kid_subsets)
    assert result == expected and (result.num_real, result.num_fake) == (8, 8)


def test_the_fid_table_names_the_sampler_its_steps_and_n_of_every_row():
    numbers = dict(fid=12.5, kid_mean=0.002, kid_std=0.0001, num_real=500, kid_subset_size=500)
    table = compare.format_fid([{"data": "anime", "model": "DDPM", "sampler": "ddpm", "steps": 1000,
                                 "num_fake": 500, **numbers},
                                 {"data": "anime", "model": "DCGAN", "sampler": "G(z)", "steps": 1,
                                  "num_fake": 500, **numbers}]).splitlines()
    assert "ddpm, 1000 steps" in table[1] and " 500 " in table[1] and "12.50" in table[1]
    assert "G(z), 1 step " in table[2]


def test_gray_images_become_three_channel_uint8_like_a_saved_png():
    images = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    out = fid.to_uint8_rgb(images)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 1, 3)
    assert out[0, :, 0].tolist() == [[0, 128, 255]] * 3


def test_real_images_are_a_seeded_random_subset():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    first, again = fid.pick_real(images, 10, seed=3), fid.pick_real(images, 10, seed=3)
    assert torch.equal(first, again) and len(set(first.flatten().tolist())) == 10
    with pytest.raises(ValueError, match="lower fid_num_samples"):
        fid.pick_real(images, 101)


def test_sampling_in_batches_covers_every_image_with_a_seed_per_batch(capsys):
    seeds = []

    def sample_fn(n, seed):
        seeds.append(seed)
        return torch.zeros(n, 3, 4, 4)

    out = fid.sample_in_batches(sample_fn, 10, 4, seed=7, progress=False)
    assert out.shape == (10, 3, 4, 4) and out.dtype == torch.uint8 and seeds == [7, 8, 9]
    assert "all will take" in capsys.readouterr().out


def test_missing_inception_weights_say_how_to_point_at_a_local_copy(tmp_path):
    with pytest.raises(fid.InceptionWeightsError, match="inception_weights=") as err:
        fid.inception_extractor(tmp_path / "nowhere.pth")
    assert fid.INCEPTION_URL in str(err.value)


class RunsCode:
    """Unpickling this runs ``touch marker``: what a crafted weights file can do to torch.load(weights_only=False)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def crafted_weights(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(RunsCode(marker), path)
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_expected_hash_agrees_with_the_prefix_in_torch_fidelitys_url():
    assert fid.INCEPTION_URL == URL_INCEPTION_V3
    prefix = torch.hub.HASH_REGEX.search(URL_INCEPTION_V3.split("/")[-1]).group(1)
    assert len(fid.INCEPTION_SHA256) == 64 and fid.INCEPTION_SHA256.startswith(prefix)


def test_a_weights_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    weights = crafted_weights(tmp_path / fid.INCEPTION_FILE, marker)
    with pytest.raises(fid.InceptionWeightsError, match="SHA-256"):
        fid.inception_extractor(weights)
    assert not marker.exists()


def test_a_pickle_with_code_is_refused_even_when_its_hash_matches(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    weights = crafted_weights(tmp_path / fid.INCEPTION_FILE, marker)
    monkeypatch.setattr(fid, "INCEPTION_SHA256", sha256(weights))   # the second line of defence alone
    with pytest.raises(fid.InceptionWeightsError, match="refused for safety"):
        fid.inception_extractor(weights)
    assert not marker.exists()


def test_weights_with_the_right_name_but_wrong_content_are_refused_with_both_hashes(tmp_path):
    weights = tmp_path / fid.INCEPTION_FILE
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights)
    with pytest.raises(fid.InceptionWeightsError) as err:
        fid.inception_extractor(weights)
    message = str(err.value)
    assert str(weights) in message and sha256(weights) in message and f"expected {fid.INCEPTION_SHA256}" in message
    assert "Delete it" in message and fid.INCEPTION_URL in message


def test_a_crafted_copy_in_torch_hubs_cache_is_refused_without_running_it(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    crafted_weights(tmp_path / "hub" / "checkpoints" / fid.INCEPTION_FILE, marker)
    with pytest.raises(fid.InceptionWeightsError, match="SHA-256"):
        fid.inception_extractor(None)
    assert not marker.exists()


def test_without_a_cached_copy_the_download_is_hash_checked_and_then_verified(tmp_path, monkeypatch):
    downloads = []

    def fake_download(url, dst, hash_prefix=None, progress=True):  # writes a wrong file, ignoring the hash
        downloads.append((url, hash_prefix))
        torch.save({"fc.weight": torch.zeros(1)}, dst)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(fid.InceptionWeightsError, match="SHA-256"):
        fid.inception_extractor(None)
    assert downloads == [(URL_INCEPTION_V3, fid.INCEPTION_SHA256)]


def test_nearest_neighbour_finds_a_copied_training_image():
    train = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    generated = torch.stack([train[17], train[3]]).float() / 127.5 - 1
    dist, idx = compare.nearest_neighbours(generated, train, chunk=8)
    assert idx.tolist() == [17, 3] and dist.max() < 1e-4
