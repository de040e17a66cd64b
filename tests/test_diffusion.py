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


def test_min_snr_weights_equal_the_diffusers_recipe():
    """diffusers' train_text_to_image.py: weights = min(SNR_t, γ) / SNR_t with its compute_snr."""
    from diffusers.training_utils import compute_snr
    schedule, gamma = diffusion.make_schedule(1000), 5.0
    t = torch.tensor([0, 10, 100, 300, 500, 999])
    snr = compute_snr(DDPMScheduler(num_train_timesteps=1000), t)
    torch.testing.assert_close(diffusion.min_snr_weights(t, schedule, gamma), snr.clamp(max=gamma) / snr)
    weights = diffusion.min_snr_weights(torch.arange(1000), schedule, gamma)
    assert weights.max() <= 1 and weights[-1] == 1 and weights[0] < 1e-3   # noisy steps keep 1, nearly clean ones shrink


def test_the_min_snr_loss_weights_each_sample_by_its_timestep():
    """The same draws (seed) give the plain loss for γ = 0 and the weighted mean of the per-sample errors for γ > 0."""
    schedule = diffusion.make_schedule(1000)
    zero_model = lambda xt, t: torch.zeros_like(xt)              # ε_θ = 0: each sample's error is mean(ε²)
    x0 = torch.zeros(64, 1, 4, 4)
    torch.manual_seed(0)
    plain = diffusion.diffusion_loss(zero_model, x0, schedule)
    torch.manual_seed(0)
    weighted = diffusion.diffusion_loss(zero_model, x0, schedule, min_snr_gamma=5.0)
    torch.manual_seed(0)
    t, noise = torch.randint(0, 1000, (64,)), torch.randn_like(x0)     # the draws diffusion_loss makes, in its order
    per_sample = noise.pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(plain, per_sample.mean())
    torch.testing.assert_close(weighted, (diffusion.min_snr_weights(t, schedule, 5.0) * per_sample).mean())
    assert weighted < plain


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


class LabelSpy(torch.nn.Module):
    """A conditional ε_θ that predicts 1 for a real label and 0 for the null label, and remembers the drop mask."""
    def forward(self, xt, t, labels, drop_labels=None):
        self.drop = drop_labels
        kept = torch.ones(len(xt), dtype=torch.bool) if drop_labels is None else ~drop_labels
        return kept.float().view(-1, 1, 1, 1).expand_as(xt)


def test_default_drop_mask_hides_each_label_with_probability_p():
    n, p = 20_000, 0.1
    drop = diffusion.draw_drop_mask(n, p, "cpu")
    assert drop.dtype == torch.bool and drop.shape == (n,)
    assert abs(drop.float().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5    # 5 binomial standard deviations
    assert not diffusion.draw_drop_mask(n, 0.0, "cpu").any() and diffusion.draw_drop_mask(n, 1.0, "cpu").all()


def test_the_loss_drops_the_labels_its_drop_fn_chooses():
    schedule, x0, labels = diffusion.make_schedule(10), torch.zeros(6, 1, 2, 2), torch.ones(6, 4)
    every_other = lambda batch_size, p, device: torch.arange(batch_size, device=device) % 2 == 0
    spy = LabelSpy()
    loss_fn = diffusion.make_loss_fn(schedule, conditional=True, cond_drop_prob=0.3, drop_fn=every_other)
    loss_fn(spy, {"x0": x0, "labels": labels})
    assert spy.drop.tolist() == [True, False] * 3
    diffusion.diffusion_loss(spy, x0, schedule, labels, cond_drop_prob=0.0, drop_fn=every_other)
    assert spy.drop is None                                   # p = 0: nothing is drawn, nothing dropped


def test_a_drop_fn_that_returns_no_bool_mask_is_refused_with_what_it_returned():
    schedule, x0, labels = diffusion.make_schedule(10), torch.zeros(6, 1, 2, 2), torch.ones(6, 4)
    as_floats = lambda batch_size, p, device: torch.rand(batch_size, device=device)
    with pytest.raises(ValueError, match=r"must return a \(6,\) bool tensor, got torch.float32 \(6,\)"):
        diffusion.diffusion_loss(LabelSpy(), x0, schedule, labels, cond_drop_prob=0.1, drop_fn=as_floats)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mix_guidance_is_the_cfg_formula_in_float32(dtype):
    cond, uncond = torch.randn(2, 3, 4, 4).to(dtype), torch.randn(2, 3, 4, 4).to(dtype)
    for w in (0.0, 1.0, 3.0):
        mixed = diffusion.mix_guidance(cond, uncond, w)
        assert mixed.dtype == torch.float32 and mixed.shape == cond.shape
        expected = uncond.double() + w * (cond.double() - uncond.double())
        torch.testing.assert_close(mixed.double(), expected, rtol=0, atol=1e-5)


def test_guided_noise_and_sample_mix_with_the_given_guidance_mix():
    calls = []
    def mix(eps_cond, eps_uncond, w):
        calls.append(w)
        return eps_cond + 41                                   # 1 + 41: recognisably not the library's mix
    xt, labels = torch.zeros(3, 1, 2, 2), torch.ones(3, 4)
    torch.testing.assert_close(diffusion.guided_noise(LabelSpy(), xt, torch.tensor([5]), labels, 2.0, guidance_mix=mix),
                               torch.full_like(xt, 42.0))
    diffusion.sample(LabelSpy(), diffusion.make_schedule(10), 3, (1, 2, 2), labels=labels, guidance_scale=2.0,
                     guidance_mix=mix, progress=False)
    assert calls == [2.0] * 11                                 # once above, then once per step of T = 10


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 5), ("dpm", 5), ("sde-dpm", 5)])
def test_samplers_return_finite_images_in_range(tiny_model, tiny_cfg, sampler, steps):
    schedule = diffusion.schedule_from_config(tiny_cfg)
    out = diffusion.sample(tiny_model, schedule, 3, (1, 28, 28), sampler=sampler,
                           num_inference_steps=steps, progress=False)
    assert out.images.shape == (3, 1, 28, 28)
    assert torch.isfinite(out.images).all()
    # clipping x̂0 keeps the final step's mean inside [-1, 1]
    assert out.images.min() >= -1.0001 and out.images.max() <= 1.0001


@pytest.mark.parametrize("sampler", ["ddpm", "sde-dpm"])
def test_sampling_is_deterministic_under_a_seed(tiny_model, tiny_cfg, sampler):
    schedule = diffusion.schedule_from_config(tiny_cfg)
    run = lambda seed: diffusion.sample(tiny_model, schedule, 2, (1, 28, 28), sampler=sampler, num_inference_steps=5,
                                        seed=seed, progress=False).images
    torch.testing.assert_close(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_the_sde_sampler_draws_fresh_noise_where_its_ode_twin_does_not(tiny_model, tiny_cfg):
    """"sde-dpm" and "dpm" are one solver for the reverse SDE and for its ODE: from the same x_T they part
    only through the noise the SDE adds at every step."""
    schedule = diffusion.schedule_from_config(tiny_cfg)
    run = lambda sampler: diffusion.sample(tiny_model, schedule, 2, (1, 28, 28), sampler=sampler, num_inference_steps=5,
                                           seed=0, progress=False).images
    ode, sde = run("dpm"), run("sde-dpm")
    assert (ode - sde).abs().max() > 1e-3
    from diffusers import DPMSolverMultistepScheduler
    sched = diffusion.make_diffusers_scheduler("sde-dpm", schedule)
    assert isinstance(sched, DPMSolverMultistepScheduler) and sched.config.algorithm_type == "sde-dpmsolver++"


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


@pytest.mark.parametrize("sampler", ["ddim", "dpm", "sde-dpm"])
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


@pytest.mark.parametrize("sampler", ["dpm", "sde-dpm"])
def test_clip_sample_clamps_the_dpm_solvers_predicted_x0(sampler):
    """On the cosine schedule ᾱ_T ≈ 0, so x̂_0 = (x_T − √(1 − ᾱ_T) ε_θ)/√ᾱ_T of the first jump is huge unless clamped."""
    schedule = diffusion.make_schedule(1000, "squaredcos_cap_v2")
    x, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8) * 1.1
    x0 = {}
    for clip in (True, False):
        scheduler = diffusion.make_diffusers_scheduler(sampler, schedule, clip_sample=clip)
        scheduler.set_timesteps(50)
        scheduler._step_index = 0                      # the first jump, from t = 999
        x0[clip] = scheduler.convert_model_output(eps, sample=x)
    assert x0[True].abs().max() <= 1.0 < x0[False].abs().max() / 100
    inside = x0[False].abs() <= 1
    torch.testing.assert_close(x0[True][inside], x0[False][inside])   # a clamp: values in range are kept
    torch.testing.assert_close(x0[True], x0[False].clamp(-1, 1))


def test_ddim_moves_a_clamped_x0_along_the_noise_that_agrees_with_it():
    """Song et al. eq. 12 puts x̂_0 back at the next level with the ε that predicted it. When clip_sample clamps
    x̂_0, the ε must be recomputed from x_t and the clamped x̂_0 (diffusers' use_clipped_model_output), as DDPM's
    posterior mean and the DPM-Solvers' thresholding do; the network's ε with a clamped x̂_0 is another image."""
    from torch import nn

    class FarOff(nn.Module):                        # ε_θ = −3 everywhere: x̂_0 far above 1, so it is clamped
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0))

        def forward(self, xt, timesteps):
            return torch.full_like(xt, -3.0) * self.scale

    schedule = diffusion.make_schedule(10)
    run = diffusion.sample(FarOff(), schedule, 2, (1, 4, 4), sampler="ddim", num_inference_steps=2, num_frames=3,
                           seed=0, mixed_precision="no", progress=False)
    x_T, x_next = run.frames[0], run.frames[1]
    assert run.frame_timesteps == [10, 9, 4]              # x_T, then after the jumps from t = 9 (to 4) and t = 4
    t, t_next, abar = 9, 4, schedule.alphas_cumprod
    x0_hat = ((x_T - (1 - abar[t]).sqrt() * -3.0) / abar[t].sqrt()).clamp(-1, 1)
    eps = (x_T - abar[t].sqrt() * x0_hat) / (1 - abar[t]).sqrt()                     # agrees with the clamped x̂_0
    assert torch.allclose(x_next, abar[t_next].sqrt() * x0_hat + (1 - abar[t_next]).sqrt() * eps, atol=1e-5)
