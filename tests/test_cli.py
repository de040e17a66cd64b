"""The command-line trainer: options from the config, and the same run on two processes through Accelerate."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from utils import cli

ROOT = Path(__file__).resolve().parent.parent


def test_every_config_field_is_an_option_parsed_to_its_type(tmp_path):
    cfg = cli.parse_config(["--config", "mnist", "--preset", "smoke", "--workdir", str(tmp_path),
                              "--max_steps", "3", "--block_out_channels", "8,16", "--channels_last", "true",
                              "--time_budget_minutes", "1.5", "--sampler", "ddim"])
    assert (cfg.name, cfg.max_steps, cfg.block_out_channels) == ("mnist", 3, (8, 16))
    assert cfg.channels_last is True and cfg.time_budget_minutes == 1.5 and cfg.sampler == "ddim"
    assert cfg.layers_per_block == 1  # the preset's value, not overridden


def test_a_bad_yes_no_value_is_refused():
    with pytest.raises(SystemExit):
        cli.parse_config(["--config", "mnist", "--resume", "maybe"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_the_smoke_config_and_write_the_notebook_outputs(tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts one process unless MPI is set up; the
    # torchrun-based multi-process launcher with ACCELERATE_USE_CPU=1 gives 2 processes on gloo.
    env = dict(os.environ, ACCELERATE_USE_CPU="1", DDPM_WORKDIR=str(tmp_path), OMP_NUM_THREADS="1")
    for name in ("DDPM_DEVICE", "ACCELERATE_TORCH_DEVICE"):  # two CPU processes over gloo, not the stand-in
        env.pop(name, None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()),
               "-m", "utils.cli", "--config", "mnist", "--preset", "smoke",
               "--sampler", "ddim", "--num_inference_steps", "5"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)   # generous: a loaded machine is many times slower
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in run.stdout

    work = tmp_path / ".smoke"  # smoke runs stay apart from real data, even under DDPM_WORKDIR
    ckpt = torch.load(work / "checkpoints" / "mnist" / "last.pt", weights_only=True)
    assert ckpt["step"] == 6 and len(ckpt["loss_history"]) == 6  # one mean loss per step, not per process
    assert torch.isfinite(ckpt["loss_history"]).all()
    first, second = ckpt["rng_ranks"]
    assert not torch.equal(first["torch"], second["torch"])  # each process drew its own noise
    records = json.loads((work / "outputs" / "mnist" / "provenance.json").read_text())["files"]
    for name in ("result_mnist.jpg", "loss_mnist.jpg", "mnist.gif"):
        with Image.open(work / "outputs" / "mnist" / name) as image:
            image.load()
        assert (records[name]["run_id"], records[name]["step"]) == (ckpt["run_id"], 6)   # made from that checkpoint
    assert not (work / "checkpoints" / "mnist" / "training.lock").exists()             # held to the end, then let go


def test_mnist_is_loaded_at_the_configs_image_size(tmp_path):
    from utils import config, training

    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path), image_size=32)
    images = cli.load_data(cfg, training.notebook_accelerator(cfg.mixed_precision)).images
    assert images.shape[-2:] == (32, 32)   # trained and sampled at 32 px, so the export's 5×5 check agrees


def test_an_evaluator_of_the_wrong_architecture_stops_the_cli_before_training(tmp_path, monkeypatch):
    from utils import iclevr_accuracy, training

    def never(*args, **kwargs):
        raise AssertionError("trained before checking the evaluator")

    monkeypatch.setattr(training, "train", never)
    bad = tmp_path / "checkpoint.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, bad)
    with pytest.raises(iclevr_accuracy.EvaluatorError):
        cli.main(["--config", "iclevr", "--preset", "smoke", "--workdir", str(tmp_path),
                    "--evaluator_checkpoint", str(bad)])


def test_the_iclevr_cli_chooses_w_like_notebook_03_and_writes_the_whole_hand_in_set(tmp_path):
    from utils import export

    cli.main(["--config", "iclevr", "--preset", "smoke", "--workdir", str(tmp_path), "--max_steps", "2"])
    out = tmp_path / "outputs" / "iclevr"                             # an explicit --workdir is used as it is
    saved = json.loads((out / "accuracy.json").read_text())
    settings = saved["settings"]
    assert {"test", "new_test"} <= saved.keys() and settings["chosen_by"] == "the best of these with the hand-in sampler"
    tried = [run["guidance_scale"] for run in settings["hand_in_sampler_runs"]]
    assert 2.0 in tried and len(tried) >= 2 and settings["guidance_scale"] in tried
    assert len(settings["sweep"]["rows"]) == 3                       # the smoke preset's sweep_scales
    export.check(export.iclevr_files(out), "iclevr")                  # every file the export zips is there
