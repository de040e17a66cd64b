"""Does conditioning work? A CPU-sized check of the iCLEVR pipeline on procedurally drawn scenes.

1. Draw scenes of 1–3 colored flat shapes (24 objects: 8 colors × 3 shapes) with
   ``utils.data.iclevr.draw_scene`` at 32×32 — the same generator as the smoke fixture.
2. Train a classifier on them: a small CNN with the course evaluator's sigmoid head (the
   course's ResNet-18 trains ≈ 10× slower on a CPU and is not needed for flat shapes).
3. Train a small conditional DDPM (``models.build_model``, condition dropout 0.1) with the
   bundle's training loop for a fixed number of steps.
4. Sample images for unseen random label lists at w = 0, 1, 2, 4 (classifier-free guidance,
   ε = ε_uncond + w · (ε_cond − ε_uncond); w = 0 unconditional, w = 1 conditional) and score
   them with ``evaluate.accuracy`` — the course protocol.

Conditioning works when accuracy rises from w = 0 (chance level for this label mix) to w ≥ 1.

    .venv/bin/python benchmarks/iclevr_learnability.py            # ≈ 10 min on 2 CPU cores
    .venv/bin/python benchmarks/iclevr_learnability.py --steps 300  # a quicker, weaker check

Measured (2 CPU cores shared with other jobs, torch 2.14). Classifier: 0.963 (181/188) course accuracy on
96 held-out drawn scenes. Generated images for the same 96 label lists (188 objects), course accuracy:

    budget                                     w = 0    w = 1    w = 2    w = 4
    default: 1200 steps, batch 32, 334 s       0.080    0.101    0.117    0.149
    --steps 2400 --budget-minutes 9: 1855 st.  0.090    0.101    0.122    0.138

Chance is ≈ 0.083 (k of 24 objects guessed). Accuracy rises with w in both runs, so the label
reaches the samples and guidance amplifies it; but after a few CPU minutes a 0.7 M-parameter model
is far from drawing the requested objects reliably: the absolute numbers say nothing about a full GPU run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils import config, diffusion, evaluate, models, training
from utils.data import BatchLoader, ImageSet, encode_labels
from utils.data.iclevr import draw_scene, object_names, random_label_lists

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


def diffusion_config(workdir: str, steps: int, budget_minutes: float):
    """A small 32×32 conditional U-Net and a short, high-learning-rate schedule."""
    return config.make_config(
        "iclevr", "full", image_size=SIZE, block_out_channels=(16, 32, 64), attention_levels=(False, False, True),
        layers_per_block=1, norm_num_groups=8, batch_size=32, max_steps=steps, learning_rate=2e-3,
        warmup_steps=50, ema_decay=0.99, mixed_precision="no", log_every=50, checkpoint_every=10**9,
        preview_every=0, time_budget_minutes=budget_minutes, resume=False, workdir=workdir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200, help="diffusion training steps (the fixed budget)")
    parser.add_argument("--budget-minutes", type=float, default=6.0, help="stop training earlier than --steps on a slow CPU")
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--num-samples", type=int, default=96, help="images generated per guidance scale")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps per image")
    args = parser.parse_args()
    config.seed_everything(0)

    start = time.perf_counter()
    train, held_out = draw_set(6000, seed=1), draw_set(args.num_samples, seed=2)
    classifier = train_classifier(train, args.classifier_steps)
    real = evaluate.accuracy(classifier, evaluate.as_saved(held_out.images.float() / 127.5 - 1), held_out.labels)
    print(f"classifier: {args.classifier_steps} steps in {time.perf_counter() - start:.0f} s; "
          f"course accuracy on {len(held_out)} held-out drawn scenes: {real.value:.3f} ({real.hits}/{real.total})")

    with tempfile.TemporaryDirectory() as workdir:
        cfg = diffusion_config(workdir, args.steps, args.budget_minutes)
        schedule = diffusion.schedule_from_config(cfg)
        model = models.build_model(cfg)
        start = time.perf_counter()
        result = training.train(model, diffusion.make_loss_fn(schedule, conditional=True, cond_drop_prob=0.1),
                                BatchLoader(train, cfg.batch_size, seed=cfg.seed), cfg, progress=False)
    print(f"diffusion model: {models.count_parameters(model) / 1e6:.2f} M parameters, {result.step} steps "
          f"in {time.perf_counter() - start:.0f} s, final loss ≈ {np.mean(result.loss_history[-50:]):.4f}")

    start = time.perf_counter()
    rows = evaluate.guidance_sweep(result.ema_model, schedule, classifier, {"drawn": held_out.labels}, [0.0, 1.0, 2.0, 4.0],
                                   image_shape=(3, SIZE, SIZE), sampler="ddim", num_inference_steps=args.sample_steps,
                                   progress=False)
    print(f"sampling + scoring {len(rows)} × {args.num_samples} images (DDIM {args.sample_steps}) in "
          f"{time.perf_counter() - start:.0f} s\ncourse accuracy of generated images by guidance scale w "
          f"(0 = unconditional, 1 = conditional):")
    print(evaluate.format_sweep(rows))


if __name__ == "__main__":
    main()
