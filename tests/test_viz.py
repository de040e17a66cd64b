"""Hand-in figures: sizes, frame counts, timing, files."""

import pytest
import torch
from PIL import Image

from utils import viz


def test_5x5_grid_of_28px_digits_has_the_expected_pixel_size(tmp_path):
    image = viz.save_grid(torch.zeros(25, 1, 28, 28), tmp_path / "result.jpg", nrow=5)
    side = 5 * 28 + 6 * 2  # five images and six 2-pixel borders
    assert image.size == (side, side)
    with Image.open(tmp_path / "result.jpg") as saved:
        assert saved.size == (side, side) and saved.mode == "L"


def test_color_grid_of_8_by_4_is_saved_in_color(tmp_path):
    viz.save_grid(torch.zeros(32, 3, 64, 64), tmp_path / "grid.png", nrow=8, expected=32)
    with Image.open(tmp_path / "grid.png") as saved:
        assert saved.size == (8 * 64 + 9 * 2, 4 * 64 + 5 * 2) and saved.mode == "RGB"


def test_grid_with_the_wrong_number_of_images_says_how_many_it_needs(tmp_path):
    with pytest.raises(ValueError, match="exactly 25 images"):
        viz.save_grid(torch.zeros(24, 1, 28, 28), tmp_path / "x.jpg")


def test_grid_maps_minus_one_to_black_and_one_to_white():
    images = torch.stack([-torch.ones(1, 4, 4), torch.ones(1, 4, 4)])
    grid = viz.grid_image(images, nrow=2, padding=0)
    assert grid.getpixel((0, 0)) == 0 and grid.getpixel((7, 0)) == 255


def test_gif_has_one_frame_per_snapshot_held_last_and_loops(tmp_path):
    frames = [torch.rand(4, 1, 8, 8) * 2 - 1 for _ in range(12)]
    path = viz.save_gif(frames, tmp_path / "d.gif", nrow=2, frame_ms=60, hold_last_ms=1500)
    with Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert gif.n_frames == 12 and gif.info.get("loop") == 0
    assert durations[:-1] == [60] * 11 and durations[-1] == 1500


def test_gif_frames_use_the_fixed_mapping_not_min_max_stretch(tmp_path):
    dim = torch.full((1, 1, 4, 4), -0.5)  # a flat dark gray frame must stay dark gray
    path = viz.save_gif([dim, dim], tmp_path / "g.gif", nrow=1, padding=0)
    with Image.open(path) as gif:
        value = gif.convert("L").getpixel((0, 0))
    assert abs(value - round(0.25 * 255)) <= 2


def test_gif_needs_two_frames(tmp_path):
    with pytest.raises(ValueError, match="at least 2 frames"):
        viz.save_gif([torch.zeros(1, 1, 4, 4)], tmp_path / "g.gif")


def test_loss_plot_is_written_with_labelled_axes(tmp_path):
    fig = viz.plot_loss([1.0 / (i + 1) for i in range(200)], tmp_path / "loss.jpg")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training iteration" and "loss" in ax.get_ylabel()
    assert len(ax.lines) == 2  # raw and moving average
    with Image.open(tmp_path / "loss.jpg") as saved:
        assert saved.width > 500


def test_smoothing_keeps_length_and_averages():
    values = [0.0, 2.0] * 50
    smoothed = viz.smooth(values, window=2)
    assert len(smoothed) == 100 and smoothed[-1] == pytest.approx(1.0)


def test_empty_loss_history_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="train first"):
        viz.plot_loss([], tmp_path / "loss.jpg")


def test_denoising_strip_is_one_row(tmp_path):
    frames = [torch.zeros(3, 3, 64, 64) for _ in range(10)]
    image = viz.denoising_strip(frames, tmp_path / "strip.png")
    assert image.size == (10 * 64 + 11 * 2, 64 + 2 * 2)
