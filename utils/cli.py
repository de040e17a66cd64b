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

from . import config, data, diffusion, fixtures, handin, iclevr_accuracy, models, training

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
    first.add_argument("--config", choices=sorted(handin.FILES), required=not asks_help)
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


def load_course_evaluator(cfg, device):
    """(path, evaluator) of the course's checkpoint.pth, or (None, None) when there is none; a wrong file
    raises ``EvaluatorError`` — called before training, so it is not found out after hours of it."""
    path = iclevr_accuracy.find_evaluator(cfg.evaluator_checkpoint, cfg.data_dir)
    return path, (iclevr_accuracy.load_evaluator(path, device) if path is not None else None)


def write_iclevr(cfg, ema, schedule, evaluator_path, evaluator, out: handin.HandInSet) -> None:
    """Notebook 03's hand-in steps, in its order (``utils.handin``): the guidance sweep and the choice of w (with the
    evaluator), the images of both sets, their grids and the GIF, the denoising row, ``accuracy.json``."""
    files = data.find_iclevr(cfg.data_dir)
    objects = data.load_objects(files.label_file("objects.json"))
    label_sets = {name: data.encode_labels(data.load_label_lists(files.label_file(f"{name}.json")), objects)
                  for name in handin.ICLEVR_SETS}
    sweep_rows = handin.sweep_guidance(cfg, ema, schedule, evaluator, label_sets, out)
    choice = handin.choose_guidance(cfg, ema, schedule, evaluator, label_sets, sweep_rows)
    handin.save_iclevr_images(choice, out)
    handin.save_denoising(cfg, ema, schedule, objects, choice.guidance_scale, out)
    if evaluator is None:
        print(f"Accuracy skipped: no evaluator {iclevr_accuracy.EVALUATOR_FILE} in {cfg.data_dir} (see data_links.md); "
              f"handed in at w = {choice.guidance_scale}.")
        return
    handin.save_accuracy(cfg, choice, sweep_rows, evaluator_path, out)
    print(f"hand-in at w = {choice.guidance_scale} ({choice.why}; tried {[r.guidance_scale for r in choice.runs]})")
    for name, acc in choice.hand_in.scores.items():
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
        plt.close(handin.save_loss(cfg, result, out))
        if cfg.name == "iclevr":
            write_iclevr(cfg, result.ema_model, schedule, evaluator_path, evaluator, out)
        else:
            handin.save_unconditional(cfg, handin.draw_unconditional(cfg, result.ema_model, schedule), out)
        written = out.commit()
    folder = Path(cfg.output_dir)
    print(f"Wrote {len(written)} files in {folder} (from {out.source}): "
          + ", ".join(sorted({p.relative_to(folder).parts[0] for p in written})))
    return result


if __name__ == "__main__":
    main()
