"""Every U-Net a config builds sees the timestep and the label at every level."""

import dataclasses

import pytest
import torch

from utils import config, models, training

PRESETS = [(name, preset) for name in ("mnist", "anime", "iclevr")
           for preset in ("full", *config.CONFIGS[name].PRESETS)]


def _probe_size(cfg) -> int:
    """The smallest image that still halves down to 2 px through every level: the same blocks, probed faster."""
    return 2 ** len(cfg.block_out_channels)


@pytest.mark.parametrize("name,preset", PRESETS)
def test_every_resnet_block_of_every_config_reacts_to_the_timestep_and_the_label(name, preset, tmp_path):
    cfg = config.make_config(name, preset, workdir=str(tmp_path))
    torch.manual_seed(0)
    response = models.conditioning_response(models.build_model(cfg), image_size=_probe_size(cfg))
    levels = len(cfg.block_out_channels)   # down: layers per level; mid: 2; up: layers + 1 per level
    assert len(response) == levels * cfg.layers_per_block + 2 + levels * (cfg.layers_per_block + 1)
    expected = {"t", "label"} if cfg.num_labels else {"t"}
    weak = {block: r for block, r in response.items() if set(r) != expected or min(r.values()) < 1e-3}
    assert not weak, f"{name}/{preset}: blocks that barely react to their condition: {weak}"


def test_the_probe_finds_the_28px_level_the_old_mnist_config_could_not_condition(tmp_path):
    """MNIST's full config before issue 20: widths (32, 64, 128) in 32 groups, the embedding added before the norm."""
    cfg = config.make_config("mnist", "full", workdir=str(tmp_path))
    cfg.norm_num_groups, cfg.resnet_time_scale_shift = 32, "default"     # set past the config's check on purpose
    torch.manual_seed(0)
    response = models.conditioning_response(models.build_model(cfg), image_size=8)
    blind = sorted(block for block, r in response.items() if r["t"] < 1e-5)
    assert blind == ["down_blocks.0.resnets.0", "down_blocks.0.resnets.1",
                     "up_blocks.2.resnets.0", "up_blocks.2.resnets.1", "up_blocks.2.resnets.2"]
    assert all(r["t"] > 1e-3 for block, r in response.items() if block not in blind)


def test_the_probe_sees_a_label_that_cannot_reach_a_level(tmp_path):
    cfg = config.make_config("iclevr", "smoke", workdir=str(tmp_path))
    cfg.norm_num_groups, cfg.resnet_time_scale_shift = 8, "default"      # 8 channels in 8 groups at the top level
    torch.manual_seed(0)
    blind = models.blind_blocks(models.build_model(cfg), image_size=8)
    assert blind and all(block.startswith(("down_blocks.0.", "up_blocks.2.")) for block in blind)


def test_a_config_that_would_leave_a_level_blind_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"one channel per GroupNorm group at width 32.*'scale_shift'.*norm_num_groups=16"):
        config.make_config("mnist", "full", workdir=str(tmp_path), norm_num_groups=32, resnet_time_scale_shift="default")
    with pytest.raises(ValueError, match="resnet_time_scale_shift='film'"):
        config.make_config("mnist", "full", workdir=str(tmp_path), resnet_time_scale_shift="film")
    # FiLM after the norm keeps the embedding whatever the groups: allowed
    config.make_config("mnist", "full", workdir=str(tmp_path), norm_num_groups=32)


def test_a_checkpoint_from_before_film_is_refused_with_the_existing_message(tiny_cfg):
    """resnet_time_scale_shift is new: a checkpoint that never saved it added the embedding before the norm,
    and its weights (time_emb_proj is half as wide) must never be loaded into a FiLM network."""
    from utils import data, diffusion

    old = dataclasses.replace(tiny_cfg, resnet_time_scale_shift="default")
    images = torch.randint(0, 256, (32, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    loader = data.BatchLoader(data.ImageSet(images, None, "random"), old.batch_size)
    training.train(models.build_model(old), diffusion.make_loss_fn(diffusion.schedule_from_config(old)), loader, old,
                   progress=False)
    ckpt = torch.load(training.checkpoint_path(old.checkpoint_dir), weights_only=True)
    del ckpt["config"]["resnet_time_scale_shift"]                       # as a checkpoint from before the field
    assert config.from_saved(ckpt["config"], tiny_cfg).resnet_time_scale_shift == "default"
    torch.save(ckpt, training.checkpoint_path(old.checkpoint_dir))
    with pytest.raises(training.CheckpointError,
                       match=r"resnet_time_scale_shift: checkpoint has 'default', config has 'scale_shift'"):
        training.load_checkpoint(training.checkpoint_path(tiny_cfg.checkpoint_dir), tiny_cfg)
