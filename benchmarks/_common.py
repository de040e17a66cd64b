"""Small helpers the benchmark scripts share: machine description, result files, timed training."""

from __future__ import annotations

import datetime
import json
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
