"""Watch a model learn: a live loss curve and fixed-noise previews, as a ``train(on_log=...)`` hook."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from . import diffusion, viz


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class TrainingMonitor:
    """Pass as ``on_log`` to ``training.train``.

    Every ``cfg.preview_every`` steps it samples the same noise (seed ``cfg.seed``) with the
    fast ``cfg.preview_sampler`` and keeps the grid, so previews are comparable across
    training. In a notebook it redraws one loss figure and one preview in place (at most
    every ``refresh_seconds``). ``labels`` (B, K) conditions the previews of a conditional model
    with guidance scale w = ``guidance_scale`` (0 = unconditional, 1 = conditional, > 1 guided).
    """

    def __init__(self, cfg, schedule: diffusion.NoiseSchedule, *, num_images: int = 16, labels=None,
                 guidance_scale: float = 1.0, live: bool | None = None, refresh_seconds: float = 2.0):
        self.cfg, self.schedule = cfg, schedule
        self.labels, self.guidance_scale = labels, guidance_scale
        self.num_images = len(labels) if labels is not None else num_images
        self.nrow = max(1, round(self.num_images ** 0.5))
        self.live = _in_notebook() if live is None else live
        self.refresh_seconds = refresh_seconds
        self.previews: list[tuple[int, torch.Tensor]] = []   # (step, (B, C, H, W) in [-1, 1])
        self._last_draw = 0.0
        self._handles = None

    def preview(self, model, step: int) -> torch.Tensor:
        """Sample the fixed-noise preview batch with the fast sampler and remember it."""
        shape = (self.cfg.channels, self.cfg.image_size, self.cfg.image_size)
        images = diffusion.sample(model, self.schedule, self.num_images, shape, sampler=self.cfg.preview_sampler,
                                  num_inference_steps=self.cfg.preview_steps, labels=self.labels,
                                  guidance_scale=self.guidance_scale, seed=self.cfg.seed,
                                  clip_sample=self.cfg.clip_sample, mixed_precision=self.cfg.mixed_precision,
                                  progress=False).images
        self.previews.append((step, images))
        return images

    def __call__(self, progress) -> None:
        every = self.cfg.preview_every
        last = self.previews[-1][0] if self.previews else 0
        new_preview = every and (progress.step // every > last // every or progress.final)
        if new_preview and progress.step != last:
            self.preview(progress.ema_model(), progress.step)
        if self.live and (new_preview or progress.final or time.monotonic() - self._last_draw > self.refresh_seconds):
            self._draw(progress)

    def _draw(self, progress) -> None:
        from IPython.display import display

        fig = viz.plot_loss(progress.loss_history, title=f"step {progress.step} of {progress.total_steps}")
        figures = [fig]
        if self.previews:
            step, images = self.previews[-1]
            figures.append(viz.grid_image(images, self.nrow))
        if self._handles is None:
            self._handles = [display(f, display_id=True) for f in figures]
        else:
            if len(figures) > len(self._handles):
                self._handles.append(display(figures[-1], display_id=True))
            for handle, f in zip(self._handles, figures):
                handle.update(f)
        plt.close(fig)
        self._last_draw = time.monotonic()

    def save_progress_gif(self, path: str | Path, *, frame_ms: int = 400) -> Path:
        """A GIF of the previews across training: how the model learned."""
        return viz.save_gif([images for _, images in self.previews], path, nrow=self.nrow,
                            frame_ms=frame_ms, hold_last_ms=2000)
