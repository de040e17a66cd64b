"""The one training loop: history, checkpoints, resume, guards."""

import dataclasses

import pytest
import torch

from utils import data, diffusion, models, training


def _loader(cfg, n=64):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return data.BatchLoader(data.ImageSet(images, None, "random"), cfg.batch_size, seed=cfg.seed)


def _train(cfg, model=None, **kwargs):
    torch.manual_seed(cfg.seed)
    model = model or models.build_model(cfg)
    loss_fn = diffusion.make_loss_fn(diffusion.schedule_from_config(cfg))
    return training.train(model, loss_fn, _loader(cfg), cfg, progress=False, **kwargs)


def test_history_has_one_finite_loss_per_iteration(tiny_cfg):
    result = _train(tiny_cfg)
    assert result.step == tiny_cfg.max_steps == len(result.loss_history)
    assert all(torch.isfinite(torch.tensor(result.loss_history)))


def test_checkpoint_loads_with_weights_only_and_holds_the_state(tiny_cfg):
    result = _train(tiny_cfg)
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["step"] == tiny_cfg.max_steps
    assert ckpt["config"]["block_out_channels"] == tiny_cfg.block_out_channels
    assert ckpt["loss_history"].tolist() == result.loss_history
    for key in ("model", "ema", "optimizer", "lr_scheduler", "rng"):
        assert key in ckpt
    assert not list(result.checkpoint.parent.glob("*.tmp"))  # written atomically


def test_load_ema_model_returns_the_ema_weights(tiny_cfg):
    result = _train(tiny_cfg)
    fresh = training.load_ema_model(models.build_model(tiny_cfg), tiny_cfg)  # on the CPU: the weights land there
    for a, b in zip(fresh.parameters(), result.ema_model.parameters()):
        torch.testing.assert_close(a, b.cpu())


def test_interrupted_run_resumes_to_the_same_weights_and_history(tmp_path, tiny_cfg):
    straight = dataclasses.replace(tiny_cfg, max_steps=8, checkpoint_dir=str(tmp_path / "straight"))
    reference = _train(straight)

    split = dataclasses.replace(straight, checkpoint_dir=str(tmp_path / "split"))
    first = _train(dataclasses.replace(split, max_steps=None, time_budget_minutes=1e-9))  # stops after 1 step
    assert first.stop_reason == "time budget" and first.step == 1
    torch.manual_seed(123)  # a different global RNG state: the resume must restore the saved one
    resumed = _train(split, model=models.build_model(split))
    assert resumed.step == 8 and len(resumed.loss_history) == 8
    torch.testing.assert_close(torch.tensor(resumed.loss_history), torch.tensor(reference.loss_history))
    for a, b in zip(resumed.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(resumed.ema_model.parameters(), reference.ema_model.parameters()):
        torch.testing.assert_close(a, b)


def test_rerunning_a_finished_run_trains_nothing(tiny_cfg):
    first = _train(tiny_cfg)
    again = _train(tiny_cfg)
    assert again.stop_reason == "already done" and again.loss_history == first.loss_history


def test_resume_false_starts_over_and_keeps_the_old_checkpoint(tiny_cfg):
    _train(tiny_cfg)
    result = _train(dataclasses.replace(tiny_cfg, resume=False))
    assert result.step == tiny_cfg.max_steps and len(result.loss_history) == tiny_cfg.max_steps
    assert len(list(result.checkpoint.parent.glob("replaced_*[0-9].pt"))) == 1   # last.pt, set aside


def test_checkpoint_from_another_architecture_is_refused_with_the_difference(tiny_cfg):
    _train(tiny_cfg)
    other = dataclasses.replace(tiny_cfg, block_out_channels=(16, 32), max_steps=10)
    with pytest.raises(training.CheckpointError, match=r"block_out_channels: checkpoint has \(8, 16\)"):
        _train(other)


def test_a_file_that_is_not_a_checkpoint_is_refused(tiny_cfg):
    path = training.checkpoint_path(tiny_cfg.checkpoint_dir)
    path.parent.mkdir(parents=True)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(training.CheckpointError, match="not a checkpoint"):
        _train(tiny_cfg)


def test_a_bare_state_dict_saved_over_last_pt_falls_back_to_the_one_before(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, max_steps=4, checkpoint_every=2, log_every=2)
    _train(cfg)                                                      # checkpoints at 2 and 4: 2 is kept as previous
    path = training.checkpoint_path(tiny_cfg.checkpoint_dir)
    torch.save(models.build_model(tiny_cfg).state_dict(), path)     # a student's torch.save(model.state_dict(), ...)
    with pytest.warns(UserWarning, match=r"bare state dict.*using the checkpoint before it, last\.previous\.pt \(step 2\)"):
        result = _train(dataclasses.replace(cfg, max_steps=5))
    assert result.step == 5 and len(result.loss_history) == 5       # resumed from step 2
    assert len(list(path.parent.glob("last.damaged-*.pt"))) == 1      # the weights are kept, renamed


def test_a_bare_state_dict_with_nothing_to_fall_back_on_says_how_to_use_it(tiny_cfg):
    path = training.checkpoint_path(tiny_cfg.checkpoint_dir)
    path.parent.mkdir(parents=True)
    torch.save(models.build_model(tiny_cfg).state_dict(), path)
    with pytest.raises(training.CheckpointError, match=r"only a network's weights.*model\.load_state_dict") as err:
        _train(tiny_cfg)
    assert "Point checkpoint_dir at this bundle" not in str(err.value)


def test_another_notebooks_checkpoint_is_named_as_such(tiny_cfg):
    from utils import config

    path = training.checkpoint_path(tiny_cfg.checkpoint_dir)        # an MNIST run's checkpoint …
    path.parent.mkdir(parents=True)
    torch.save({"format": training.CHECKPOINT_FORMAT, "config": tiny_cfg.to_dict(), "step": 6}, path)
    anime = config.make_config("anime", "smoke", workdir=tiny_cfg.workdir, checkpoint_dir=tiny_cfg.checkpoint_dir)
    with pytest.raises(training.CheckpointError, match="is an 'mnist' checkpoint, not an 'anime' one") as err:
        training.load_checkpoint(training.checkpoint_path(anime.checkpoint_dir), anime)
    assert "block_out_channels" not in str(err.value)                  # one reason, not five differing fields


def test_a_run_keeps_its_run_id_across_resumes_and_a_new_run_gets_another(tiny_cfg):
    first = _train(dataclasses.replace(tiny_cfg, max_steps=1))
    resumed = _train(dataclasses.replace(tiny_cfg, max_steps=2))
    saved = training.load_checkpoint(training.checkpoint_path(tiny_cfg.checkpoint_dir))
    assert first.run_id and resumed.run_id == first.run_id == saved["run_id"] and saved["step"] == resumed.step == 2
    assert _train(dataclasses.replace(tiny_cfg, max_steps=1, resume=False)).run_id != first.run_id


def test_a_run_whose_lock_was_taken_over_stops_at_its_next_checkpoint_without_writing(tiny_cfg):
    import json

    cfg = dataclasses.replace(tiny_cfg, max_steps=4, checkpoint_every=2, log_every=1)   # checkpoints at 2 and 4
    lock = training.TrainingLock(cfg.checkpoint_dir).path

    def taken_over_after_step_2(progress):                          # paused past the staleness: another run took it
        if progress.step == 3:
            lock.write_text(json.dumps({"token": "other", "host": "colab-2", "pid": 1, "since": "2026-12-01 10:00"}))

    with pytest.raises(training.LockLost, match=r"no longer holds the lock.*colab-2.*step 4 was not written"):
        _train(cfg, on_log=taken_over_after_step_2)
    assert training.load_checkpoint(training.checkpoint_path(cfg.checkpoint_dir))["step"] == 2
    assert json.loads(lock.read_text())["token"] == "other"            # the other run's lock is left alone
    assert not list(lock.parent.glob("*.tmp"))


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_cfg):
    calls = {"n": 0}
    schedule = diffusion.schedule_from_config(tiny_cfg)

    def exploding_loss(model, batch):
        calls["n"] += 1
        loss = diffusion.diffusion_loss(model, batch["x0"], schedule)
        return loss * float("nan") if calls["n"] > 4 else loss

    with pytest.raises(FloatingPointError, match="step 5"):
        training.train(models.build_model(tiny_cfg), exploding_loss, _loader(tiny_cfg), tiny_cfg, progress=False)
    ckpt = torch.load(training.checkpoint_path(tiny_cfg.checkpoint_dir), weights_only=True)
    assert ckpt["step"] == 4 and torch.isfinite(ckpt["loss_history"]).all()


def test_on_log_sees_growing_history_and_a_final_call(tiny_cfg):
    seen = []
    _train(tiny_cfg, on_log=lambda p: seen.append((p.step, len(p.loss_history), p.final)))
    assert [s for s, _, _ in seen] == [2, 4, 6]
    assert all(step == n for step, n, _ in seen) and seen[-1][2]


def test_ema_lags_behind_the_raw_weights(tiny_cfg):
    result = _train(tiny_cfg)
    diffs = [(a - b).abs().max() for a, b in zip(result.model.parameters(), result.ema_model.parameters())]
    assert max(diffs) > 0


def test_channels_last_trains_and_its_checkpoint_loads_into_a_plain_model(tiny_cfg):
    result = _train(dataclasses.replace(tiny_cfg, channels_last=True))
    assert result.step == len(result.loss_history) == tiny_cfg.max_steps
    training.load_ema_model(models.build_model(tiny_cfg), tiny_cfg)


def test_a_run_in_another_precision_gets_its_own_accelerator(tiny_cfg):
    training.notebook_accelerator("bf16")   # what an earlier run in bf16 (a DDPM on an A100) leaves in the process
    result = _train(dataclasses.replace(tiny_cfg, mixed_precision="no"))   # a DCGAN in fp32, as in notebook 04
    assert result.step == tiny_cfg.max_steps


def test_the_trained_networks_come_back_without_the_training_autocast(tiny_cfg, monkeypatch):
    monkeypatch.setenv("DDPM_DEVICE", "cpu")                  # CPU bf16 autocast: the stand-in has none
    monkeypatch.delenv("ACCELERATE_TORCH_DEVICE", raising=False)
    result = _train(dataclasses.replace(tiny_cfg, mixed_precision="bf16"))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    for net in (result.model, result.ema_model):
        plain = models.build_model(tiny_cfg)
        plain.load_state_dict(net.state_dict())
        assert "_original_forward" not in vars(net)
        assert torch.equal(net(x, t).sample, plain(x, t).sample)   # fp32, not bf16: samplers choose the precision


# ----------------------------------------------------------------------------- faults: nothing lost
def test_a_second_run_on_the_same_folder_is_refused_while_the_first_is_alive(tiny_cfg):
    import socket
    import subprocess

    other = subprocess.Popen(["sleep", "30"])          # a live process on this host holds the lock
    try:
        lock = training.TrainingLock(tiny_cfg.checkpoint_dir).path
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(f"{socket.gethostname()} pid {other.pid} since 2026-12-01 10:00:00")
        with pytest.raises(training.CheckpointError, match="Another run is training"):
            _train(tiny_cfg)
        assert not training.checkpoint_path(tiny_cfg.checkpoint_dir).exists()
    finally:
        other.kill()
        other.wait()


def test_a_lock_left_by_a_process_that_ended_is_taken_over(tiny_cfg):
    import socket
    import subprocess

    ended = subprocess.Popen(["true"])
    ended.wait()
    lock = training.TrainingLock(tiny_cfg.checkpoint_dir).path
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{socket.gethostname()} pid {ended.pid} since 2026-12-01 10:00:00")
    assert _train(tiny_cfg).step == tiny_cfg.max_steps and not lock.exists()   # released at the end


def test_weights_gone_non_finite_at_a_checkpoint_step_are_never_saved(tiny_cfg):
    schedule = diffusion.schedule_from_config(tiny_cfg)
    calls = {"n": 0}

    def breaking_loss(model, batch):                    # finite losses, but step 8's gradient (so its update) is NaN
        calls["n"] += 1
        if calls["n"] == 8:
            next(model.parameters()).register_hook(lambda grad: torch.full_like(grad, float("nan")))
        return diffusion.diffusion_loss(model, batch["x0"], schedule)

    cfg = dataclasses.replace(tiny_cfg, max_steps=8, log_every=100)
    with pytest.raises(FloatingPointError, match=r"by step 8.*last good checkpoint .* \(step 4\)"):
        training.train(models.build_model(cfg), breaking_loss, _loader(cfg), cfg, progress=False)
    ckpt = training.load_checkpoint(training.checkpoint_path(cfg.checkpoint_dir))
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tiny_cfg):
    _train(dataclasses.replace(tiny_cfg, max_steps=8))             # checkpoints at 4 and 8: 4 is kept as previous
    path = training.checkpoint_path(tiny_cfg.checkpoint_dir)
    path.write_bytes(path.read_bytes()[:1000])                       # a truncated copy (a half-synced Drive file)
    with pytest.warns(UserWarning, match="previous"):
        result = _train(dataclasses.replace(tiny_cfg, max_steps=10))
    assert result.step == 10 and len(result.loss_history) == 10     # resumed from step 4, history intact
    assert len(list(path.parent.glob("last.damaged-*.pt"))) == 1      # set aside, not rotated over the good one


def test_a_missing_latest_checkpoint_resumes_from_the_one_before(tiny_cfg):
    _train(dataclasses.replace(tiny_cfg, max_steps=8))
    training.checkpoint_path(tiny_cfg.checkpoint_dir).unlink()     # e.g. killed between the two renames
    with pytest.warns(UserWarning, match="previous"):
        result = _train(dataclasses.replace(tiny_cfg, max_steps=10))
    assert result.step == 10 and len(result.loss_history) == 10


def test_resume_false_sets_both_earlier_checkpoints_aside(tiny_cfg):
    _train(dataclasses.replace(tiny_cfg, max_steps=8))
    result = _train(dataclasses.replace(tiny_cfg, max_steps=3, resume=False))
    folder = result.checkpoint.parent
    assert result.step == 3 and len(list(folder.glob("replaced_*.previous.pt"))) == 1
    assert not (folder / "last.previous.pt").exists()


def test_temp_files_of_a_killed_save_are_removed_by_the_next_run(tiny_cfg):
    path = training.checkpoint_path(tiny_cfg.checkpoint_dir)
    path.parent.mkdir(parents=True)
    leftover = path.with_name(".last.pt.12345.abcdef01.tmp")
    leftover.write_bytes(b"half a checkpoint")
    _train(tiny_cfg)
    assert not leftover.exists()


def test_a_full_disk_names_the_checkpoint_and_keeps_the_last_good_one(tiny_cfg, monkeypatch):
    cfg = dataclasses.replace(tiny_cfg, max_steps=8)
    real_save, saves = torch.save, {"n": 0}

    def save_then_disk_full(obj, f, *args, **kwargs):   # what torch's zip writer raises when the disk fills
        saves["n"] += 1
        if saves["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4672 vs 4567")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_disk_full)
    with pytest.raises(training.CheckpointError, match=r"unexpected pos.*\(step 4\).*Free space"):
        _train(cfg)
    path = training.checkpoint_path(cfg.checkpoint_dir)
    assert training.load_checkpoint(path)["step"] == 4 and not list(path.parent.glob("*.tmp"))


def test_an_unwritable_checkpoint_folder_is_named_before_training(tiny_cfg, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: use a path under a file instead")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(training.CheckpointError, match="Cannot write to checkpoint_dir"):
        _train(dataclasses.replace(tiny_cfg, checkpoint_dir=str(locked / "run")))


def test_a_checkpoint_folder_that_cannot_exist_is_named_before_training(tiny_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(training.CheckpointError, match="Cannot write to checkpoint_dir"):
        _train(dataclasses.replace(tiny_cfg, checkpoint_dir=str(blocker / "run")))


# ----------------------------------------------------------------------------- experiments and changed settings
def test_a_finished_run_asked_for_other_training_settings_names_them_instead_of_already_done(tiny_cfg):
    _train(tiny_cfg)
    changed = dataclasses.replace(tiny_cfg, learning_rate=tiny_cfg.learning_rate / 10, batch_size=8)
    with pytest.raises(training.CheckpointError) as err:
        _train(changed)
    message = str(err.value)
    assert f"learning_rate: checkpoint has {tiny_cfg.learning_rate!r}" in message
    assert "batch_size: checkpoint has 16, config has 8" in message
    assert "is finished" in message and "run_name=" in message and "max_steps" in message


def test_an_unfinished_run_resumes_with_a_lower_learning_rate_but_not_another_batch_size(tiny_cfg, capsys):
    _train(dataclasses.replace(tiny_cfg, time_budget_minutes=1e-9))          # stops after one step
    with pytest.raises(training.CheckpointError, match="batch_size: checkpoint has 16, config has 8"):
        _train(dataclasses.replace(tiny_cfg, batch_size=8))
    lower = dataclasses.replace(tiny_cfg, learning_rate=tiny_cfg.learning_rate / 4, lr_schedule="constant")
    with pytest.raises(training.CheckpointError, match="lr_schedule"):    # the schedule is not adjustable
        _train(lower)
    lower = dataclasses.replace(tiny_cfg, learning_rate=tiny_cfg.learning_rate / 4)
    result = _train(lower)
    assert result.step == tiny_cfg.max_steps
    assert "with your changed settings: learning_rate" in capsys.readouterr().out
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["lr_scheduler"]["base_lrs"] == [lower.learning_rate]          # the new peak was used
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == lower.learning_rate


def test_an_experiment_with_a_run_name_leaves_the_hand_in_run_untouched(tmp_path):
    from utils import config

    handin = config.make_config("mnist", "smoke", workdir=str(tmp_path), max_steps=2, checkpoint_every=2)
    _train(handin)
    before = training.checkpoint_path(handin.checkpoint_dir).read_bytes()
    experiment = config.make_config("mnist", "smoke", workdir=str(tmp_path), max_steps=2, checkpoint_every=2,
                                    run_name="lr-high", learning_rate=1e-2)
    result = _train(experiment)
    assert result.checkpoint == tmp_path / "checkpoints" / "mnist-lr-high" / "last.pt"
    assert experiment.output_dir == str(tmp_path / "outputs" / "mnist-lr-high")
    assert training.checkpoint_path(handin.checkpoint_dir).read_bytes() == before
    # notebook 04 rebuilds each run's config from its checkpoint
    rebuilt = training.trained_config("mnist", "lr-high", workdir=str(tmp_path))
    assert rebuilt.learning_rate == 1e-2 and rebuilt.architecture() == experiment.architecture()
    assert rebuilt.checkpoint_dir == experiment.checkpoint_dir
    with pytest.raises(training.CheckpointError, match="No checkpoint"):
        training.trained_config("mnist", "never-trained", workdir=str(tmp_path))


def test_a_network_edited_since_the_checkpoint_gets_a_message_not_a_key_list(tiny_cfg):
    _train(tiny_cfg)
    edited = models.build_model(tiny_cfg)
    edited.extra_head = torch.nn.Linear(3, 3)                                   # a student's edit of models.py
    with pytest.raises(training.CheckpointError) as err:
        training.load_ema_model(edited, tiny_cfg)
    message = str(err.value)
    assert "network code changed" in message and "extra_head.weight" in message and "run_name=" in message
    assert message.count("extra_head") <= 3                                     # a few names, not hundreds
    with pytest.raises(training.CheckpointError, match="network code changed"):
        _train(dataclasses.replace(tiny_cfg, max_steps=tiny_cfg.max_steps + 2), model=edited)
