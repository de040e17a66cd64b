"""MNIST preset speed on this machine: training iterations/s and sampling time (DDPM 1000 vs DDIM 50).

Run: python benchmarks/mnist_speed.py [--quick]   (results → benchmarks/results/mnist_speed.md)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _common import write_result

from utils import config, data, diffusion, models, training


def training_speed(cfg, steps: int) -> float:
    """Iterations per second of ``training.train`` after a warm-up, on random uint8 digits."""
    images = torch.randint(0, 256, (cfg.batch_size * 8, 1, 28, 28), dtype=torch.uint8)
    loader = data.BatchLoader(data.ImageSet(images, None, "random"), cfg.batch_size, device=config.pick_device())
    stamps = []
    training.train(models.build_model(cfg), diffusion.make_loss_fn(diffusion.schedule_from_config(cfg)), loader,
                   cfg, on_log=lambda p: stamps.append((p.step, time.perf_counter())), progress=False)
    (s0, t0), (s1, t1) = stamps[1], stamps[-1]  # skip the first read-out: warm-up
    return (s1 - s0) / (t1 - t0)


def sampling_time(model, cfg, sampler: str, steps: int, num_images: int = 25) -> float:
    schedule = diffusion.schedule_from_config(cfg)
    start = time.perf_counter()
    diffusion.sample(model, schedule, num_images, (1, 28, 28), sampler=sampler, num_inference_steps=steps,
                     progress=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps (for a smoke check of this script)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for preset in ("full", "cpu"):
            steps = 10 if args.quick else 40
            cfg = config.make_config("mnist", preset, workdir=work, max_steps=steps, log_every=steps // 5,
                                     checkpoint_every=10**9, checkpoint_dir=f"{work}/{preset}")
            torch.manual_seed(0)
            model = models.build_model(cfg).to(config.pick_device())
            its = training_speed(cfg, steps)
            ddpm = sampling_time(model, cfg, "ddpm", 1000) if not args.quick else float("nan")
            ddim = sampling_time(model, cfg, "ddim", 50)
            rows.append(f"| {preset} | {models.count_parameters(model) / 1e6:.2f} M | {cfg.batch_size} | "
                        f"{its:.2f} | {its * cfg.batch_size:.0f} | {ddpm:.1f} s | {ddim:.1f} s | {ddpm / ddim:.1f}× |")
    write_result("mnist_speed", "\n".join([
        "| preset | parameters | batch | train it/s | images/s | 25 samples, DDPM 1000 steps | 25 samples, DDIM 50 steps | DDIM speed-up |",
        "|---|---|---|---|---|---|---|---|", *rows]))


if __name__ == "__main__":
    main()
