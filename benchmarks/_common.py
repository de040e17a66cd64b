"""Small helpers the benchmark scripts share: machine description, result files, timed training."""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import os
import time
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def machine() -> str:
    """One line: date, CPU/GPU, cores, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return (f"{datetime.date.today().isoformat()} · {cpu} · {os.cpu_count()} cores · {gpu} · "
            f"torch {torch.__version__} ({threads} thread{'s' if threads != 1 else ''})")


def write_result(name: str, markdown: str) -> Path:
    """Print a result and save it as benchmarks/results/<name>.md."""
    RESULTS.mkdir(exist_ok=True)
    text = f"Machine: {machine()}\n\n{markdown.strip()}\n"
    print(text)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    return path


def train_timed(model, loss_fn, loader, cfg, **kwargs):
    """``training.train`` and its wall time in seconds. The time is kept next to the checkpoint, so
    a rerun that only samples again (the run is already done) still reports the training time."""
    from utils import training

    timing = Path(cfg.checkpoint_dir) / "train_seconds.json"
    start = time.perf_counter()
    result = training.train(model, loss_fn, loader, cfg, **kwargs)
    if result.stop_reason != "already done" or not timing.exists():
        timing.write_text(json.dumps(time.perf_counter() - start))
    return result, json.loads(timing.read_text())


def wilson(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a share measured on n samples."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def chosen_recipes(parser, text: str, known: dict) -> list[str]:
    """The comma-separated recipe names of ``text``; an unknown one is a usage error naming the known ones."""
    recipes = text.split(",")
    unknown = [r for r in recipes if r not in known]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {sorted(known)}")
    return recipes


def run_in_workers(fn, jobs: list, processes: int) -> tuple[list, float]:
    """``fn(job)`` for every job in ``processes`` spawned worker processes (each sets its own threads);
    returns the results in job order and the wall time in seconds."""
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
        results = pool.map(fn, jobs, chunksize=1)
    return results, time.perf_counter() - start
