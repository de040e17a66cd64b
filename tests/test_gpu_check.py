"""`make gpu-check`: refuses at once without CUDA; its measurements and report run end to end (on the stand-in)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_without_cuda_it_stops_at_once_and_says_where_to_run_it():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert "needs a CUDA GPU" in run.stderr and "Colab" in run.stderr


def test_the_quick_run_writes_a_report_with_every_notebook(tmp_path):
    out = tmp_path / "gpu_check.md"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "standin", "--quick", "--skip-tests",
                          "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)   # generous: a loaded machine is many times slower
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    for notebook in ("01_mnist_ddpm", "02_anime_faces_ddpm", "03_iclevr_cfg"):
        assert text.count(notebook) == 2                      # its table row and its expected time
    assert "Date: " in text and "train it/s" in text and "DDPM-10:" in text and "sde-dpm-10" in text
    assert "DDPM-50: " in text and "(50 steps timed)" not in text   # MNIST smoke: T = 50, timed in full
