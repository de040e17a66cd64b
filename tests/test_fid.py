"""FID and KID (torchmetrics) against closed forms, with small injected feature extractors."""

import pytest
import torch

from utils import evaluate


def correlated_gaussian(n: int, dim: int = 6, seed: int = 0) -> torch.Tensor:
    """n samples (n, dim) float64 of a Gaussian with a non-diagonal covariance."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ mixing


def test_fid_of_a_set_with_itself_is_zero():
    x = correlated_gaussian(500)
    assert evaluate.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_a_shifted_set_is_the_squared_mean_shift():
    # identical covariances → Tr(Σ + Σ − 2 (Σ Σ)^½) = 0, leaving ‖μ1 − μ2‖²
    x = correlated_gaussian(500)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.25], dtype=torch.float64)
    assert evaluate.frechet_distance(x, x + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)


def test_fid_of_a_scaled_set_is_the_trace_formula():
    # Σ2 = c² Σ1, equal means → Tr(Σ1 + c² Σ1 − 2c Σ1) = (1 − c)² Tr(Σ1)
    x = correlated_gaussian(500)
    x = x - x.mean(0)
    c = 0.5
    expected = (1 - c) ** 2 * torch.cov(x.T).trace().item()
    assert evaluate.frechet_distance(x, c * x) == pytest.approx(expected, rel=1e-5)


def test_kid_is_near_zero_for_two_samples_of_one_distribution_and_not_for_shifted_ones():
    a, b = correlated_gaussian(300, seed=1), correlated_gaussian(300, seed=2)
    b = b @ torch.linalg.solve(_mixing(2), _mixing(1))          # same distribution as a
    same, same_std = evaluate.kernel_inception_distance(a, b, subset_size=100, subsets=20)
    shifted, _ = evaluate.kernel_inception_distance(a, a + 2.0, subset_size=100, subsets=20)
    assert abs(same) < 3 * same_std + 0.05
    assert shifted > 20 * abs(same)


def _mixing(seed: int, dim: int = 6) -> torch.Tensor:
    return torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_image_sets_through_the_injected_extractor_give_zero_fid():
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    extractor = evaluate.feature_extractor("random")
    real = evaluate.extract_features(images, extractor, batch_size=16, progress=False)
    fake = evaluate.extract_features(images.float() / 127.5 - 1, extractor, batch_size=7, progress=False)
    assert real.shape == (40, extractor.num_features)
    result = evaluate.fid_kid(real, fake, kid_subset_size=20, kid_subsets=5)
    assert result.fid == pytest.approx(0.0, abs=1e-4) and (result.num_real, result.num_fake) == (40, 40)


def test_gray_images_become_three_channel_uint8_like_a_saved_png():
    images = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    out = evaluate.to_uint8_rgb(images)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 1, 3)
    assert out[0, :, 0].tolist() == [[0, 128, 255]] * 3


def test_real_images_are_a_seeded_random_subset():
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1)
    first, again = evaluate.pick_real(images, 10, seed=3), evaluate.pick_real(images, 10, seed=3)
    assert torch.equal(first, again) and len(set(first.flatten().tolist())) == 10
    with pytest.raises(ValueError, match="lower fid_num_samples"):
        evaluate.pick_real(images, 101)


def test_sampling_in_batches_covers_every_image_with_a_seed_per_batch(capsys):
    seeds = []

    def sample_fn(n, seed):
        seeds.append(seed)
        return torch.zeros(n, 3, 4, 4)

    out = evaluate.sample_in_batches(sample_fn, 10, 4, seed=7, progress=False)
    assert out.shape == (10, 3, 4, 4) and out.dtype == torch.uint8 and seeds == [7, 8, 9]
    assert "all will take" in capsys.readouterr().out


def test_missing_inception_weights_say_how_to_point_at_a_local_copy(tmp_path):
    with pytest.raises(evaluate.InceptionWeightsError, match="inception_weights=") as err:
        evaluate.inception_extractor(tmp_path / "nowhere.pth")
    assert evaluate.INCEPTION_URL in str(err.value)


def test_nearest_neighbour_finds_a_copied_training_image():
    train = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    generated = torch.stack([train[17], train[3]]).float() / 127.5 - 1
    dist, idx = evaluate.nearest_neighbours(generated, train, chunk=8)
    assert idx.tolist() == [17, 3] and dist.max() < 1e-4
