"""Shared fixtures: a tiny smoke config in a fresh work dir, and a tiny U-Net built from it."""

import pytest

from utils import config, models


@pytest.fixture
def tiny_cfg(tmp_path):
    """The MNIST smoke config (8/16-channel U-Net, T = 50) writing under tmp_path."""
    return config.make_config("mnist", "smoke", workdir=str(tmp_path))


@pytest.fixture
def tiny_model(tiny_cfg):
    import torch

    torch.manual_seed(0)
    return models.build_model(tiny_cfg)
