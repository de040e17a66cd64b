"""Does conditioning work, and which recipe and sampler work best? A CPU-sized check of the iCLEVR
pipeline on procedurally drawn scenes.

1. Draw scenes of 1–3 colored flat shapes (24 objects: 8 colors × 3 shapes) with
   ``utils.fixtures.draw_scene`` at 32×32 — the same generator as the smoke fixture.
2. Train a classifier on them: a small CNN with the course evaluator's sigmoid head (the
   course's ResNet-18 trains ≈ 10× slower on a CPU and is not needed for flat shapes).
3. Train a small conditional DDPM per recipe (``RECIPES``: ``models.build_model``, condition dropout
   0.1) with the bundle's training loop for a fixed number of steps, the recipes in parallel worker
   processes of one thread each.
4. For 256 unseen label lists, sample one image each at w = 0 … 4 (classifier-free guidance,
   ε = ε_uncond + w · (ε_cond − ε_uncond); w = 0 unconditional, w = 1 conditional) with the fast
   sweep samplers, then with the hand-in sampler (DDPM-1000) at the best w of the first sweep, and
   score them with ``iclevr_accuracy.accuracy`` — the course protocol.

Conditioning works when accuracy rises from w = 0 (chance level for this label mix) to w ≥ 1.

    .venv/bin/python benchmarks/iclevr_learnability.py            # after vs film-flip, 8,000 steps: ≈ 2 h on 2 CPU cores
    .venv/bin/python benchmarks/iclevr_learnability.py --steps 300 --lists 64 --recipes after  # a quick, weak check

Results, with machine and date: benchmarks/results/iclevr_learnability.md, and per recipe a grid of the
first 8 lists at the chosen w (one row per sampler), results/iclevr_learnability_<recipe>_grid_w<w>.png.
Chance is ≈ 0.083 (k of 24 objects guessed at random). The absolute numbers of a minutes-long CPU
run say nothing about a full GPU run; the rise with w, and the differences between recipes and samplers
at the same budget, are what they show.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _common import RESULTS, chosen_recipes, run_in_workers, train_timed, wilson, write_result

from utils import config, diffusion, guidance, iclevr_accuracy, models, viz
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


# Each recipe: overrides of ``diffusion_config``, whose U-Net has two channels per GroupNorm group at its top
# level like the full iCLEVR config (64 channels, 32 groups): a scaled-down replica of what students train.
# "before12" spells out the recipe before issue 12 (plain loss); "film-flip" is what issue 20 tried (FiLM and
# horizontal flips; it scored lower at 3,000 steps, see docs/benchmarks.md), "film" and "flip" each alone;
# "after" is the iCLEVR config as it is now (Min-SNR-5, the embedding added before the GroupNorm, no flips).
RECIPES: dict[str, dict] = {
    "before12": dict(min_snr_gamma=0.0, resnet_time_scale_shift="default", hflip=False),
    "film-flip": dict(resnet_time_scale_shift="scale_shift", hflip=True),
    "film": dict(resnet_time_scale_shift="scale_shift", hflip=False),
    "flip": dict(resnet_time_scale_shift="default", hflip=True),
    "after": {},
}


def diffusion_config(workdir: str, steps: int, budget_minutes: float, batch_size: int, run_name: str = "", **overrides):
    """A small 32×32 conditional U-Net and a short, high-learning-rate schedule."""
    values = dict(image_size=SIZE, block_out_channels=(16, 32, 64), attention_levels=(False, False, True),
                  layers_per_block=1, norm_num_groups=8, batch_size=batch_size, max_steps=steps, learning_rate=2e-3,
                  warmup_steps=50, ema_decay=0.99, mixed_precision="no", log_every=50, checkpoint_every=10**9,
                  preview_every=0, time_budget_minutes=budget_minutes, workdir=workdir, run_name=run_name)
    return config.make_config("iclevr", "full", **{**values, **overrides})


def parse_sampler(spec: str) -> tuple[str, int]:
    """"ddpm-1000" → ("ddpm", 1000); "dpm-25" → ("dpm", 25)."""
    name, steps = spec.rsplit("-", 1)
    return name, int(steps)


def run_recipe(job: dict) -> dict:
    """Train one recipe (one thread); sweep w with the fast sampler(s), then DDPM-1000 at the best w."""
    torch.set_num_threads(1)
    args, name = job["args"], job["recipe"]
    config.seed_everything(0)
    train, held_out = draw_set(6000, seed=1), draw_set(args["lists"], seed=2)
    classifier = small_classifier()
    classifier.load_state_dict(job["classifier"])
    classifier.eval()
    cfg = diffusion_config(args["workdir"], args["steps"], args["budget_minutes"], args["batch_size"], run_name=name,
                           **RECIPES[name])
    schedule = diffusion.schedule_from_config(cfg)
    model = models.build_model(cfg)
    loss_fn = diffusion.make_loss_fn(schedule, conditional=True, cond_drop_prob=cfg.cond_drop_prob,
                                     min_snr_gamma=cfg.min_snr_gamma)
    loader = BatchLoader(train, cfg.batch_size, hflip=cfg.hflip, seed=cfg.seed)
    result, train_s = train_timed(model, loss_fn, loader, cfg, progress=False)
    sets = {"drawn": held_out.labels}

    def score(spec: str, w: float) -> dict:
        sampler, steps = parse_sampler(spec)
        start = time.perf_counter()
        run = guidance.sample_and_score(result.ema_model, schedule, classifier, sets, w, image_shape=(3, SIZE, SIZE),
                                               sampler=sampler, num_inference_steps=steps, progress=False)
        acc = run.scores["drawn"]
        print(f"[{name}] {spec} w = {w:g}: {acc.value:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
        grid = run.samples["drawn"].images[:8]
        return dict(sampler=spec, w=w, value=acc.value, hits=acc.hits, total=acc.total,
                    seconds=time.perf_counter() - start, grid=grid)

    rows = [score(spec, w) for spec in args["sweep_samplers"] for w in args["scales"]]
    first = [r for r in rows if r["sampler"] == args["sweep_samplers"][0]]
    best_w = max(sorted(first, key=lambda r: r["w"]), key=lambda r: r["value"])["w"]
    rows += [score(spec, best_w) for spec in args["at_best"]
             if spec not in args["only_after"] or name == "after"]
    grid = torch.cat([r["grid"] for r in rows if r["w"] == best_w])
    viz.save_grid(grid, RESULTS / f"{args['name']}_{name}_grid_w{best_w:g}.png", nrow=8, expected=None)
    for r in rows:
        del r["grid"]
    return dict(recipe=name, overrides=RECIPES[name], steps=result.step, train_s=train_s, best_w=best_w,
                reused=result.stop_reason == "already done",
                params=models.count_parameters(model), loss_end=float(np.mean(result.loss_history[-50:])), rows=rows,
                samplers=[r["sampler"] for r in rows if r["w"] == best_w])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="after,film-flip", help=f"comma-separated, from {sorted(RECIPES)}")
    parser.add_argument("--steps", type=int, default=8000, help="diffusion training steps (the fixed budget)")
    parser.add_argument("--budget-minutes", type=float, default=90.0, help="stop training earlier than --steps on a slow CPU")
    parser.add_argument("--classifier-steps", type=int, default=300)
    parser.add_argument("--lists", type=int, default=256, help="held-out label lists: one image each per point")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--scales", default="0,1,2,4", help="guidance scales of the fast sweep")
    parser.add_argument("--sweep-samplers", default="sde-dpm-50", help="fast samplers swept over w (the first picks w)")
    parser.add_argument("--at-best", default="ddim-50,ddpm-1000",
                        help="samplers run at the best w of the first sweep sampler (the hand-in sampler: ddpm-1000)")
    parser.add_argument("--only-after", default="",
                        help="of --at-best, the samplers run for the 'after' recipe only (e.g. ddpm-1000 on a busy CPU)")
    parser.add_argument("--jobs", type=int, default=2, help="recipes trained at once (one thread each)")
    parser.add_argument("--name", default="iclevr_learnability", help="result file name")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "ddpm-iclevr-learnability"),
                        help="checkpoint folder: a second run with the same recipe only samples again")
    args = parser.parse_args()
    recipes = chosen_recipes(parser, args.recipes, RECIPES)
    config.seed_everything(0)

    start = time.perf_counter()
    train, held_out = draw_set(6000, seed=1), draw_set(args.lists, seed=2)
    classifier = train_classifier(train, args.classifier_steps)
    real = iclevr_accuracy.accuracy(classifier, iclevr_accuracy.as_saved(held_out.images.float() / 127.5 - 1),
                                    held_out.labels)
    print(f"classifier: {args.classifier_steps} steps in {time.perf_counter() - start:.0f} s; "
          f"course accuracy on {len(held_out)} held-out drawn scenes: {real.value:.3f} ({real.hits}/{real.total})")
    job_args = dict(workdir=args.workdir, steps=args.steps, budget_minutes=args.budget_minutes, batch_size=args.batch_size,
                    lists=args.lists, scales=[float(w) for w in args.scales.split(",")],
                    sweep_samplers=args.sweep_samplers.split(","), at_best=args.at_best.split(","), only_after=args.only_after.split(","), name=args.name)
    jobs = [dict(recipe=r, args=job_args, classifier=classifier.state_dict()) for r in recipes]
    results, wall = run_in_workers(run_recipe, jobs, args.jobs)
    viz.save_grid(held_out.images[:8].float() / 127.5 - 1, RESULTS / f"{args.name}_real.png", nrow=8, expected=None)
    name_of = object_names()  # index in the multi-hot vector → name
    shown_names = [", ".join(name_of[j] for j in row.nonzero().flatten().tolist()) for row in held_out.labels[:8]]

    lines, table = [], []
    for res in results:
        lines.append(f"**{res['recipe']}** ({json.dumps(res['overrides'])}): {res['params'] / 1e6:.2f} M parameters, "
                     f"{res['steps']} steps of batch {args.batch_size} in {res['train_s'] / 60:.1f} min"
                     f"{' (an earlier run of this script with the same settings: its checkpoint was reused)' if res['reused'] else ''}"
                     f", final loss ≈ "
                     f"{res['loss_end']:.4f}; grid `results/{args.name}_{res['recipe']}_grid_w{res['best_w']:g}.png` "
                     f"(rows: {', '.join(res['samplers'])} at w = {res['best_w']:g}).")
        for r in res["rows"]:
            lo, hi = wilson(r["hits"] / r["total"], r["total"])    # objects of one image are not independent: rough
            table.append(f"| {res['recipe']} | {r['sampler']} | {r['w']:g} | **{r['value']:.3f}** ({lo:.3f}–{hi:.3f}) | "
                         f"{r['seconds']:.0f} s |")
    write_result(args.name, f"""
Drawn 32×32 scenes of 1–3 flat shapes (24 objects). Classifier: a small CNN with the evaluator's
sigmoid head, {args.classifier_steps} steps; course accuracy on the {len(held_out)} held-out real drawn scenes
**{real.value:.3f}** ({real.hits}/{real.total}). Chance ≈ 0.083.

Conditional DDPMs (condition dropout 0.1), trained at the same time in {min(args.jobs, len(jobs))} processes of one
thread each ({wall / 60:.1f} min wall for this run's training and sampling):

{chr(10).join('- ' + line for line in lines)}

Each row: one image per label list of the same {len(held_out)} held-out lists ({real.total} objects), from the same
noise, scored with `iclevr_accuracy.accuracy` (course protocol), with a rough 95 % Wilson interval over objects.
The fast sweep picks w (the first sampler); {", ".join(args.at_best.split(","))} sample again at that w.
Every sampler clamps the predicted x̂_0 to [-1, 1] (`clip_sample`).

| recipe | sampler | w | course accuracy | sampling time |
|---|---|---|---|---|
{chr(10).join(table)}

Grid columns, the label lists: {" | ".join(shown_names)}. The real drawn scenes for them:
`results/{args.name}_real.png`.
""")


if __name__ == "__main__":
    main()
