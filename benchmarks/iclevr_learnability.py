"""Does conditioning work? A CPU-sized check of the iCLEVR pipeline on procedurally drawn scenes.

1. Draw scenes of 1–3 colored flat shapes (24 objects: 8 colors × 3 shapes) with
   ``utils.fixtures.draw_scene`` at 32×32 — the same generator as the smoke fixture.
2. Train a classifier on them: a small CNN with the course evaluator's sigmoid head (the
   course's ResNet-18 trains ≈ 10× slower on a CPU and is not needed for flat shapes).
3. Train a small conditional DDPM (``models.build_model``, condition dropout 0.1) with the
   bundle's training loop for a fixed number of steps.
4. Sample images for unseen random label lists at w = 0, 1, 2, 4 (classifier-free guidance,
   ε = ε_uncond + w · (ε_cond − ε_uncond); w = 0 unconditional, w = 1 conditional) and score
   them with ``iclevr_accuracy.accuracy`` — the course protocol.

Conditioning works when accuracy rises from w = 0 (chance level for this label mix) to w ≥ 1.

    .venv/bin/python benchmarks/iclevr_learnability.py              # 8,000 steps + DDPM-1000 sampling: ≈ 40 min on 2 CPU cores
    .venv/bin/python benchmarks/iclevr_learnability.py --steps 300  # a quicker, weaker check

Results, with machine and date: benchmarks/results/iclevr_learnability.md, and grids of samples
(one row per w, the same 8 label lists in each) in results/iclevr_learnability_grid_{ddim,ddpm}.png.
Chance is ≈ 0.083 (k of 24 objects guessed at random). The absolute numbers of a minutes-long CPU
run say nothing about a full GPU run; the rise with w is what shows that conditioning works.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _common import RESULTS, train_timed, write_result

from utils import config, diffusion, iclevr_accuracy, models, viz
from utils.data import BatchLoader, ImageSet, encode_labels, object_names
from utils.fixtures import draw_scene, random_label_lists

SIZE = 32


def draw_set(n: int, seed: int) -> ImageSet:
    """n random scenes: uint8 images (n, 3, 32, 32) and multi-hot labels (n, 24)."""
    rng = random.Random(seed)
    lists = random_label_lists(n, rng)
    images = np.stack([np.asarray(draw_scene(names, rng, width=SIZE, height=SIZE).convert("RGB")) for names in lists])
    objects = {name: i for i, name in enumerate(object_names())}
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), encode_labels(lists, objects),
                    f"{n} drawn scenes")


def small_classifier(num_labels: int = 24) -> nn.Module:
    """(B, 3, 32, 32) in [-1, 1] → (B, 24) scores in (0, 1), like the course evaluator's head."""
    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 32), block(32, 64), block(64, 64), nn.Flatten(),        # (B, 64·4·4)
                         nn.Linear(64 * 16, num_labels), nn.Sigmoid())


def train_classifier(train: ImageSet, steps: int, seed: int = 0) -> nn.Module:
    """``small_classifier`` trained with binary cross-entropy on drawn scenes."""
    torch.manual_seed(seed)
    net = small_classifier()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loader = BatchLoader(train, 64, seed=seed)
    batches = (b for epoch in range(10**6) for b in loader.epoch(epoch))
    net.train()
    for _ in range(steps):
        batch = next(batches)
        loss = F.binary_cross_entropy(net(batch["x0"]), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def diffusion_config(workdir: str, steps: int, budget_minutes: float, batch_size: int):
    """A small 32×32 conditional U-Net and a short, high-learning-rate schedule."""
    return config.make_config(
        "iclevr", "full", image_size=SIZE, block_out_channels=(16, 32, 64), attention_levels=(False, False, True),
        layers_per_block=1, norm_num_groups=8, batch_size=batch_size, max_steps=steps, learning_rate=2e-3,
        warmup_steps=50, ema_decay=0.99, mixed_precision="no", log_every=50, checkpoint_every=10**9,
        preview_every=0, time_budget_minutes=budget_minutes, workdir=workdir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="diffusion training steps (the fixed budget)")
    parser.add_argument("--budget-minutes", type=float, default=45.0, help="stop training earlier than --steps on a slow CPU")
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=96, help="images generated per guidance scale")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps per image (DDPM always takes 1000)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ddpm-iclevr-learnability"),
                        help="checkpoint folder: a second run with the same settings only samples again")
    args = parser.parse_args()
    config.seed_everything(0)

    start = time.perf_counter()
    train, held_out = draw_set(6000, seed=1), draw_set(args.num_samples, seed=2)
    classifier = train_classifier(train, args.classifier_steps)
    real = iclevr_accuracy.accuracy(classifier, iclevr_accuracy.as_saved(held_out.images.float() / 127.5 - 1),
                                    held_out.labels)
    print(f"classifier: {args.classifier_steps} steps in {time.perf_counter() - start:.0f} s; "
          f"course accuracy on {len(held_out)} held-out drawn scenes: {real.value:.3f} ({real.hits}/{real.total})")

    cfg = diffusion_config(args.workdir, args.steps, args.budget_minutes, args.batch_size)
    schedule = diffusion.schedule_from_config(cfg)
    model = models.build_model(cfg)
    result, train_s = train_timed(model, diffusion.make_loss_fn(schedule, conditional=True, cond_drop_prob=0.1),
                                  BatchLoader(train, cfg.batch_size, seed=cfg.seed), cfg, progress=False)
    print(f"diffusion model: {models.count_parameters(model) / 1e6:.2f} M parameters, {result.step} steps "
          f"in {train_s:.0f} s, final loss ≈ {np.mean(result.loss_history[-50:]):.4f}")

    scales = [0.0, 1.0, 2.0, 4.0]
    shown = held_out.labels[:8]   # grid: one row per w, the same 8 label lists and the same noise
    sweeps, seconds = {}, {}
    for sampler, steps in (("ddim", args.sample_steps), ("ddpm", cfg.num_train_timesteps)):
        start = time.perf_counter()
        sweeps[sampler] = iclevr_accuracy.guidance_sweep(result.ema_model, schedule, classifier,
                                                         {"drawn": held_out.labels}, scales, image_shape=(3, SIZE, SIZE), sampler=sampler,
                                                         num_inference_steps=steps, progress=False)
        seconds[sampler] = time.perf_counter() - start
        print(f"{sampler} {steps} steps, {seconds[sampler]:.0f} s\n{iclevr_accuracy.format_sweep(sweeps[sampler])}")
        grid = torch.cat([diffusion.sample(result.ema_model, schedule, len(shown), (3, SIZE, SIZE), sampler=sampler,
                                           num_inference_steps=steps, labels=shown, guidance_scale=w,
                                           progress=False).images for w in scales])
        viz.save_grid(grid, RESULTS / f"iclevr_learnability_grid_{sampler}.png", nrow=8, expected=None)
    real_row = held_out.images[:8].float() / 127.5 - 1
    viz.save_grid(real_row, RESULTS / "iclevr_learnability_real.png", nrow=8, expected=None)
    name_of = object_names()  # index in the multi-hot vector → name
    shown_names = [", ".join(name_of[j] for j in row.nonzero().flatten().tolist()) for row in shown]

    table = "\n".join(f"| w = {a['guidance_scale']:g} | {a['drawn']:.3f} | {b['drawn']:.3f} |"
                      for a, b in zip(sweeps["ddim"], sweeps["ddpm"]))
    write_result("iclevr_learnability", f"""
Drawn 32×32 scenes of 1–3 flat shapes (24 objects). Classifier: a small CNN with the evaluator's
sigmoid head, {args.classifier_steps} steps; course accuracy on {len(held_out)} held-out real drawn scenes
**{real.value:.3f}** ({real.hits}/{real.total}).

Conditional DDPM: {models.count_parameters(model) / 1e6:.2f} M parameters, condition dropout 0.1,
{result.step} steps of batch {cfg.batch_size} in {train_s:.0f} s; final loss ≈
{np.mean(result.loss_history[-50:]):.4f}. For each w, one image per label list of the same
{len(held_out)} held-out lists ({real.total} objects), scored with `iclevr_accuracy.accuracy` (course
protocol). Chance ≈ 0.083.

| guidance scale | course accuracy, DDIM {args.sample_steps} steps ({seconds["ddim"]:.0f} s) | course accuracy, DDPM 1000 steps ({seconds["ddpm"]:.0f} s) |
|---|---|---|
{table}

Grids `results/iclevr_learnability_grid_ddim.png`, `results/iclevr_learnability_grid_ddpm.png`: rows
w = {", ".join(f"{w:g}" for w in scales)}; columns the label lists {" | ".join(shown_names)}. The real
drawn scenes for those lists: `results/iclevr_learnability_real.png`.
""")


if __name__ == "__main__":
    main()
