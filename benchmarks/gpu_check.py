"""`make gpu-check`: prove the bundle on a real CUDA GPU in a few minutes, and measure what a student will wait.

    make gpu-check                      # with the bundle's .venv
    make gpu-check PYTHON=python3       # with a Python that already has requirements-dev.txt (Colab, a cluster)

For each notebook's full config (mnist, anime, iclevr), on synthetic data of the real shape and size:
training iterations/s at the full batch in the precision "auto" picks, peak GPU memory, the data loader's
images/s against the model's, and the hand-in sampling time — 25 images with DDPM-1000 and with the fast
sampler for 01/02, the 64 guided images of test.json + new_test.json for 03 — with the DDPM-vs-fast
speed-up (DDPM-1000's steps all cost the same: 100 of them are timed and the time scaled by 10). Then the unit tests and all four notebooks in smoke mode on the GPU (DDPM_DEVICE=cuda). It writes
benchmarks/results/gpu_check.md (GPU, torch, CUDA, date) and prints the expected time of each notebook's
full run on this GPU. Offline: it downloads nothing. On a machine without CUDA it stops at once (exit 2).

Report format (benchmarks/results/gpu_check.md): a header with GPU name, compute capability, memory, torch,
CUDA and cuDNN versions and the date; one table row per notebook (the columns are named in the table); the
expected full-run time per notebook; the test suite's pytest summary line (and its failures, if any); the
wall time of the check itself.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import torch
except ImportError:
    sys.exit(f"make gpu-check runs with the Python it is given ({sys.executable}), which has no torch. Use one with "
             "the bundle's requirements: `make setup` then `make gpu-check`, or make gpu-check PYTHON=/path/to/python.")
from _common import RESULTS

ROOT = Path(__file__).resolve().parent.parent
DDPM_TIMED_STEPS = 100   # DDPM-1000 is timed over 100 of its identical steps, × 10
DATASET_SIZES = {"mnist": 60_000, "anime": 21_376, "iclevr": 18_009}   # images in each real training set
NOTEBOOKS = {"mnist": "01_mnist_ddpm", "anime": "02_anime_faces_ddpm", "iclevr": "03_iclevr_cfg"}
NO_CUDA = ("make gpu-check needs a CUDA GPU, and this machine has none (torch.cuda.is_available() is False). "
           "Run it where students run the notebooks: a Colab GPU runtime (Runtime → Change runtime type → T4 GPU), "
           "or any machine with an NVIDIA GPU and the bundle's requirements. On this machine, `make test` checks "
           "the device handling with the stand-in accelerator.")


@dataclass
class Row:
    name: str
    parameters: float          # millions
    batch: int
    precision: str
    train_its: float           # iterations/s of training.train at the full batch
    train_peak_gb: float
    loader_images_s: float
    ddpm_steps: int            # T
    ddpm_seconds: float        # hand-in images with DDPM, all T steps
    fast_seconds: float        # the same images with the fast sampler
    fast: str                  # e.g. "ddim-50"
    num_images: int
    sample_peak_gb: float
    total_steps: int           # iterations of the full run on the real data set

    @property
    def model_images_s(self) -> float:
        return self.train_its * self.batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def synthetic_set(cfg, num_images: int):
    """Random uint8 images (and, for iCLEVR, 1–3-object multi-hot labels) of the config's real shape."""
    from utils import data

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_images, cfg.channels, cfg.image_size, cfg.image_size), dtype=torch.uint8,
                           generator=g)
    labels = None
    if cfg.num_labels:
        labels = torch.zeros(num_images, cfg.num_labels)
        for i in range(num_images):
            labels[i, torch.randperm(cfg.num_labels, generator=g)[:1 + i % 3]] = 1.0
    return data.ImageSet(images, labels, "synthetic")


def measure(name: str, device: torch.device, work: str, *, quick: bool) -> Row:
    """One notebook's full config (or its smoke config with ``quick``) on synthetic data of the real size."""
    from utils import config, data, devices, diffusion, models, training
    from utils.data import iclevr

    steps = 8 if quick else 60
    preset = "smoke" if quick else "full"
    cfg = config.make_config(name, preset, workdir=work, max_steps=steps, log_every=max(2, steps // 6),
                             checkpoint_every=10**9, preview_every=0, checkpoint_dir=f"{work}/{name}")
    size = 64 if quick else DATASET_SIZES[name]
    images = synthetic_set(cfg, size)
    loader = data.BatchLoader(images, cfg.batch_size, hflip=cfg.hflip, device=device,
                              keep_on_device=data.fits_on_device(images.images, device))
    precision = devices.resolve_mixed_precision(cfg.mixed_precision, device)
    torch.manual_seed(0)
    model = models.build_model(cfg).to(device)
    schedule = diffusion.schedule_from_config(cfg)
    loss_fn = diffusion.make_loss_fn(schedule, conditional=cfg.num_labels > 0,
                                     cond_drop_prob=getattr(cfg, "cond_drop_prob", 0.0), min_snr_gamma=cfg.min_snr_gamma)

    stamps = []
    _reset_peak(device)
    result = training.train(model, loss_fn, loader, cfg, progress=False,
                            on_log=lambda p: stamps.append((p.step, time.perf_counter())))  # read-outs sync
    (s0, t0), (s1, t1) = stamps[1], stamps[-1]            # the first read-out includes warm-up
    train_its, train_peak = (s1 - s0) / (t1 - t0), _peak_gb(device)

    batches = 10 if quick else 50
    _sync(device)
    start = time.perf_counter()
    for i, batch in enumerate(loader.epoch(1)):
        if i + 1 == batches:
            break
    _sync(device)
    loader_images_s = (i + 1) * cfg.batch_size / (time.perf_counter() - start)

    ema = result.ema_model
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    if cfg.num_labels:
        objects = iclevr.load_objects(iclevr.BUNDLED_LABELS / "objects.json")
        label_lists = [names for file in ("test.json", "new_test.json")
                       for names in iclevr.load_label_lists(iclevr.BUNDLED_LABELS / file)]
        labels, count, guidance = iclevr.encode_labels(label_lists, objects), 64, cfg.guidance_scale
    else:
        labels, count, guidance = None, 25, 1.0
    if quick:                                             # a check of this script: fewer images
        labels, count = (labels[:8] if labels is not None else None), 8
    fast_sampler, fast_steps = cfg.preview_sampler, min(50, cfg.num_train_timesteps)
    # DDPM's steps all cost the same (one guided forward, one Algorithm-2 step): time the first
    # ``timed`` of them with the same loop, on a schedule of that length, and scale up to T.
    timed = min(DDPM_TIMED_STEPS, cfg.num_train_timesteps)
    runs = {"ddpm": (diffusion.make_schedule(timed, cfg.beta_schedule, cfg.beta_start, cfg.beta_end),
                     cfg.num_train_timesteps / timed),
            fast_sampler: (schedule, 1.0)}
    timings = {}
    _reset_peak(device)
    for sampler, (sched, scale) in runs.items():
        start = time.perf_counter()
        diffusion.sample(ema, sched, count, shape, sampler=sampler, num_inference_steps=fast_steps, labels=labels,
                         guidance_scale=guidance, mixed_precision=cfg.mixed_precision, progress=False)
        timings[sampler] = (time.perf_counter() - start) * scale         # .images come back on the host: synced
    full = config.make_config(name, "full", workdir=work)
    total = full.num_epochs * (DATASET_SIZES[name] // full.batch_size)
    return Row(name, models.count_parameters(model) / 1e6, cfg.batch_size, precision, train_its, train_peak,
               loader_images_s, cfg.num_train_timesteps, timings["ddpm"], timings[fast_sampler], f"{fast_sampler}-{fast_steps}", count,
               _peak_gb(device), total)


def expected_minutes(row: Row, sweep_scales: int) -> tuple[float, str]:
    """The notebook's full run on this GPU: training + hand-in sampling (+ the guidance sweep for 03)."""
    train = row.total_steps / row.train_its
    sampling = row.ddpm_seconds
    what = f"{row.total_steps:,} iterations + hand-in DDPM-{row.ddpm_steps} sampling"
    if row.name == "iclevr":
        sampling += sweep_scales * row.fast_seconds
        what += f" + guidance sweep ({sweep_scales} w × 64 images, {row.fast})"
    return (train + sampling) / 60, what


def run_tests(device: torch.device, timeout: int) -> tuple[bool, str, str]:
    """The unit tests and every notebook in smoke mode, on ``device``: (all passed, pytest's summary, failures)."""
    env = dict(os.environ, DDPM_DEVICE=device.type, DDPM_SMOKE="1", OMP_NUM_THREADS="1", NO_COLOR="1")
    env.pop("ACCELERATE_TORCH_DEVICE", None)
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"did not finish within {timeout} s (raise --test-timeout)", ""
    lines = run.stdout.strip().splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed|error)", line)),
                   f"pytest exited with {run.returncode}: {run.stderr.strip()[-300:]}")
    failures = "\n".join(line for line in lines if line.startswith(("FAILED", "ERROR")))
    return run.returncode == 0, summary, failures


def header(device: torch.device) -> list[str]:
    lines = [f"Date: {datetime.date.today().isoformat()} · Python {platform.python_version()} · torch {torch.__version__}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"GPU: {props.name}, compute capability {props.major}.{props.minor}, "
                     f"{props.total_memory / 2**30:.1f} GB · CUDA {torch.version.cuda} · "
                     f"cuDNN {torch.backends.cudnn.version()}")
    else:
        lines.append(f"Device: {device} (not a GPU: this report only checks the script)")
    return lines


def report(device: torch.device, rows: list[Row], sweep_scales: int, tests: tuple[bool, str, str] | None,
           seconds: float) -> str:
    table = ["| notebook | parameters | batch | precision ('auto') | train it/s | train images/s | peak GPU memory, "
             "training | loader images/s (× the model's) | hand-in images | DDPM, all T steps | fast sampler | speed-up | "
             "peak GPU memory, sampling |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        timed = min(DDPM_TIMED_STEPS, r.ddpm_steps)
        table.append(f"| {NOTEBOOKS[r.name]} | {r.parameters:.2f} M | {r.batch} | {r.precision} | {r.train_its:.2f} | "
                     f"{r.model_images_s:,.0f} | {r.train_peak_gb:.2f} GB | {r.loader_images_s:,.0f} "
                     f"({r.loader_images_s / r.model_images_s:,.0f}×) | {r.num_images} | DDPM-{r.ddpm_steps}: {r.ddpm_seconds:.1f} s"
                     f"{f' ({timed} steps timed)' if timed < r.ddpm_steps else ''} | "
                     f"{r.fast}: {r.fast_seconds:.1f} s | {r.ddpm_seconds / r.fast_seconds:.1f}× | "
                     f"{r.sample_peak_gb:.2f} GB |")
    expected = ["Expected time of each notebook's full run on this GPU (training at the measured rate, plus "
                "sampling; data download and decoding not included):", ""]
    for r in rows:
        minutes, what = expected_minutes(r, sweep_scales)
        expected.append(f"- {NOTEBOOKS[r.name]}: ≈ {minutes:.0f} min ({what})")
    lines = [*header(device), "", *table, "", *expected, ""]
    if tests is not None:
        lines += [f"Unit tests and all four notebooks in smoke mode on {device.type}: {tests[1]}"]
        if tests[2]:
            lines += ["", "```", tests[2], "```"]
    lines += ["", f"This check took {seconds / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "gpu_check.md"), help="where to write the report")
    parser.add_argument("--skip-tests", action="store_true", help="only the measurements")
    parser.add_argument("--test-timeout", type=int, default=360, help="seconds for the smoke test suite")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default). 'standin' with --quick only checks this script on a CPU machine.")
    parser.add_argument("--quick", action="store_true", help="smoke configs, a few steps: a check of this script")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():   # before the slow imports: refuse at once
        print(NO_CUDA, file=sys.stderr)
        return 2
    if args.device != "cuda" and not args.quick:
        print("Only --device cuda measures anything; other devices need --quick.", file=sys.stderr)
        return 2
    from utils import config, devices

    os.environ["DDPM_DEVICE"] = args.device
    device = devices.pick_device()
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in NOTEBOOKS:
            print(f"measuring {name} …", flush=True)
            rows.append(measure(name, device, work, quick=args.quick))
            gc.collect()                                  # the last config's model and optimizer: not in the next peak
            if device.type == "cuda":
                torch.cuda.empty_cache()
    sweep_scales = len(config.make_config("iclevr", "full", workdir=work).sweep_scales)
    tests = None
    if not args.skip_tests:
        print("running the unit tests and the notebooks in smoke mode …", flush=True)
        tests = run_tests(device, args.test_timeout)
    text = report(device, rows, sweep_scales, tests, time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"Written to {out}")
    return 0 if tests is None or tests[0] else 1


if __name__ == "__main__":
    sys.exit(main())
