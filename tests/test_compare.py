"""Notebook 04's comparison: training time in the precision a model trains in, the protocol's settings."""

import dataclasses

import pytest
import torch
from torch import nn

from utils import compare, config


class AutocastRecorder(nn.Module):
    """A one-layer model that notes, on every forward, whether autocast is on and in which dtype."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.layer(x)


@pytest.mark.parametrize("setting, autocast, name", [("bf16", True, "bf16"), ("no", False, "fp32")])
def test_a_training_step_is_timed_in_the_precision_the_model_trains_in(tmp_path, monkeypatch, setting, autocast, name):
    monkeypatch.setenv("DDPM_DEVICE", "cpu")                 # CPU bf16 autocast: the stand-in device has none
    monkeypatch.delenv("ACCELERATE_TORCH_DEVICE", raising=False)
    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path), mixed_precision=setting)
    recorded = []

    def loss_fn(model, batch):
        out = model(batch["x0"])
        recorded.extend(model.seen[-1:])                     # the copy's record: the original is never run
        return out.float().square().mean()

    compare.seconds_per_step(AutocastRecorder(), loss_fn, {"x0": torch.randn(2, 4)}, cfg, repeats=2)
    assert len(recorded) == 3 and all(on == autocast for on, _ in recorded)
    if autocast:
        assert all(dtype == torch.bfloat16 for _, dtype in recorded)
    assert compare.training_precision(cfg) == name


def test_auto_precision_is_timed_in_fp32_on_the_cpu(monkeypatch):
    monkeypatch.setenv("DDPM_DEVICE", "cpu")
    assert compare.training_precision(config.make_config("anime", "smoke")) == "fp32"


@pytest.mark.parametrize("sampler, steps", [("ddpm", 1000), ("ddim", 50), ("dpm", 50)])
def test_a_ddpm_sampler_costs_all_t_steps_only_for_algorithm_2(sampler, steps):
    assert compare.sampler_steps(sampler, 50, 1000) == steps


def test_the_hand_in_sampler_is_scored_on_fewer_images_than_the_protocol():
    full, smoke = config.make_config("compare", "full"), config.make_config("compare", "smoke")
    assert full.fid_handin_samples == 500 < full.fid_num_samples
    assert 0 < smoke.fid_handin_samples <= smoke.fid_num_samples
    assert config.make_config("compare", "smoke", fid_handin_samples=0).fid_handin_samples == 0   # 0 = skip
    with pytest.raises(ValueError, match="fid_handin_samples=-1"):
        config.make_config("compare", "smoke", fid_handin_samples=-1)


def test_a_comparison_of_experiments_gets_its_own_folder(tmp_path):
    base = config.make_config("compare", "smoke", workdir=str(tmp_path))
    experiment = dataclasses.replace(base, run_name="dcgan-ep50", output_dir="")
    assert base.output_dir == str(tmp_path / "outputs" / "compare")
    assert experiment.output_dir == str(tmp_path / "outputs" / "compare-dcgan-ep50")
