"""The hand-written DDPM math agrees with diffusers; samplers behave."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from utils import diffusion


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_schedule_betas_equal_diffusers(beta_schedule):
    ours = diffusion.make_schedule(1000, beta_schedule, 1e-4, 0.02)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_q_sample_equals_diffusers_add_noise():
    schedule = diffusion.make_schedule(1000)
    ref = DDPMScheduler(num_train_timesteps=1000)
    x0, noise = torch.rand(6, 3, 8, 8) * 2 - 1, torch.randn(6, 3, 8, 8)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise, schedule), ref.add_noise(x0, noise, t))


def test_q_sample_at_last_step_is_almost_pure_noise():
    schedule = diffusion.make_schedule(1000)
    x0, noise = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    # √ᾱ_T for the linear schedule is about 0.0064: the image is gone
    assert diffusion.q_sample(x0, torch.tensor([999]), noise, schedule).abs().max() < 0.01


@pytest.mark.parametrize("variance_type", diffusion.VARIANCE_TYPES)
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("t", [999, 500, 37, 1, 0])
def test_ddpm_step_equals_diffusers_step(t, clip_sample, variance_type):
    schedule = diffusion.make_schedule(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, clip_sample=clip_sample, variance_type=variance_type)
    xt, eps = torch.randn(2, 1, 6, 6) * 3, torch.randn(2, 1, 6, 6)
    ours = diffusion.ddpm_step(eps, t, xt, schedule, clip_sample=clip_sample,
                               generator=torch.Generator().manual_seed(7), variance_type=variance_type)
    theirs = ref.step(eps, t, xt, generator=torch.Generator().manual_seed(7)).prev_sample
    # diffusers forms β_t as 1 − ᾱ_t/ᾱ_{t−1}; in float32 that differs from β_t by up to ~2e-4 (relative)
    torch.testing.assert_close(ours, theirs, rtol=5e-4, atol=5e-4)


def test_make_diffusers_scheduler_uses_the_same_betas():
    schedule = diffusion.make_schedule(1000, "squaredcos_cap_v2")
    for name in diffusion.SAMPLERS:
        scheduler = diffusion.make_diffusers_scheduler(name, schedule)
        torch.testing.assert_close(scheduler.alphas_cumprod, schedule.alphas_cumprod)
    assert isinstance(diffusion.make_diffusers_scheduler("ddim", schedule), DDIMScheduler)


def test_diffusion_loss_is_mse_between_noise_and_prediction():
    schedule = diffusion.make_schedule(10)
    zero_model = lambda xt, t: torch.zeros_like(xt)  # ε_θ = 0 → loss = E‖ε‖² ≈ 1
    loss = diffusion.diffusion_loss(zero_model, torch.zeros(4096, 1, 2, 2), schedule)
    assert loss.item() == pytest.approx(1.0, abs=0.05)


def test_guided_noise_mixes_conditional_and_unconditional():
    class Fake(torch.nn.Module):
        """ε = 1 for a real label, 0 for the null label: the mix is then exactly w."""
        def forward(self, xt, t, labels, drop_labels=None):
            assert len(xt) == 2 * 3, "guidance must run one batched forward of 2B"
            return (~drop_labels).float().view(-1, 1, 1, 1).expand_as(xt)

    xt, labels = torch.zeros(3, 1, 2, 2), torch.ones(3, 4)
    for w in (0.0, 2.0, 4.5):
        eps = diffusion.guided_noise(Fake(), xt, torch.tensor([5]), labels, w)
        torch.testing.assert_close(eps, torch.full_like(xt, w))


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 5), ("dpm", 5)])
def test_samplers_return_finite_images_in_range(tiny_model, tiny_cfg, sampler, steps):
    schedule = diffusion.schedule_from_config(tiny_cfg)
    out = diffusion.sample(tiny_model, schedule, 3, (1, 28, 28), sampler=sampler,
                           num_inference_steps=steps, progress=False)
    assert out.images.shape == (3, 1, 28, 28)
    assert torch.isfinite(out.images).all()
    # clipping x̂0 keeps the final step's mean inside [-1, 1]
    assert out.images.min() >= -1.0001 and out.images.max() <= 1.0001


def test_sampling_is_deterministic_under_a_seed(tiny_model, tiny_cfg):
    schedule = diffusion.schedule_from_config(tiny_cfg)
    run = lambda seed: diffusion.sample(tiny_model, schedule, 2, (1, 28, 28), seed=seed, progress=False).images
    torch.testing.assert_close(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_sample_frames_go_from_noise_to_the_final_image(tiny_model, tiny_cfg):
    schedule = diffusion.schedule_from_config(tiny_cfg)
    out = diffusion.sample(tiny_model, schedule, 2, (1, 28, 28), num_frames=11, progress=False)
    assert len(out.frames) == 11
    assert out.frame_timesteps[0] == tiny_cfg.num_train_timesteps and out.frame_timesteps[-1] == 0
    assert out.frame_timesteps == sorted(out.frame_timesteps, reverse=True)
    torch.testing.assert_close(out.frames[-1], out.images)
    assert out.frames[0].std() > 0.8  # x_T ~ N(0, I)


def test_unknown_sampler_is_rejected(tiny_model, tiny_cfg):
    with pytest.raises(ValueError, match="ddpm"):
        diffusion.sample(tiny_model, diffusion.schedule_from_config(tiny_cfg), 1, (1, 28, 28), sampler="euler")


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_a_fast_sampler_asked_for_more_steps_than_T_says_so(sampler, tiny_model):
    schedule = diffusion.make_schedule(10)
    with pytest.raises(ValueError, match=r"num_inference_steps=25 .* T = 10 steps"):
        diffusion.sample(tiny_model, schedule, 1, (1, 28, 28), sampler=sampler, num_inference_steps=25, progress=False)


def test_algorithm_2s_variance_choice_is_refused_for_a_sampler_that_does_not_use_it(tiny_model):
    schedule = diffusion.make_schedule(10)
    with pytest.raises(ValueError, match="used by sampler='ddpm' only"):
        diffusion.sample(tiny_model, schedule, 1, (1, 28, 28), sampler="ddim", num_inference_steps=2,
                         variance_type="fixed_large", progress=False)
    with pytest.raises(ValueError, match="variance_type='large'"):
        diffusion.sample(tiny_model, schedule, 1, (1, 28, 28), variance_type="large", progress=False)
