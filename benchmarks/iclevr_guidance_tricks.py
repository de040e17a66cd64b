"""Guidance tricks that need no retraining, screened on the iCLEVR proxy's trained models.

``iclevr_learnability.py`` leaves its trained conditional U-Nets in its --workdir. This script loads
one of them (default: the "after" recipe), trains the same drawn-scene classifier, and scores
variants of classifier-free guidance with the same sampler, noise and 256 held-out label lists:

- plain CFG:        ε = ε_u + w · (ε_c − ε_u)
- CFG rescale φ (Lin et al. 2024, §3.4; diffusers ``rescale_noise_cfg``): the guided ε is scaled to the
  per-image standard deviation of ε_c, then mixed back: ε ← φ · ε·std(ε_c)/std(ε) + (1 − φ) · ε
- guidance interval (Kynkäänniemi et al. 2024): guidance only where σ_lo < σ_t ≤ σ_hi, σ_t = √((1−ᾱ_t)/ᾱ_t);
  elsewhere plain conditional ε_c (w = 1). Their interval (0.28, 5.42] was tuned for EDM2's latents
  (σ_data = 0.5); applied to 32×32 pixels here as it is, a heuristic starting point, not a tuned one.

Each row has the course accuracy with a rough 95 % Wilson interval over objects, and its paired difference
from the first row (same lists, same starting noise x_T; with another step count the solver's own noise
differs) with a 95 % bootstrap interval over label lists: the sharper test of "does it help".

    .venv/bin/python benchmarks/iclevr_learnability.py          # first: trains the models (≈ 2 h)
    .venv/bin/python benchmarks/iclevr_guidance_tricks.py       # then: ≈ 15 min on 2 cores

Results, with machine and date: benchmarks/results/iclevr_guidance_tricks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import run_in_workers, wilson, write_result
from iclevr_learnability import RECIPES, SIZE, diffusion_config, draw_set, parse_sampler, small_classifier, train_classifier

from utils import diffusion, iclevr_accuracy, models, training

# name → (guidance scale w, CFG rescale φ, guidance interval in σ or None, sampler)
VARIANTS: dict[str, tuple[float, float, tuple[float, float] | None, str]] = {
    "w2": (2.0, 0.0, None, "sde-dpm-50"),
    "w3": (3.0, 0.0, None, "sde-dpm-50"),
    "rescale0.7-w2": (2.0, 0.7, None, "sde-dpm-50"),
    "rescale0.7-w4": (4.0, 0.7, None, "sde-dpm-50"),
    "rescale0.7-w6": (6.0, 0.7, None, "sde-dpm-50"),
    "interval-w2": (2.0, 0.0, (0.28, 5.42), "sde-dpm-50"),        # Kynkäänniemi et al.'s EDM2 interval
    "interval-w4": (4.0, 0.0, (0.28, 5.42), "sde-dpm-50"),
    "low-off-w4": (4.0, 0.0, (0.28, float("inf")), "sde-dpm-50"),  # no guidance at low noise only
    "high-off-w4": (4.0, 0.0, (0.0, 5.42), "sde-dpm-50"),          # no guidance at high noise only
    "w2-100steps": (2.0, 0.0, None, "sde-dpm-100"),
}


class TimestepSpy(nn.Module):
    """The model, remembering the timestep of its last call (a guidance mix only sees the two ε)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.t = inner, None

    def forward(self, x, t, *args, **kwargs):
        self.t = t
        return self.inner(x, t, *args, **kwargs)


def make_mix(spy: TimestepSpy, schedule: diffusion.NoiseSchedule, rescale: float, interval):
    """A ``guidance_mix`` with CFG rescale φ and/or a guidance interval in σ."""
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    sigma = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt()   # (T,)

    def mix(eps_cond, eps_uncond, w):
        if interval is not None:
            s = float(sigma[int(spy.t[0])])
            if not interval[0] < s <= interval[1]:
                return eps_cond.float()
        eps = diffusion.mix_guidance(eps_cond, eps_uncond, w)
        return rescale_noise_cfg(eps, eps_cond.float(), rescale) if rescale > 0 else eps
    return mix


def score_variant(job: dict) -> dict:
    """One variant: sample the held-out lists and score each image (per-list hits kept for pairing)."""
    torch.set_num_threads(1)
    args, name = job["args"], job["variant"]
    w, rescale, interval, spec = VARIANTS[name]
    held_out = draw_set(args["lists"], seed=2)
    classifier = small_classifier()
    classifier.load_state_dict(job["classifier"])
    classifier.eval()
    cfg = diffusion_config(args["workdir"], args["steps"], 90.0, args["batch_size"], run_name=args["recipe"],
                           **RECIPES[args["recipe"]])
    schedule = diffusion.schedule_from_config(cfg)
    model = training.load_ema_model(models.build_model(cfg), cfg)
    spy = TimestepSpy(model)
    sampler, steps = parse_sampler(spec)
    start = time.perf_counter()
    images = diffusion.sample(spy, schedule, len(held_out), (3, SIZE, SIZE), sampler=sampler, num_inference_steps=steps,
                              labels=held_out.labels, guidance_scale=w, seed=0, progress=False,
                              guidance_mix=make_mix(spy, schedule, rescale, interval)).images
    saved = iclevr_accuracy.as_saved(images)
    hits = [iclevr_accuracy.accuracy(classifier, saved[i:i + 1], held_out.labels[i:i + 1]).hits
            for i in range(len(held_out))]
    seconds = time.perf_counter() - start
    print(f"{name}: {sum(hits) / int(held_out.labels.sum()):.3f} ({seconds:.0f} s)", flush=True)
    return dict(variant=name, hits=hits, seconds=seconds)


def paired_interval(hits: np.ndarray, ref: np.ndarray, objects: np.ndarray, draws: int = 4000) -> tuple[float, float, float]:
    """Accuracy difference (hits − ref) over all objects, and its 95 % bootstrap interval over label lists."""
    rng = np.random.default_rng(0)
    diff = (hits.sum() - ref.sum()) / objects.sum()
    idx = rng.integers(0, len(hits), size=(draws, len(hits)))
    boot = (hits[idx].sum(1) - ref[idx].sum(1)) / objects[idx].sum(1)
    return diff, *np.percentile(boot, [2.5, 97.5])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="after", help=f"the trained recipe to load, from {sorted(RECIPES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from VARIANTS; the first is the reference")
    parser.add_argument("--steps", type=int, default=8000, help="the training steps the recipe's checkpoint must have")
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--lists", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--name", default="iclevr_guidance_tricks")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ddpm-iclevr-learnability"),
                        help="iclevr_learnability.py's --workdir, holding the trained checkpoints")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if args.recipe not in RECIPES:
        parser.error(f"unknown recipe {args.recipe!r}; known: {sorted(RECIPES)}")
    cfg = diffusion_config(args.workdir, args.steps, 90.0, args.batch_size, run_name=args.recipe, **RECIPES[args.recipe])
    checkpoint = training.checkpoint_path(cfg.checkpoint_dir)
    found = training.load_checkpoint(checkpoint, cfg)["step"] if checkpoint.exists() else None
    if found != args.steps:
        parser.error(f"recipe {args.recipe!r} needs a checkpoint at step {args.steps} in {checkpoint}; found "
                     f"{'none' if found is None else f'step {found}'}. Run `python benchmarks/iclevr_learnability.py "
                     f"--recipes {args.recipe} --steps {args.steps} --workdir {args.workdir}` first (it trains it), "
                     "or pass the --steps it was trained for.")

    torch.manual_seed(0)
    train, held_out = draw_set(6000, seed=1), draw_set(args.lists, seed=2)
    classifier = train_classifier(train, args.classifier_steps)
    real = iclevr_accuracy.accuracy(classifier, iclevr_accuracy.as_saved(held_out.images.float() / 127.5 - 1),
                                    held_out.labels)
    job_args = dict(workdir=args.workdir, steps=args.steps, batch_size=args.batch_size, lists=args.lists, recipe=args.recipe)
    jobs = [dict(variant=v, args=job_args, classifier=classifier.state_dict()) for v in variants]
    results, wall = run_in_workers(score_variant, jobs, args.jobs)

    objects = held_out.labels.sum(1).numpy()
    ref = np.array(results[0]["hits"])
    table = []
    for res in results:
        hits = np.array(res["hits"])
        value = hits.sum() / objects.sum()
        lo, hi = wilson(value, int(objects.sum()))
        diff, dlo, dhi = paired_interval(hits, ref, objects)
        w, rescale, interval, spec = VARIANTS[res["variant"]]
        what = (f"w = {w:g}" + (f", rescale φ = {rescale:g}" if rescale else "")
                + (f", guidance only for σ_t in ({interval[0]:g}, {interval[1]:g}]" if interval else ""))
        table.append(f"| {res['variant']} | {what} | {spec} | **{value:.3f}** ({lo:.3f}–{hi:.3f}) | {diff:+.3f} ({dlo:+.3f} … {dhi:+.3f}) "
                     f"| {res['seconds']:.0f} s |")
    write_result(args.name, f"""
`python benchmarks/iclevr_guidance_tricks.py --recipe {args.recipe} --workdir {args.workdir}`: the iCLEVR proxy's "{args.recipe}" model
({json_overrides(args.recipe)}, {args.steps} steps, trained by `iclevr_learnability.py`), {len(held_out)} held-out
label lists ({int(objects.sum())} objects), one image each from the same noise (seed 0). Classifier: course accuracy
{real.value:.3f} on the real drawn scenes. {len(jobs)} variants in {args.jobs} one-thread processes, {wall / 60:.1f} min.

σ_t = √((1−ᾱ_t)/ᾱ_t); an interval row guides only where σ_lo < σ_t ≤ σ_hi (elsewhere w = 1). Rescale φ: diffusers
`rescale_noise_cfg`. Difference: paired with the first row, 95 % bootstrap interval over label lists.

| variant | guidance | sampler | course accuracy (95 % Wilson) | vs first row (95 % paired bootstrap) | sampling time |
|---|---|---|---|---|---|
{chr(10).join(table)}
""")


def json_overrides(recipe: str) -> str:
    return ", ".join(f"{k} = {v:g}" for k, v in RECIPES[recipe].items())


if __name__ == "__main__":
    main()
