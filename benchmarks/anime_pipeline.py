"""Anime Faces speed on this machine, and the T4 estimates for the 64×64 preset.

Measured, same run: images/s of the cached uint8 tensor (``data.BatchLoader``, flips on the
tensor) versus decoding the same PNGs every epoch with torchvision ``ImageFolder`` + ``DataLoader``;
training iterations/s of the full 64×64 preset with ``training.train``.
Estimated (no T4 here, marked as such): GPU memory at the preset's batch size in fp16, from the
activations autograd saves (counted under bf16 autocast on the CPU, 2 bytes each like fp16) plus
weights, gradients, AdamW moments and the EMA copy; time per epoch from the FLOP count and an
assumed sustained T4 fp16 throughput.

Run: python benchmarks/anime_pipeline.py [--quick] [--threads N]   (→ benchmarks/results/anime_pipeline.md)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import write_result

from utils import config, data, diffusion, fixtures, models, training

COURSE_FACES = 21_376                  # images per epoch in the course copy
T4_TFLOPS = (10.0, 15.0)               # assumed sustained fp16 throughput of a T4 on this U-Net (peak 65)


def cached_images_per_second(faces: data.ImageSet, batch_size: int, epochs: int) -> float:
    """Images/s of ``BatchLoader``: index the uint8 tensor, convert to [-1, 1], flip — on the CPU here."""
    loader = data.BatchLoader(faces, batch_size, hflip=True)
    start, seen = time.perf_counter(), 0
    for epoch in range(epochs):
        for batch in loader.epoch(epoch):
            seen += len(batch["x0"])
    return seen / (time.perf_counter() - start)


def imagefolder_images_per_second(folder: Path, batch_size: int, epochs: int, workers: int) -> float:
    """Images/s of torchvision ``ImageFolder`` + ``DataLoader`` decoding (and resizing) the PNGs every epoch."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize((64, 64)), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.5] * 3)])   # → [-1, 1], like to_model
    loader = DataLoader(datasets.ImageFolder(str(folder), transform=transform), batch_size=batch_size,
                        shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    next(iter(loader))  # start the workers outside the timing
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def training_iterations_per_second(cfg, faces: data.ImageSet, steps: int) -> float:
    """Iterations/s of ``training.train`` on the preset, after one warm-up iteration."""
    cfg = config.make_config("anime", "full", workdir=cfg.workdir, max_steps=steps + 1, log_every=1,
                             checkpoint_every=10_000, resume=False, batch_size=cfg.batch_size)
    loader = data.BatchLoader(faces, cfg.batch_size, hflip=True)
    stamps = []
    training.train(models.build_model(cfg), diffusion.make_loss_fn(diffusion.schedule_from_config(cfg)),
                   loader, cfg, on_log=lambda p: stamps.append((p.step, time.perf_counter())), progress=False)
    (s0, t0), (s1, t1) = stamps[0], stamps[-1]
    return (s1 - s0) / (t1 - t0)


def training_flops_per_image(model, cfg) -> float:
    """≈ 3 × forward FLOPs (forward + backward) for one 64×64 image."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, cfg.channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, torch.tensor([500]))
    return 3 * counter.get_total_flops()


def fp16_memory_gb(model, cfg, probe_batch: int = 4) -> float:
    """Estimated training memory at cfg.batch_size in fp16: saved activations (scaled from ``probe_batch``)
    + 20 bytes per parameter (fp32 weights, gradients, two AdamW moments, EMA)."""
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(probe_batch, cfg.channels, cfg.image_size, cfg.image_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, torch.randint(0, 1000, (probe_batch,))).sample.float().pow(2).mean()
    activations = sum(saved.values()) * cfg.batch_size / probe_batch
    states = 20 * models.count_parameters(model)
    return (activations + states) / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer images and steps (a smoke check of this script)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_images, epochs, steps = (256, 1, 1) if args.quick else (2048, 2, 2)
    workers = 2  # a Colab runtime has 2 CPU cores

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.make_config("anime", "full", workdir=tmp)
        folder = fixtures.write_anime_fixture(Path(tmp) / "data", "course", n=n_images)
        faces = data.load_anime(Path(tmp) / "data", Path(tmp) / "cache", progress=False)
        cached = cached_images_per_second(faces, cfg.batch_size, epochs)
        decoded = imagefolder_images_per_second(folder.parent, cfg.batch_size, epochs, workers)
        its = training_iterations_per_second(cfg, faces, steps)

    model = models.build_model(cfg)
    params = models.count_parameters(model)
    flops = training_flops_per_image(model, cfg)
    memory = fp16_memory_gb(model, cfg)
    epoch_minutes = [COURSE_FACES * flops / (tf * 1e12) / 60 for tf in reversed(T4_TFLOPS)]

    write_result("anime_pipeline", f"""
| measured on this machine | value |
|---|---|
| cached uint8 tensor, `BatchLoader` (batch {cfg.batch_size}, flips on the tensor) | {cached:,.0f} images/s |
| PNG files, torchvision `ImageFolder` + `DataLoader` ({workers} workers, same flips) | {decoded:,.0f} images/s |
| speed-up of the cache | {cached / decoded:.0f}× |
| training, full 64×64 preset ({params / 1e6:.1f} M parameters, batch {cfg.batch_size}, fp32 CPU) | {its:.3f} it/s ({1 / its:.1f} s/it) |

({n_images:,} synthetic 64×64 PNG faces from `write_anime_fixture`, {epochs} epoch(s) each; {steps} timed training step(s).
These PNGs are ≈ 0.6 kB; real faces are ≈ 10 kB and decode slower, so the real speed-up is larger.)

| estimate for a Colab T4, fp16, batch {cfg.batch_size} (not measured) | value |
|---|---|
| parameters | {params / 1e6:.2f} M |
| training FLOPs per image (3 × forward) | {flops / 1e9:.0f} GFLOP |
| GPU memory (saved activations + weights, grads, AdamW, EMA) | ≈ {memory:.1f} GB |
| time per epoch ({COURSE_FACES:,} faces, at an assumed {T4_TFLOPS[0]:.0f}–{T4_TFLOPS[1]:.0f} TFLOPS sustained) | ≈ {epoch_minutes[0]:.1f}–{epoch_minutes[1]:.1f} min |
""")


if __name__ == "__main__":
    main()
