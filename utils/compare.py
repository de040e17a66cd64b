"""Comparing trained models: loading a notebook's trained weights, timing a training step, scoring a
generator's FID/KID, and the nearest training image of each sample (the memorisation check).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .data import to_model
from .fid import FIDResult, extract_features, fid_kid, sample_in_batches
from .io import previous_path


# ----------------------------------------------------------------------------- memorisation check
@torch.inference_mode()
def nearest_neighbours(generated: torch.Tensor, train: torch.Tensor, *, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each generated image, its nearest training image by L2 distance in pixel space.

    generated: (N, C, H, W) in [-1, 1]; train: uint8 (M, C, H, W). Returns (distances (N,), indices (N,)),
    distances in [-1, 1] units, on the CPU. A distance near 0 means the model reproduced a training image.
    Runs where ``generated`` is (the training images are moved there chunk by chunk).
    """
    g = generated.float().flatten(1)                                   # (N, D)
    best_d = torch.full((len(g),), float("inf"), device=g.device)
    best_i = torch.zeros(len(g), dtype=torch.long, device=g.device)
    for start in range(0, len(train), chunk):
        t = to_model(train[start:start + chunk].to(g.device)).float().flatten(1)   # (m, D) in [-1, 1]
        d, i = torch.cdist(g, t).min(1)                                # (N,)
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return best_d.cpu(), best_i.cpu()


# ----------------------------------------------------------------------------- comparing trained models
def load_trained(model: nn.Module, cfg, notebook: str) -> nn.Module:
    """``model`` with the EMA weights that notebook ``notebook`` saved for ``cfg`` (its checkpoint_dir).

    No checkpoint there: a ``training.CheckpointError`` that names the notebook to run first, the run
    (``cfg.run_name``) and folder it looked for, and the runs that do have a checkpoint.
    """
    from . import training

    path = training.checkpoint_path(cfg.checkpoint_dir)
    if not path.exists() and not previous_path(path).exists():
        run = f"run_name={cfg.run_name!r}" + ("" if cfg.run_name else " (the hand-in run)")
        found = ", ".join(repr(r) for r in trained_runs(cfg)) or "none"
        raise training.CheckpointError(
            f"No trained {cfg.name} model for {run}: no checkpoint at {path}. Run notebook {notebook} first with "
            f"that run_name and the same work dir ({cfg.workdir}), or compare a run that exists (with a checkpoint "
            f"there: {found}); then run this cell again.")
    return training.load_ema_model(model, cfg, path)


def seconds_per_step(model: nn.Module, loss_fn, batch: dict, cfg, *, repeats: int = 3) -> float:
    """Median time of one training iteration of a copy of ``model``, run as ``training.train`` runs it for ``cfg``.

    The same single-process Accelerate setup in ``cfg.mixed_precision`` (``training_precision`` names it),
    an AdamW over ``training.loop_parameters`` only (a DCGAN's G: D takes its own step inside ``loss_fn``), and
    the loop's own ``training.optimization_step`` (backward, clipping, AdamW, EMA). Every model timed this way on one device
    gives iterations × this = a fair training-time estimate. ``torch_compile`` is left out (its first
    steps compile).
    """
    import copy
    import statistics
    import time

    from diffusers.training_utils import EMAModel

    from . import training

    accelerator = training.notebook_accelerator(cfg.mixed_precision)
    twin = copy.deepcopy(model).to(accelerator.device).train().requires_grad_(True)   # an EMA twin comes frozen
    if getattr(cfg, "channels_last", False):
        twin = twin.to(memory_format=torch.channels_last)
    trained = list(training.loop_parameters(twin))
    optimizer = torch.optim.AdamW(trained, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=getattr(cfg, "adam_betas", (0.9, 0.999)))
    ema = EMAModel(twin.parameters(), decay=cfg.ema_decay, foreach=True)
    twin, optimizer = accelerator.prepare(twin, optimizer)
    times = []
    for _ in range(repeats + 1):                                      # the first one warms up
        start = time.perf_counter()
        loss = training.optimization_step(loss_fn, twin, batch, accelerator, optimizer, trained, cfg.grad_clip, ema,
                                          accelerator.unwrap_model(twin))
        if loss.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def training_precision(cfg) -> str:
    """The precision ``training.train`` trains ``cfg`` in on this machine: "fp16", "bf16" or "fp32"."""
    from .devices import pick_device, resolve_mixed_precision

    precision = resolve_mixed_precision(cfg.mixed_precision, pick_device())
    return "fp32" if precision == "no" else precision


def trained_runs(cfg) -> list[str]:
    """The run_names of ``cfg.name``'s runs with a checkpoint beside ``cfg.checkpoint_dir`` ("" = the hand-in run)."""
    from . import training

    folder = Path(cfg.checkpoint_dir).parent
    return sorted(p.name[len(cfg.name) + 1:] for p in folder.glob(f"{cfg.name}*")
                  if (p.name == cfg.name or p.name.startswith(f"{cfg.name}-"))
                  and training.checkpoint_path(p).exists())


def sampler_steps(sampler: str, num_inference_steps: int, num_train_timesteps: int) -> int:
    """Network evaluations per image of a DDPM sampler: "ddpm" (Algorithm 2) takes all T steps,
    the fast ones (ddim, dpm, sde-dpm) ``num_inference_steps``."""
    return num_train_timesteps if sampler == "ddpm" else num_inference_steps


def score_generator(sample_fn, real: torch.Tensor, extractor: nn.Module, cmp, *, num: int | None = None,
                    desc: str = "sampling", progress: bool = True) -> tuple[FIDResult, torch.Tensor]:
    """FID/KID of ``num`` images from ``sample_fn(n, seed)`` against the first ``num`` of the real features
    ``real`` (N, D) (default: as many as there are), by the protocol of ``cmp`` (a ``CompareConfig``).

    Returns the result and the generated images' features (num, D), so a smaller count can be rescored.
    """
    num = len(real) if num is None else num
    images = sample_in_batches(sample_fn, num, cmp.fid_batch_size, seed=cmp.seed, desc=desc, progress=progress)
    fake = extract_features(images, extractor, batch_size=cmp.fid_batch_size, progress=progress)
    return fid_kid(real[:num], fake, kid_subset_size=cmp.kid_subset_size, kid_subsets=cmp.kid_subsets,
                   seed=cmp.seed), fake


def format_fid(rows: list[dict]) -> str:
    """FID/KID rows (data, model, sampler, steps and a ``FIDResult``'s fields) as a fixed-width table."""
    lines = [f"{'data':6s} {'model':6s} {'images from':18s} {'N':>6s} {'FID':>9s} {'KID × 1000':>16s}"]
    for r in rows:
        made_by = f"{r['sampler']}, {r['steps']} step" + ("s" if r["steps"] != 1 else "")
        lines.append(f"{r['data']:6s} {r['model']:6s} {made_by:18s} {r['num_fake']:6d} {r['fid']:9.2f} "
                     f"{r['kid_mean'] * 1e3:8.2f} ± {r['kid_std'] * 1e3:5.2f}")
    return "\n".join(lines)
