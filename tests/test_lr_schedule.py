"""The learning-rate schedule of a run whose planned length changes: a warm restart after a finished run."""

import dataclasses

import torch
from diffusers.optimization import get_scheduler

from utils import data, diffusion, models, training


def _schedule(cfg, total):
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate)
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total)
    scheduler.span = (0, total)
    return optimizer, scheduler


def _lrs(optimizer, scheduler, steps):
    out = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_a_finished_run_trained_longer_warms_up_again_and_decays_over_the_added_steps(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, max_steps=100, warmup_steps=10, learning_rate=1e-3)
    optimizer, scheduler = _schedule(cfg, 100)
    assert _lrs(optimizer, scheduler, 100)[-1] == 0.0                            # finished: lr decayed to 0
    ckpt = {"config": cfg.to_dict(), "step": 100, "lr_schedule_span": [0, 100]}
    longer = dataclasses.replace(cfg, max_steps=200)
    note = training._continue_schedule(scheduler, longer, ckpt, 200, steps_per_epoch=8)
    assert "warm-up over 10 steps" in note and "100 added steps" in note
    lrs = _lrs(optimizer, scheduler, 100)
    assert lrs[0] < 2e-4 and max(lrs) == 1e-3 and lrs.index(max(lrs)) == 9       # up in 10 steps, not a jump
    assert lrs[-1] == 0.0 and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))      # then one decay to step 200
    assert scheduler.span == (100, 200)


def test_an_unfinished_run_planned_longer_keeps_its_schedule_and_ends_its_decay_later(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, max_steps=100, warmup_steps=10, learning_rate=1e-3)
    optimizer, scheduler = _schedule(cfg, 100)
    _lrs(optimizer, scheduler, 50)
    note = training._continue_schedule(scheduler, dataclasses.replace(cfg, max_steps=200),
                                       {"config": cfg.to_dict(), "step": 50, "lr_schedule_span": [0, 100]}, 200, 8)
    assert "ends at step 200 instead of 100" in note
    _, reference = _schedule(cfg, 200)                                            # as if planned for 200 from the start
    lrs = _lrs(optimizer, scheduler, 150)
    assert abs(lrs[0] - reference.lr_lambdas[0](51) * 1e-3) < 1e-12 and lrs[-1] == 0.0


def test_a_checkpoint_from_before_the_span_was_saved_counts_its_planned_steps(tiny_cfg):
    """No ``lr_schedule_span``: the schedule ran from 0 to the saved max_steps (or num_epochs × batches)."""
    cfg = dataclasses.replace(tiny_cfg, max_steps=None, num_epochs=2, warmup_steps=2)
    optimizer, scheduler = _schedule(cfg, 16)
    _lrs(optimizer, scheduler, 16)
    note = training._continue_schedule(scheduler, dataclasses.replace(cfg, num_epochs=4),
                                       {"config": cfg.to_dict(), "step": 16}, 32, steps_per_epoch=8)
    assert "finished its learning-rate schedule at step 16" in note


def test_training_a_finished_run_longer_saves_the_new_span_and_says_so(tiny_cfg, capsys):
    images = torch.randint(0, 256, (32, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    loader = data.BatchLoader(data.ImageSet(images, None, "random"), tiny_cfg.batch_size)
    loss_fn = diffusion.make_loss_fn(diffusion.schedule_from_config(tiny_cfg))
    training.train(models.build_model(tiny_cfg), loss_fn, loader, tiny_cfg, progress=False)
    longer = dataclasses.replace(tiny_cfg, max_steps=tiny_cfg.max_steps + 4)
    training.train(models.build_model(longer), loss_fn, loader, longer, progress=False)
    assert "finished its learning-rate schedule" in capsys.readouterr().out
    ckpt = torch.load(training.checkpoint_path(longer.checkpoint_dir), weights_only=True)
    assert ckpt["step"] == longer.max_steps and ckpt["lr_schedule_span"] == [tiny_cfg.max_steps, longer.max_steps]


# The course's datasets: 60,000 MNIST digits, 21,376 faces, 18,009 iCLEVR scenes.
DATASET_SIZES = {"mnist": 60000, "anime": 21376, "iclevr": 18009}


def test_every_full_run_reaches_its_configured_ema_decay_before_it_ends(tmp_path):
    """diffusers' EMAModel warms its decay up as (1 + step)/(10 + step): a cap that is never reached is not the
    decay the run uses."""
    from diffusers.training_utils import EMAModel

    from utils import config
    for name, size in DATASET_SIZES.items():
        cfg = config.make_config(name, "full", workdir=str(tmp_path))
        steps = cfg.num_epochs * (size // cfg.batch_size)
        ema = EMAModel([torch.zeros(1)], decay=cfg.ema_decay)
        assert ema.get_decay(steps) == cfg.ema_decay, f"{name}: decay {ema.get_decay(steps):.5f} at step {steps}"
