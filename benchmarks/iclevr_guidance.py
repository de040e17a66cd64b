"""What classifier-free guidance costs, measured on this machine.

1. One guided step (ε = ε_uncond + w · (ε_cond − ε_uncond), w = 0 unconditional, w = 1
   conditional) for the 32 test images: ``diffusion.guided_noise`` (one forward of 2B = 64)
   against two separate forwards of 32.
2. Sampling the 32 test images and scoring them with the course evaluator: DDPM (all 1000
   steps) against DDIM with 50 steps, both timed end to end (``--ddpm-steps-timed 20`` instead
   runs 20 DDPM steps and extrapolates, labelled as such).

The U-Net is a small 64×64 conditional one (widths 16-32-64-64) so the script takes about 13 CPU
minutes (most of it DDPM's 1000 steps); the course model (64-128-256-256) is far heavier, but the
ratios are what matter.

    .venv/bin/python benchmarks/iclevr_guidance.py

Results, with machine and date: benchmarks/results/iclevr_guidance.md.
On a CPU the batched forward saves nothing (the work is the same and the CPU is already busy);
its gain is on a GPU, where one launch of 2B keeps the device fuller than two launches of B —
not measured here (no GPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import write_result

from utils import config, diffusion, fixtures, iclevr_accuracy, models
from utils.data import iclevr


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def two_forwards(model, xt, t, labels, w):
    """The guidance mix with the conditional and unconditional predictions as separate forwards."""
    B = xt.shape[0]
    eps_cond = diffusion.predict_noise(model, xt, t.expand(B), labels)
    eps_uncond = diffusion.predict_noise(model, xt, t.expand(B), labels, torch.ones(B, dtype=torch.bool))
    return eps_uncond + w * (eps_cond - eps_uncond)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ddpm-steps-timed", type=int, default=1000,
                        help="DDPM steps actually run; fewer than 1000 are extrapolated to 1000")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = config.make_config("iclevr", "full", block_out_channels=(16, 32, 64, 64), norm_num_groups=8,
                             workdir=tempfile.mkdtemp())
    model = models.build_model(cfg).eval()
    schedule = diffusion.schedule_from_config(cfg)
    objects = iclevr.load_objects(iclevr.BUNDLED_LABELS / "objects.json")
    labels = iclevr.encode_labels(iclevr.load_label_lists(iclevr.BUNDLED_LABELS / "test.json"), objects)  # (32, 24)
    shape = (3, cfg.image_size, cfg.image_size)
    print(f"{config.describe_runtime()}\nU-Net {cfg.block_out_channels}: {models.count_parameters(model) / 1e6:.2f} M "
          f"parameters; {torch.get_num_threads()} threads")

    xt, t, w = torch.randn(len(labels), *shape), torch.tensor([500]), cfg.guidance_scale
    with torch.inference_mode():
        batched = timed(lambda: diffusion.guided_noise(model, xt, t, labels, w), args.repeats)
        separate = timed(lambda: two_forwards(model, xt, t, labels, w), args.repeats)
        difference = (diffusion.guided_noise(model, xt, t, labels, w) - two_forwards(model, xt, t, labels, w)).abs().max()
    print(f"\n1. one guided step, B = {len(labels)}, w = {w} (median of {args.repeats}):\n"
          f"   one batched forward (2B):  {batched * 1000:7.1f} ms\n"
          f"   two separate forwards (B): {separate * 1000:7.1f} ms   (batched / separate = {batched / separate:.2f}; "
          f"max |difference| = {difference:.1e})")

    checkpoint = fixtures.write_evaluator_fixture(Path(tempfile.mkdtemp()) / "checkpoint.pth")
    evaluator = iclevr_accuracy.load_evaluator(checkpoint)

    def sample_and_score(sampler, steps):
        images = diffusion.sample(model, schedule, len(labels), shape, sampler=sampler, num_inference_steps=steps,
                                  labels=labels, guidance_scale=w, progress=False).images
        return iclevr_accuracy.accuracy(evaluator, iclevr_accuracy.as_saved(images), labels)

    start = time.perf_counter()
    sample_and_score("ddim", 50)
    ddim_total = time.perf_counter() - start
    score_time = timed(lambda: iclevr_accuracy.accuracy(evaluator, iclevr_accuracy.as_saved(xt.clamp(-1, 1)), labels),
                       args.repeats)
    short = diffusion.make_schedule(args.ddpm_steps_timed, cfg.beta_schedule)   # same network, fewer steps
    start = time.perf_counter()
    diffusion.sample(model, short, len(labels), shape, sampler="ddpm", labels=labels, guidance_scale=w, progress=False)
    per_step = (time.perf_counter() - start) / args.ddpm_steps_timed
    ddpm_total = per_step * cfg.num_train_timesteps + score_time
    how = ("measured end to end" if args.ddpm_steps_timed == cfg.num_train_timesteps else
           f"EXTRAPOLATED: {per_step:.3f} s/step over {args.ddpm_steps_timed} steps × {cfg.num_train_timesteps}")
    write_result("iclevr_guidance", f"""
U-Net {cfg.block_out_channels}, {models.count_parameters(model) / 1e6:.2f} M parameters; B = {len(labels)} test labels, w = {w}.

| | time |
|---|---|
| one guided step, one batched forward of 2B (median of {args.repeats}) | {batched * 1000:.1f} ms |
| one guided step, two separate forwards of B | {separate * 1000:.1f} ms (batched / separate = {batched / separate:.2f}; max difference {difference:.1e}) |
| 32 test images + course evaluation, DDIM 50 steps | {ddim_total:.1f} s, measured end to end |
| the same, DDPM {cfg.num_train_timesteps} steps | {ddpm_total:.1f} s, {how} ({ddpm_total / ddim_total:.0f}× DDIM) |
| the course evaluator alone, 32 images | {score_time:.2f} s |
""")


if __name__ == "__main__":
    main()
