"""The DCGAN baseline: shapes, a few steps through the one training loop, checkpoints and resume."""

import copy

import pytest
import torch

from utils import compare, config, data, gan, models, training


@pytest.mark.parametrize("size, channels", [(28, 1), (64, 3)])
def test_generator_and_discriminator_shapes(size, channels):
    g = models.dcgan_generator(size, channels, latent_dim=16, width=8)
    d = models.dcgan_discriminator(size, channels, width=8)
    images = g(torch.randn(3, 16, 1, 1))
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1                                     # tanh output
    assert d(images).shape == (3,)


def test_full_size_64px_dcgan_has_the_papers_widths():
    g, d = models.dcgan_generator(64, 3), models.dcgan_discriminator(64, 3)
    assert g[0].out_channels == 512 and d[-2].in_channels == 512       # 4×4 × 512 at the bottom
    assert models.count_parameters(g) == 3_576_704


def test_sizes_that_do_not_halve_to_a_small_map_are_refused():
    with pytest.raises(ValueError, match="e.g. 28, 32 or 64"):
        models.dcgan_generator(27, 1)


def gan_setup(tmp_path, **overrides):
    cfg = config.make_config("dcgan_mnist", "smoke", workdir=str(tmp_path), **overrides)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    loader = data.BatchLoader(data.ImageSet(images, None, "random"), cfg.batch_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    return cfg, loader, gan.build_dcgan(cfg)


def test_a_few_loop_steps_train_both_players(tmp_path):
    cfg, loader, model = gan_setup(tmp_path)
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    result = training.train(model, gan.loss_fn, loader, cfg, progress=False)
    assert result.step == cfg.max_steps and len(result.loss_history) == cfg.max_steps
    assert len(result.model.d_loss_history) == cfg.max_steps
    assert all(not torch.equal(a, b.cpu()) for a, b in zip(g0, result.model.generator.parameters()))
    assert all(not torch.equal(a, b.cpu()) for a, b in zip(d0, result.model.discriminator.parameters()))


def test_the_loops_optimizer_uses_the_gan_betas(tmp_path):
    cfg, loader, model = gan_setup(tmp_path)
    assert cfg.adam_betas == (0.5, 0.999) and model.d_optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    training.train(model, gan.loss_fn, loader, cfg, progress=False)
    ckpt = training.load_checkpoint(training.checkpoint_path(cfg.checkpoint_dir), cfg)
    assert tuple(ckpt["optimizer"]["param_groups"][0]["betas"]) == (0.5, 0.999)


def test_checkpoint_round_trip_restores_both_players_and_ds_optimizer(tmp_path):
    cfg, loader, model = gan_setup(tmp_path)
    result = training.train(model, gan.loss_fn, loader, cfg, progress=False)
    loaded = training.load_ema_model(gan.build_dcgan(cfg), cfg)
    for a, b in zip(result.model.state_dict().values(), loaded.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a.cpu(), b.cpu())    # trained on the device, loaded on the CPU
    assert loaded.d_loss_history == pytest.approx(result.model.d_loss_history)
    assert len(loaded.d_optimizer.state_dict()["state"]) == len(list(loaded.discriminator.parameters()))
    assert torch.equal(gan.sample(loaded, 4, seed=1), gan.sample(result.model, 4, seed=1))


def test_an_interrupted_gan_run_resumes_like_an_uninterrupted_one(tmp_path):
    cfg, loader, model = gan_setup(tmp_path / "straight")
    straight = training.train(model, gan.loss_fn, loader, cfg, progress=False)
    cfg, loader, model = gan_setup(tmp_path / "resumed", max_steps=4)
    training.train(model, gan.loss_fn, loader, cfg, progress=False)
    cfg, loader, model = gan_setup(tmp_path / "resumed")                # same dir, max_steps back to 6
    resumed = training.train(model, gan.loss_fn, loader, cfg, progress=False)
    assert resumed.loss_history == pytest.approx(straight.loss_history)
    assert resumed.model.d_loss_history == pytest.approx(straight.model.d_loss_history)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_samples_are_seeded_images_in_model_space(tmp_path):
    _, _, model = gan_setup(tmp_path)
    images = gan.sample(model, 5, seed=3)
    assert images.shape == (5, 1, 28, 28) and images.abs().max() <= 1
    assert torch.equal(images, gan.sample(model.generator, 5, seed=3))
    assert model.generator.training                                     # sampling leaves the mode alone


def test_missing_ddpm_checkpoint_names_the_notebook_the_run_and_the_runs_there_are(tmp_path):
    for trained in ("mnist", "mnist-drop0"):                           # two runs with a checkpoint, not 'cosine'
        (tmp_path / "checkpoints" / trained).mkdir(parents=True)
        training.checkpoint_path(tmp_path / "checkpoints" / trained).touch()
    cfg = config.make_config("mnist", "smoke", workdir=str(tmp_path), run_name="cosine")
    with pytest.raises(training.CheckpointError) as err:
        compare.load_trained(models.build_model(cfg), cfg, "01_mnist_ddpm")
    message = str(err.value)
    assert "Run notebook 01_mnist_ddpm first" in message and "run_name='cosine'" in message
    assert str(training.checkpoint_path(cfg.checkpoint_dir)) in message and "'', 'drop0'" in message
    assert "preset" not in message                                     # the config comes from the checkpoint


def test_a_training_step_is_timed_on_a_copy(tmp_path):
    cfg, loader, model = gan_setup(tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    seconds = compare.seconds_per_step(model, gan.loss_fn, next(loader.epoch(0)), cfg, repeats=1)
    assert seconds > 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_timing_a_gan_steps_only_the_generator_with_the_loops_optimizer(tmp_path, monkeypatch):
    """D steps itself inside gan.loss_fn: an optimizer over all parameters would step it twice per iteration."""
    cfg, loader, model = gan_setup(tmp_path)
    made, timed = [], []
    make_accelerator = training.notebook_accelerator
    monkeypatch.setattr(training, "notebook_accelerator", lambda precision: made.append(make_accelerator(precision))
                        or made[-1])

    def loss_fn(twin, batch):
        timed.append(twin)
        return gan.loss_fn(twin, batch)

    compare.seconds_per_step(model, loss_fn, next(loader.epoch(0)), cfg, repeats=1)
    (optimizer,) = made[0]._optimizers                                 # the one the timed step prepared
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in stepped} == {id(p) for p in timed[0].generator.parameters()}
    assert optimizer.param_groups[0]["betas"] == cfg.adam_betas


def test_one_iteration_is_one_adam_step_for_each_player(tmp_path):
    """D: one Adam step on −log D(x) − log(1 − D(G(z))); then G: one Adam step on −log D(G(z)) with the new D."""
    cfg, loader, model = gan_setup(tmp_path, max_steps=1)
    device = config.pick_device()
    model.to(device)
    reference = copy.deepcopy(model)
    real = next(loader.epoch(0))["x0"].to(device)
    torch.manual_seed(5)
    training.train(model, gan.loss_fn, loader, cfg, progress=False)

    torch.manual_seed(5)                                  # the same z as the loop's iteration
    z = torch.randn(len(real), cfg.latent_dim, 1, 1, device=device)
    G, D = reference.generator, reference.discriminator
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    d_opt = torch.optim.Adam(D.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas)
    fake = G(z)
    d_loss = bce(D(real), torch.ones(len(real), device=device)) + bce(D(fake.detach()), torch.zeros(len(real), device=device))
    d_loss.backward()
    d_opt.step()
    g_opt = torch.optim.Adam(G.parameters(), lr=cfg.learning_rate, betas=cfg.adam_betas)
    D.requires_grad_(False)
    bce(D(fake), torch.ones(len(real), device=device)).backward()
    g_opt.step()
    for trained, by_hand in ((model.discriminator, D), (model.generator, G)):
        for a, b in zip(trained.parameters(), by_hand.parameters()):
            torch.testing.assert_close(a, b)
