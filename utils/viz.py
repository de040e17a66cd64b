"""Figures a student looks at and hands in: loss plot, grids, GIFs, forward-process strip.

Images come in model space [-1, 1] as (B, C, H, W) tensors and are mapped to display space
with ``utils.data.to_unit`` — the same mapping for a grid, a GIF frame and a strip, never a
per-image min-max stretch.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from .data import to_unit


def _to_pil(grid01: torch.Tensor) -> Image.Image:
    """(C, H, W) in [0, 1] → PIL image (gray when C = 1)."""
    array = (grid01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def grid_image(images: torch.Tensor, nrow: int, padding: int = 2) -> Image.Image:
    """Tile (B, C, H, W) images in [-1, 1] into one PIL image, ``nrow`` images per row."""
    grid = make_grid(to_unit(images.detach().float().cpu()), nrow=nrow, padding=padding, pad_value=1.0)
    if images.shape[1] == 1:
        grid = grid[:1]  # make_grid repeats gray to 3 channels; keep the saved file gray
    return _to_pil(grid)


def save_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 5, expected: int | None = 25,
              padding: int = 2) -> Image.Image:
    """Save (B, C, H, W) images in [-1, 1] as a grid (``nrow`` per row) and return the image.

    ``expected`` guards the hand-in layout: a 5×5 grid needs exactly 25 images.
    """
    if expected is not None and len(images) != expected:
        raise ValueError(f"This grid needs exactly {expected} images ({nrow} per row); got {len(images)}.")
    image = grid_image(images, nrow, padding)
    _save(image, path)
    return image


def save_numbered(images: torch.Tensor, folder: str | Path) -> list[Path]:
    """Save (B, C, H, W) images in [-1, 1] one per file, ``folder/0.png`` … ``folder/{B−1}.png`` in order."""
    return [_save(grid_image(image[None], nrow=1, padding=0), Path(folder) / f"{i}.png")
            for i, image in enumerate(images)]


def _save(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.convert("L" if image.mode == "L" else "RGB").save(path, quality=95)
    else:
        image.save(path)
    return path


def smooth(values: list[float], window: int | None = None) -> np.ndarray:
    """Moving average over ``window`` points (default: 2 % of the run, at least 1)."""
    values = np.asarray(values, dtype=np.float64)
    window = window or max(1, len(values) // 50)
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[:window - 1]) / np.arange(1, window)  # partial means at the start
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def save_figure(fig, path: str | Path | None):
    """Lay the figure out, save it at 150 dpi when a path is given (creating its folder); return it."""
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def plot_loss(loss_history: list[float], path: str | Path | None = None, *, title: str = "DDPM training loss",
              window: int | None = None, ax=None):
    """Loss against training iteration: raw values and a moving average, log-scaled y axis.

    Saves to ``path`` (JPG/PNG) when given and returns the figure.
    """
    if not loss_history:
        raise ValueError("The loss history is empty: train first.")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 4), dpi=120)
    ax.clear()
    steps = np.arange(1, len(loss_history) + 1)
    sm = smooth(loss_history, window)
    ax.plot(steps, loss_history, color="tab:blue", alpha=0.3, linewidth=0.8, label="per iteration")
    ax.plot(steps, sm, color="tab:blue", linewidth=2, label="moving average")
    ax.set_yscale("log")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("MSE loss  ‖ε − ε_θ(x_t, t)‖²")
    ax.set_title(f"{title} (last ≈ {sm[-1]:.4f})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def save_gif(frames: list[torch.Tensor], path: str | Path, *, nrow: int = 5, frame_ms: int = 80,
             hold_last_ms: int = 2000, loop: bool = True, padding: int = 2) -> Path:
    """Write a GIF of grids, one per frame: frames are (B, C, H, W) in [-1, 1], noise → image.

    Every frame uses the same [-1, 1] → [0, 1] mapping as the final grid. Each frame shows
    for ``frame_ms``; the last one is held for ``hold_last_ms``; the GIF loops forever.
    """
    if len(frames) < 2:
        raise ValueError(f"A GIF needs at least 2 frames; got {len(frames)}. Sample with num_frames > 1.")
    pictures = [np.asarray(grid_image(f, nrow, padding).convert("RGB")) for f in frames]
    durations = [frame_ms] * (len(pictures) - 1) + [hold_last_ms]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.stack(pictures), extension=".gif", duration=durations, loop=0 if loop else 1)
    return path


def forward_process_strip(x0: torch.Tensor, noisy: list[torch.Tensor], timesteps: list[int],
                          path: str | Path | None = None):
    """A figure: each row one image, each column x_t at one t (x0 first). Tensors (B, C, H, W) in [-1, 1]."""
    columns = [x0] + list(noisy)
    titles = ["x₀"] + [f"t = {t}" for t in timesteps]
    rows = x0.shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.3 * len(columns), 1.3 * rows + 0.3), squeeze=False)
    for c, (images, title) in enumerate(zip(columns, titles)):
        for r in range(rows):
            picture = to_unit(images[r].detach().float().cpu()).permute(1, 2, 0).numpy()
            axes[r][c].imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            axes[r][c].axis("off")
        axes[0][c].set_title(title, fontsize=9)
    fig.suptitle("Forward process q(x_t | x₀): more noise as t grows", fontsize=10)
    return save_figure(fig, path)


def denoising_strip(frames: list[torch.Tensor], path: str | Path, *, index: int = 0) -> Image.Image:
    """One row: image ``index`` of each frame, noise on the left → clean on the right."""
    row = torch.stack([f[index] for f in frames])
    image = grid_image(row, nrow=len(frames))
    _save(image, path)
    return image


def plot_gan_loss(generator_losses: list[float], discriminator_losses: list[float], path: str | Path | None = None, *,
                  title: str = "DCGAN training loss", window: int | None = None):
    """G's and D's loss against training iteration (raw and moving average); saves to ``path`` when given.

    Unlike a DDPM's loss, these do not go down: G and D play against each other, and flat, balanced
    curves are the healthy sign. D's loss near 0 means D wins and G has stopped learning.
    """
    if not generator_losses:
        raise ValueError("The loss history is empty: train first.")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for values, color, name in ((generator_losses, "tab:blue", "G: −log D(G(z))"),
                                (discriminator_losses, "tab:orange", "D: −log D(x) − log(1 − D(G(z)))")):
        steps = np.arange(1, len(values) + 1)
        ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(steps, smooth(values, window), color=color, linewidth=2, label=name)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("binary cross-entropy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def side_by_side(grids: dict[str, torch.Tensor], path: str | Path | None = None, *, nrow: int = 5):
    """One figure with a grid per model, titled by the dict keys. Images (B, C, H, W) in [-1, 1]."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.6), squeeze=False)
    for ax, (name, images) in zip(axes[0], grids.items()):
        ax.imshow(grid_image(images, nrow=nrow))
        ax.set_title(name)
        ax.axis("off")
    return save_figure(fig, path)


def neighbour_pairs(generated: torch.Tensor, neighbours: torch.Tensor, distances, path: str | Path | None = None, *,
                    title: str = ""):
    """Top row: generated images; bottom row: the nearest training image of each, with the L2 distance.

    generated, neighbours: (N, C, H, W) in [-1, 1]; distances: N numbers.
    """
    n = len(generated)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.3), squeeze=False)
    for i in range(n):
        for row, image in ((0, generated[i]), (1, neighbours[i])):
            picture = to_unit(image.float().cpu()).permute(1, 2, 0).numpy()
            axes[row][i].imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            axes[row][i].axis("off")
        axes[1][i].set_title(f"L2 {float(distances[i]):.1f}", fontsize=8)
    axes[0][0].set_title("generated", fontsize=8, loc="left")
    fig.suptitle(title or "generated (top) and its nearest training image (bottom)", fontsize=10)
    return save_figure(fig, path)
