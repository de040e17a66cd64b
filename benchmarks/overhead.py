"""What the bundle's machinery costs on top of the U-Net, measured side by side in one run.

1. ``training.train`` per iteration vs a bare PyTorch loop (AdamW: forward, backward, step) on the
   same model and the same batch (target: ≤ 5 % overhead);
2. each sampler's time per step (``diffusion.sample``) vs bare U-Net forward calls (target: ≤ 5 %);
3. a fast sampler (50 steps) vs 1000-step DDPM, wall time;
4. the data pipeline's images/s (``BatchLoader`` over the cached uint8 tensor) vs the U-Net's
   training images/s.

The model is the MNIST "cpu" preset's U-Net (1×28×28). Bundle and bare runs alternate and each
figure is the median over repeats: the machine may be shared and noisy.

Run: python benchmarks/overhead.py [--quick] [--threads N]   (results → benchmarks/results/overhead.md)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from _common import write_result

from utils import config, data, diffusion, models, training


class FixedBatch:
    """A loader that yields one batch ``steps`` times per epoch: both loops see identical inputs."""

    def __init__(self, batch: dict, steps: int):
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int, start: int = 0):
        for _ in range(start, self.steps):
            yield self.batch


def bare_training(model, loss_fn, batch, cfg, warmup: int, steps: int) -> float:
    """Seconds per iteration of the loop a student would write: forward, backward, AdamW step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def loop_training(model, loss_fn, batch, cfg, warmup: int, steps: int, work: str) -> float:
    """Seconds per iteration of ``training.train`` (clipping, warm-up schedule, EMA, loss read-outs)."""
    stamps = []
    run_cfg = config.make_config("mnist", "cpu", workdir=work, checkpoint_dir=tempfile.mkdtemp(dir=work),
                                 max_steps=warmup + steps, log_every=warmup, checkpoint_every=10**9,
                                 mixed_precision="no")
    assert run_cfg.architecture() == cfg.architecture()
    training.train(model, loss_fn, FixedBatch(batch, warmup + steps), run_cfg, progress=False,
                   on_log=lambda p: stamps.append((p.step, time.perf_counter())))
    (s0, t0), (s1, t1) = stamps[0], stamps[-1]  # from the first read-out (after warm-up) to the last
    return (t1 - t0) / (s1 - s0)


def bare_sampling(model, num_images: int, steps: int) -> float:
    """Seconds per U-Net forward call on a batch of ``num_images`` (no sampler math)."""
    x = torch.randn(num_images, 1, 28, 28)
    t = torch.full((num_images,), 500)
    model.eval()
    with torch.inference_mode():
        model(x, t)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            model(x, t).sample
    return (time.perf_counter() - start) / steps


def sampler_time(model, schedule, sampler: str, num_images: int, steps: int) -> float:
    """Wall time of ``diffusion.sample`` (ddpm takes all T steps of ``schedule``)."""
    start = time.perf_counter()
    diffusion.sample(model, schedule, num_images, (1, 28, 28), sampler=sampler, num_inference_steps=steps,
                     progress=False)
    return time.perf_counter() - start


def loader_images_per_second(batch_size: int, num_images: int = 60_000) -> float:
    """Images/s of one ``BatchLoader`` epoch over an MNIST-sized uint8 tensor (60k × 1 × 28 × 28)."""
    images = torch.randint(0, 256, (num_images, 1, 28, 28), dtype=torch.uint8)
    loader = data.BatchLoader(data.ImageSet(images, None, "random"), batch_size)
    start = time.perf_counter()
    n = sum(len(batch["x0"]) for batch in loader.epoch(0))
    return n / (time.perf_counter() - start)


def median(values):
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke check of this script)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, train_steps, sample_steps = (2, 4, 10) if args.quick else (4, 8, 50)
    warmup, num_images = 2, 16  # 16 images: the training monitor's preview batch

    with tempfile.TemporaryDirectory() as work:
        cfg = config.make_config("mnist", "cpu", workdir=work)
        torch.manual_seed(0)
        base = models.build_model(cfg)
        schedule = diffusion.schedule_from_config(cfg)
        loss_fn = diffusion.make_loss_fn(schedule)
        batch = {"x0": data.to_model(torch.randint(0, 256, (cfg.batch_size, 1, 28, 28), dtype=torch.uint8))}
        short = diffusion.make_schedule(sample_steps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end)

        times = {k: [] for k in ("bare train", "loop train", "bare forward", "ddpm", "ddim", "dpm")}
        for _ in range(repeats):  # alternate, so a noisy neighbour hits both sides alike
            times["bare train"].append(bare_training(copy.deepcopy(base), loss_fn, batch, cfg, warmup, train_steps))
            times["loop train"].append(loop_training(copy.deepcopy(base), loss_fn, batch, cfg, warmup, train_steps,
                                                     work))
            times["bare forward"].append(bare_sampling(base, num_images, sample_steps))
            times["ddpm"].append(sampler_time(base, short, "ddpm", num_images, sample_steps) / sample_steps)
            for sampler in ("ddim", "dpm"):
                times[sampler].append(sampler_time(base, schedule, sampler, num_images, sample_steps) / sample_steps)
        t = {k: median(v) for k, v in times.items()}
        fast_wall = {s: t[s] * sample_steps for s in ("ddim", "dpm")}  # the runs above are whole 50-step samplings

        full = diffusion.make_schedule(10 if args.quick else 1000, cfg.beta_schedule, cfg.beta_start, cfg.beta_end)
        ddpm_wall = sampler_time(base, full, "ddpm", num_images, full.num_train_timesteps)
        loader_ips = median([loader_images_per_second(cfg.batch_size) for _ in range(3)])

    def row(what, ours, bare):
        return f"| {what} | {ours * 1e3:.2f} ms | {bare * 1e3:.2f} ms | {100 * (ours / bare - 1):+.1f} % |"

    train_ips = cfg.batch_size / t["loop train"]
    params = models.count_parameters(base) / 1e6
    lines = [
        f"MNIST \"cpu\"-preset U-Net ({params:.2f} M parameters, widths {cfg.block_out_channels}), "
        f"{args.threads} torch thread(s); medians of {repeats} alternating repeats of {train_steps} training "
        f"iterations (after {warmup} warm-up) and {sample_steps} sampling steps"
        f"{' (--quick: not a measurement)' if args.quick else ''}.",
        "",
        "| time per step | bundle | bare PyTorch | overhead |",
        "|---|---|---|---|",
        row(f"training iteration, batch {cfg.batch_size}: `training.train` vs forward/backward/AdamW", t["loop train"],
            t["bare train"]),
        *[row(f"sampling step, {num_images} images: `sample(sampler=\"{s}\")` vs U-Net forward", t[s],
              t["bare forward"]) for s in ("ddpm", "ddim", "dpm")],
        "",
        f"The loop's extra work per iteration: gradient clipping, the learning-rate schedule, the EMA update and "
        f"a loss read-out every {warmup} steps. A sampler step is a whole {sample_steps}-step sampling divided by "
        f"{sample_steps}: scheduler set-up, initial noise and the final copy included (DDPM: all steps of a "
        f"T = {sample_steps} schedule, the same per-step work as T = 1000).",
        "",
        f"| {num_images} images | wall time | vs DDPM |",
        "|---|---|---|",
        f"| DDPM, {full.num_train_timesteps} steps (Algorithm 2) | {ddpm_wall:.1f} s | 1× |",
        *[f"| {name}, {sample_steps} steps | {fast_wall[s]:.2f} s | {ddpm_wall / fast_wall[s]:.0f}× faster |"
          for s, name in (("ddim", "DDIM"), ("dpm", "DPM-Solver++ 2M"))],
        "",
        "| images per second | |",
        "|---|---|",
        f"| data: `BatchLoader` epoch over a 60k × 1 × 28 × 28 uint8 tensor, batch {cfg.batch_size} | "
        f"{loader_ips:,.0f} |",
        f"| model: U-Net training through `training.train`, batch {cfg.batch_size} | {train_ips:,.0f} |",
        f"| data / model | {loader_ips / train_ips:,.0f}× — the model is the bottleneck |",
    ]
    if args.quick:
        print("\n".join(lines))
    else:
        write_result("overhead", "\n".join(lines))


if __name__ == "__main__":
    main()
