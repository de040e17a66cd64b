"""The hand-in: what each notebook hands in, and the steps that write it.

The notebooks call these steps one visible cell each and ``python -m utils.cli`` calls them in order, so a
hand-in file is made one way wherever it is made. Each step writes into a ``handin_set.HandInSet`` (one
checkpoint's set, put in place at once by its ``commit``); ``utils.export`` checks and zips what they wrote.

* Notebooks 01 and 02: ``save_loss``, ``draw_unconditional`` (the 5×5 grid and the GIF, drawn as
  ``diffusion.handin_sampling`` says), ``save_unconditional``.
* Notebook 03: ``save_loss``, ``sweep_guidance`` (many w with a fast sampler; needs the evaluator),
  ``choose_guidance`` (the best few again with the hand-in sampler), ``save_iclevr_images``, ``save_denoising``,
  ``save_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch

from . import compare, data, diffusion, guidance, iclevr_accuracy, viz
from .handin_set import HandInSet


@dataclass(frozen=True)
class Files:
    """One notebook's hand-in file names (the names the assignment asks for)."""

    loss: str           # the loss curve
    title: str          # its title
    grid: str = ""      # the 5×5 grid of samples (notebooks 01, 02)
    gif: str = ""       # the diffusion GIF


FILES = {
    "mnist": Files(loss="loss_mnist.jpg", title="DDPM on MNIST", grid="result_mnist.jpg", gif="mnist.gif"),
    "anime": Files(loss="loss_anime.jpg", title="DDPM on Anime Faces", grid="result_anime.jpg", gif="anime.gif"),
    "iclevr": Files(loss="loss_iclevr.jpg", title="Conditional DDPM on iCLEVR", gif="iclevr.gif"),
}
ICLEVR_SETS = ("test", "new_test")            # test/i.png, new_test/i.png: the i-th label list of <set>.json
DENOISING = "denoising_process.png"
ACCURACY = "accuracy.json"
SWEEP_CSV, SWEEP_PLOT = "guidance_sweep.csv", "guidance_sweep.png"
DENOISE_NAMES = [["red sphere", "cyan cylinder", "cyan cube"]]   # the lab's denoising-process example


def grid_name(set_name: str) -> str:
    """``test`` → ``test_grid.png``: the set's 32 images, 8 per row."""
    return f"{set_name}_grid.png"


def image_shape(cfg) -> tuple[int, int, int]:
    return (cfg.channels, cfg.image_size, cfg.image_size)


def hand_in_steps(cfg) -> int:
    """Network evaluations per image of the hand-in sampler: T for "ddpm", else ``num_inference_steps``."""
    return compare.sampler_steps(cfg.sampler, cfg.num_inference_steps, cfg.num_train_timesteps)


def save_loss(cfg, result, hand_in: HandInSet):
    """The loss curve of ``result`` (a ``training.TrainResult``) under the notebook's name; returns the figure."""
    files = FILES[cfg.name]
    return viz.plot_loss(result.loss_history, hand_in.path(files.loss), title=files.title)


# ----------------------------------------------------------------------------- notebooks 01 and 02
def draw_unconditional(cfg, ema, schedule, num_images: int = 25) -> diffusion.SampleResult:
    """The hand-in samples with their GIF frames, drawn as ``diffusion.handin_sampling(cfg)`` says (sampler,
    steps, clipping, seed: the same in notebook 04, the CLI and the benchmarks)."""
    return diffusion.sample(ema, schedule, num_images, image_shape(cfg), **diffusion.handin_sampling(cfg),
                            num_frames=cfg.gif_frames, mixed_precision=cfg.mixed_precision)


def save_unconditional(cfg, samples: diffusion.SampleResult, hand_in: HandInSet, images: torch.Tensor | None = None):
    """The 5×5 grid (``images``, default the samples' own) and the GIF of ``samples``; returns the GIF's path.

    Notebook 01 passes the images of its own Algorithm 2 loop, drawn from the same noise as ``samples``."""
    files = FILES[cfg.name]
    viz.save_grid(samples.images if images is None else images, hand_in.path(files.grid), nrow=5)
    return viz.save_gif(samples.frames, hand_in.path(files.gif), nrow=5)


# ----------------------------------------------------------------------------- notebook 03
def sampling_minutes(cfg, ema, label_sets: dict[str, torch.Tensor], *, steps: int, scales: int) -> float:
    """What sampling every set at ``scales`` guidance scales with ``steps`` steps will take, timed on one step."""
    seconds = guidance.seconds_per_sampling_step(ema, next(iter(label_sets.values())), image_shape(cfg),
                                                 mixed_precision=cfg.mixed_precision)
    return scales * len(label_sets) * steps * seconds / 60


def sweep_guidance(cfg, ema, schedule, evaluator, label_sets: dict[str, torch.Tensor], hand_in: HandInSet, *,
                   guidance_mix=diffusion.mix_guidance, progress: bool = True) -> list[dict] | None:
    """Accuracy at each of ``cfg.sweep_scales`` with the fast ``cfg.sweep_sampler``, saved as CSV and plot; None
    (and nothing written) without an evaluator."""
    if evaluator is None:
        return None
    rows = guidance.guidance_sweep(ema, schedule, evaluator, label_sets, cfg.sweep_scales, image_shape=image_shape(cfg),
                                   sampler=cfg.sweep_sampler, num_inference_steps=cfg.sweep_steps, seed=cfg.seed,
                                   clip_sample=cfg.clip_sample, mixed_precision=cfg.mixed_precision,
                                   progress=progress, guidance_mix=guidance_mix)
    plt.close(guidance.save_sweep(rows, hand_in.path(SWEEP_CSV), hand_in.path(SWEEP_PLOT)))
    return rows


def guidance_candidates(cfg, sweep_rows: list[dict] | None) -> list[float]:
    """The w to sample with the hand-in sampler: with a sweep and ``cfg.choose_guidance``, its ``confirm_top`` best
    and ``cfg.guidance_scale``; otherwise ``cfg.guidance_scale`` alone (a guidance_scale you set turns the choice
    off: ``config.make_config``)."""
    if sweep_rows and cfg.choose_guidance:
        return guidance.candidate_scales(sweep_rows, cfg.confirm_top, also=cfg.guidance_scale)
    return [cfg.guidance_scale]


@dataclass
class Choice:
    """The hand-in run (its w, samples and scores), every run it was chosen from, and why."""

    hand_in: guidance.GuidanceRun
    runs: list[guidance.GuidanceRun]
    why: str

    @property
    def guidance_scale(self) -> float:
        return self.hand_in.guidance_scale


def choose_guidance(cfg, ema, schedule, evaluator, label_sets: dict[str, torch.Tensor], sweep_rows: list[dict] | None,
                    *, guidance_mix=diffusion.mix_guidance, progress: bool = True) -> Choice:
    """Sample every set with the hand-in sampler at each of ``guidance_candidates`` and keep the best (by the
    evaluator; the only candidate without one). Writes nothing: ``save_iclevr_images`` and ``save_accuracy`` do."""
    candidates = guidance_candidates(cfg, sweep_rows)
    runs = [guidance.sample_and_score(ema, schedule, evaluator, label_sets, w, image_shape=image_shape(cfg),
                                      sampler=cfg.sampler, num_inference_steps=cfg.num_inference_steps, seed=cfg.seed,
                                      clip_sample=cfg.clip_sample, num_frames=cfg.gif_frames,
                                      mixed_precision=cfg.mixed_precision, progress=progress, guidance_mix=guidance_mix)
            for w in candidates]
    if len(runs) > 1:
        why = "the best of these with the hand-in sampler"
    elif evaluator is None:
        why = "guidance_scale (no evaluator, so no sweep)"
    elif cfg.choose_guidance:
        why = "guidance_scale (no sweep)"
    else:
        why = "set by guidance_scale"
    return Choice(guidance.best_run(runs) if len(runs) > 1 else runs[0], runs, why)


def save_iclevr_images(choice: Choice, hand_in: HandInSet) -> dict[str, object]:
    """``<set>/i.png`` for the i-th label list of each set, the 8×4 grids and the GIF (of ``test``); returns the
    grids as PIL images, by set name."""
    grids = {}
    for name, result in choice.hand_in.samples.items():
        viz.save_numbered(result.images, hand_in.path(name))
        grids[name] = viz.save_grid(result.images, hand_in.path(grid_name(name)), nrow=8, expected=32)
    viz.save_gif(choice.hand_in.samples["test"].frames, hand_in.path(FILES["iclevr"].gif), nrow=8)
    return grids


def save_denoising(cfg, ema, schedule, objects: dict[str, int], guidance_scale: float, hand_in: HandInSet, *,
                   guidance_mix=diffusion.mix_guidance) -> diffusion.SampleResult:
    """The denoising row of ``DENOISE_NAMES`` at the hand-in's w: snapshots of x_t from noise to the clean image."""
    process = diffusion.sample(ema, schedule, 1, image_shape(cfg), sampler=cfg.sampler,
                               num_inference_steps=cfg.num_inference_steps,
                               labels=data.encode_labels(DENOISE_NAMES, objects), guidance_scale=guidance_scale,
                               seed=cfg.seed, num_frames=cfg.denoising_frames, clip_sample=cfg.clip_sample,
                               mixed_precision=cfg.mixed_precision, guidance_mix=guidance_mix)
    viz.denoising_strip(process.frames, hand_in.path(DENOISING))
    return process


def save_accuracy(cfg, choice: Choice, sweep_rows: list[dict] | None, evaluator_path, hand_in: HandInSet):
    """``accuracy.json``: each set's course accuracy at the hand-in's w, and how it was drawn and chosen."""
    return iclevr_accuracy.save_accuracy(
        choice.hand_in.scores, hand_in.path(ACCURACY), guidance_scale=choice.guidance_scale, chosen_by=choice.why,
        sampler=cfg.sampler, num_inference_steps=hand_in_steps(cfg), seed=cfg.seed, evaluator=str(evaluator_path),
        hand_in_sampler_runs=[run.row() for run in choice.runs],
        sweep={"sampler": cfg.sweep_sampler, "steps": cfg.sweep_steps, "rows": sweep_rows})
