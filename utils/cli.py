"""Train a notebook's config from the command line, on one GPU or many, with the notebooks' loop.

    python -m utils.cli --config mnist --preset cpu
    accelerate launch --multi_gpu --num_processes 4 -m utils.cli --config iclevr --num_epochs 100

Every config field is an option: ``--batch_size 64`` (per process), ``--max_steps 2000``,
``--block_out_channels 64,128,256,256``, ``--channels_last true``. It writes what the notebook
writes: ``checkpoint_dir/last.pt`` (and resumes from it, like the notebook's training cell) and the
hand-in files in ``output_dir``. ``--preset smoke`` (or ``DDPM_SMOKE=1``) trains on the small
fixtures the notebooks write under test. Each process reads its own share of every epoch; the
main process writes checkpoints and samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path

import matplotlib.pyplot as plt

from . import compare, config, data, diffusion, fixtures, handin, iclevr_accuracy, models, training, viz

# What each notebook hands in, and its loss-plot title.
HANDIN = {
    "mnist": dict(loss="loss_mnist.jpg", grid="result_mnist.jpg", gif="mnist.gif", title="DDPM on MNIST"),
    "anime": dict(loss="loss_anime.jpg", grid="result_anime.jpg", gif="anime.gif", title="DDPM on Anime Faces"),
    "iclevr": dict(loss="loss_iclevr.jpg", gif="iclevr.gif", title="Conditional DDPM on iCLEVR"),
}
DENOISE_NAMES = [["red sphere", "cyan cylinder", "cyan cube"]]  # notebook 03's denoising-process row


def _parse_value(text: str, hint):
    """``text`` as the type ``hint`` of a config field: bools, numbers, "none", comma-separated tuples."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and text.lower() in ("none", ""):
        return None
    if typing.get_origin(hint) is tuple:
        return tuple(_parse_value(part, args[0]) for part in text.split(",") if part.strip())
    hint = args[0] if args else hint
    if hint is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a yes/no value: use true or false.")
        return text.lower() in ("true", "1", "yes")
    return hint(text)


def parse_config(argv: list[str] | None = None) -> config.DDPMConfig:
    """The config that ``argv`` (``--config``, ``--preset`` and any config field) describes."""
    first = argparse.ArgumentParser(add_help=False)
    asks_help = bool({"-h", "--help"} & set(sys.argv[1:] if argv is None else argv))
    first.add_argument("--config", choices=sorted(HANDIN), required=not asks_help)
    first.add_argument("--preset", default=None, help='"full", "smoke" (tiny, for tests) or a notebook preset '
                                                      '("cpu" for mnist); default: smoke when DDPM_SMOKE=1, else full')
    known, _ = first.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="python -m utils.cli", description=__doc__, parents=[first],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cls = config.CONFIGS[known.config] if known.config else config.DDPMConfig
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls)[1:]:  # all but ``name``, which --config chooses
        parser.add_argument(f"--{f.name}", type=lambda text, hint=hints[f.name]: _parse_value(text, hint),
                            default=None, metavar=f.name.upper(), help=f"config field ({hints[f.name]})")
    args = vars(parser.parse_args(argv))
    name, preset = args.pop("config"), args.pop("preset")
    if preset == "smoke":
        os.environ["DDPM_SMOKE"] = "1"  # smoke runs write under .smoke/, never over real results
    return config.make_config(name, preset, **args)


def load_data(cfg, accelerator) -> data.ImageSet:
    """The notebook's dataset (in smoke mode the fixture it writes), decoded once per machine."""
    paths = cfg.paths()
    with accelerator.local_main_process_first():  # one process per machine writes fixtures and the cache
        if config.smoke_mode() and accelerator.is_local_main_process:
            if cfg.name == "mnist":
                fixtures.write_mnist_fixture(paths["data_dir"], "course", n_per_digit=20)
            elif cfg.name == "anime":
                fixtures.write_anime_fixture(paths["data_dir"], "kaggle", n=48)
            else:
                fixtures.write_iclevr_fixture(paths["data_dir"], n_scenes=8)
                fixtures.write_evaluator_fixture(paths["data_dir"] / iclevr_accuracy.EVALUATOR_FILE)
        if cfg.name == "mnist":
            return data.load_mnist(paths["data_dir"], paths["cache_dir"], allow_offline_sample=cfg.allow_offline_sample,
                                   image_size=cfg.image_size)
        if cfg.name == "anime":
            return data.load_anime(paths["data_dir"], paths["cache_dir"], image_size=cfg.image_size,
                                   download=cfg.download, download_dir=cfg.download_dir, gdown_id=cfg.gdown_id)
        return data.load_iclevr(paths["data_dir"], paths["cache_dir"], image_size=cfg.image_size)


def write_unconditional(cfg, ema, schedule, hand_in: handin.HandInSet) -> None:
    """Notebooks 01/02's samples, into ``hand_in``: a 5×5 grid and the diffusion GIF, with cfg's sampler."""
    names = HANDIN[cfg.name]
    samples = diffusion.sample(ema, schedule, 25, (cfg.channels, cfg.image_size, cfg.image_size),
                               **diffusion.handin_sampling(cfg), num_frames=cfg.gif_frames,
                               mixed_precision=cfg.mixed_precision)
    viz.save_grid(samples.images, hand_in.path(names["grid"]), nrow=5)
    viz.save_gif(samples.frames, hand_in.path(names["gif"]), nrow=5)


def load_course_evaluator(cfg, device):
    """(path, evaluator) of the course's checkpoint.pth, or (None, None) when there is none; a wrong file
    raises ``EvaluatorError`` — called before training, so it is not found out after hours of it."""
    path = iclevr_accuracy.find_evaluator(cfg.evaluator_checkpoint, cfg.data_dir)
    return path, (iclevr_accuracy.load_evaluator(path, device) if path is not None else None)


def write_iclevr(cfg, ema, schedule, evaluator_path, evaluator, out: handin.HandInSet) -> None:
    """Notebook 03's files, into ``out``: test/ and new_test/ (i.png for the i-th label list), their 8×4 grids, the GIF and
    the denoising row; with the evaluator also the guidance sweep and ``accuracy.json``.

    With the evaluator and ``cfg.choose_guidance``, w is chosen as notebook 03 chooses it: the fast sweep, then
    its ``confirm_top`` best scales and ``guidance_scale`` with the hand-in sampler; the best is handed in.
    """
    files = data.find_iclevr(cfg.data_dir)
    objects = data.load_objects(files.label_file("objects.json"))
    label_sets = {name: data.encode_labels(data.load_label_lists(files.label_file(f"{name}.json")), objects)
                  for name in ("test", "new_test")}
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    common = dict(image_shape=shape, seed=cfg.seed, clip_sample=cfg.clip_sample, mixed_precision=cfg.mixed_precision)
    sweep_rows, candidates = None, [cfg.guidance_scale]
    if evaluator is not None:
        sweep_rows = iclevr_accuracy.guidance_sweep(ema, schedule, evaluator, label_sets, cfg.sweep_scales,
                                                    sampler=cfg.sweep_sampler, num_inference_steps=cfg.sweep_steps, **common)
        plt.close(iclevr_accuracy.save_sweep(sweep_rows, out.path("guidance_sweep.csv"), out.path("guidance_sweep.png")))
        if cfg.choose_guidance:
            candidates = iclevr_accuracy.candidate_scales(sweep_rows, cfg.confirm_top, also=cfg.guidance_scale)
    runs = [iclevr_accuracy.sample_and_score(ema, schedule, evaluator, label_sets, w, sampler=cfg.sampler,
                                             num_inference_steps=cfg.num_inference_steps, num_frames=cfg.gif_frames, **common)
            for w in candidates]
    hand_in = iclevr_accuracy.best_run(runs) if len(runs) > 1 else runs[0]
    w = hand_in.guidance_scale
    for name, result in hand_in.samples.items():
        viz.save_numbered(result.images, out.path(name))
        viz.save_grid(result.images, out.path(f"{name}_grid.png"), nrow=8, expected=32)
    viz.save_gif(hand_in.samples["test"].frames, out.path(HANDIN["iclevr"]["gif"]), nrow=8)
    process = diffusion.sample(ema, schedule, 1, shape, sampler=cfg.sampler, num_inference_steps=cfg.num_inference_steps,
                               labels=data.encode_labels(DENOISE_NAMES, objects), guidance_scale=w, seed=cfg.seed,
                               num_frames=cfg.denoising_frames, clip_sample=cfg.clip_sample,
                               mixed_precision=cfg.mixed_precision)
    viz.denoising_strip(process.frames, out.path("denoising_process.png"))
    if evaluator is None:
        print(f"Accuracy skipped: no evaluator {iclevr_accuracy.EVALUATOR_FILE} in {cfg.data_dir} (see data_links.md); "
              f"handed in at w = {w}.")
        return
    why = "the best of these with the hand-in sampler" if len(runs) > 1 else "guidance_scale (choose_guidance off)"
    iclevr_accuracy.save_accuracy(
        hand_in.scores, out.path("accuracy.json"), guidance_scale=w, chosen_by=why, sampler=cfg.sampler,
        num_inference_steps=compare.sampler_steps(cfg.sampler, cfg.num_inference_steps, cfg.num_train_timesteps),
        seed=cfg.seed, evaluator=str(evaluator_path), hand_in_sampler_runs=[run.row() for run in runs],
        sweep={"sampler": cfg.sweep_sampler, "steps": cfg.sweep_steps, "rows": sweep_rows})
    print(f"hand-in at w = {w} ({why}; tried {candidates})")
    for name, acc in hand_in.scores.items():
        print(f"{name:9s} accuracy {acc.value:.4f}  ({acc.hits}/{acc.total} objects found)")


def main(argv: list[str] | None = None) -> training.TrainResult:
    """Train the config ``argv`` describes (on every process), then write its outputs (main process)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env

    cfg = parse_config(argv)
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU")  # set by `accelerate launch --cpu`
    mixed_precision = config.resolve_mixed_precision(cfg.mixed_precision, PartialState(cpu=cpu).device)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    config.seed_everything(cfg.seed)  # the same initial weights everywhere; train() then splits the noise
    images = load_data(cfg, accelerator)
    device = accelerator.device
    loader = data.BatchLoader(images, cfg.batch_size, hflip=cfg.hflip, seed=cfg.seed, device=device,
                              keep_on_device=data.fits_on_device(images.images, device),
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
    schedule = diffusion.schedule_from_config(cfg)
    loss_fn = diffusion.make_loss_fn(schedule, conditional=cfg.num_labels > 0,
                                     cond_drop_prob=getattr(cfg, "cond_drop_prob", 0.0), min_snr_gamma=cfg.min_snr_gamma)
    if accelerator.is_main_process:
        print(f"{cfg.name}: {len(images):,} images from {images.source}; {accelerator.num_processes} process(es) "
              f"× batch {cfg.batch_size} on {device}, mixed precision {mixed_precision}; "
              f"{len(loader)} steps per epoch; outputs → {cfg.output_dir}")
    if cfg.name == "iclevr":   # on every process: a bad file stops them all, none waits for the others
        evaluator_path, evaluator = load_course_evaluator(cfg, device)
    with training.folder_lock(cfg, accelerator) as lock:   # held until the hand-in set is in place
        result = training.train(models.build_model(cfg), loss_fn, loader, cfg, accelerator=accelerator, lock=lock)
        if not accelerator.is_main_process:
            return result
        print(f"{result.step} iterations ({result.stop_reason}); checkpoint: {result.checkpoint}")
        out = handin.HandInSet(cfg.output_dir, result, guard=lock.owned)   # one set, from this checkpoint
        plt.close(viz.plot_loss(result.loss_history, out.path(HANDIN[cfg.name]["loss"]), title=HANDIN[cfg.name]["title"]))
        if cfg.name == "iclevr":
            write_iclevr(cfg, result.ema_model, schedule, evaluator_path, evaluator, out)
        else:
            write_unconditional(cfg, result.ema_model, schedule, out)
        written = out.commit()
    folder = Path(cfg.output_dir)
    print(f"Wrote {len(written)} files in {folder} (from {out.source}): "
          + ", ".join(sorted({p.relative_to(folder).parts[0] for p in written})))
    return result


if __name__ == "__main__":
    main()
