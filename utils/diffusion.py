"""DDPM math (Ho et al. 2020), fast samplers through diffusers, classifier-free guidance.

Notation follows the paper and diffusers: β_t = ``betas``, α_t = 1 − β_t = ``alphas``,
ᾱ_t = ∏_{s≤t} α_s = ``alphas_cumprod``. Timesteps are 0-based: t = 0 … T−1.
Images live in model space [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .devices import CPUThreads, autocast, model_device, model_dtype

SAMPLERS = ("ddpm", "ddim", "dpm", "sde-dpm")


@dataclass
class NoiseSchedule:
    """β_1 … β_T and the products derived from them, as float32 tensors of shape (T,)."""

    betas: torch.Tensor
    alphas: torch.Tensor = field(init=False)
    alphas_cumprod: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.betas = self.betas.float()
        self.alphas = 1.0 - self.betas                          # α_t
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)    # ᾱ_t

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def to(self, device) -> "NoiseSchedule":
        return NoiseSchedule(self.betas.to(device))


def make_schedule(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                  beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """β_t for "linear" (Ho et al.: 1e-4 → 0.02) or "squaredcos_cap_v2" (Nichol & Dhariwal 2021).

    Cosine: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2) with s = 0.008, β_t = 1 − ᾱ(t+1)/ᾱ(t),
    capped at 0.999 (their eq. 17).
    """
    T = num_train_timesteps
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)],
                             dtype=torch.float32)
    else:
        raise ValueError(f"beta_schedule={beta_schedule!r}: use 'linear' or 'squaredcos_cap_v2'.")
    return NoiseSchedule(betas)


def schedule_from_config(cfg) -> NoiseSchedule:
    return make_schedule(cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end)


def _at(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] for each sample, shaped (B, 1, 1, 1) to broadcast over images."""
    return values.to(timesteps.device)[timesteps].reshape(-1, *([1] * (ndim - 1)))


# ----------------------------------------------------------------------- forward process
def q_sample(x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
             schedule: NoiseSchedule) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in closed form (Ho et al. eq. 4):

        x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,   ε ~ N(0, I)

    x0, noise: (B, C, H, W) in [-1, 1] / N(0, I); timesteps: (B,) ints in [0, T).
    """
    abar = _at(schedule.alphas_cumprod, timesteps, x0.ndim)          # (B, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise              # (B, C, H, W)


def predict_noise(model, xt: torch.Tensor, timesteps: torch.Tensor, labels=None,
                  drop_labels=None) -> torch.Tensor:
    """ε_θ(x_t, t[, y]) from a diffusers ``UNet2DModel`` or a conditional wrapper, on the model's device.

    xt: (B, C, H, W); timesteps: (B,); labels: (B, K) or None; drop_labels: (B,) bool or None.
    """
    device = model_device(model) or xt.device
    xt, timesteps = xt.to(device, model_dtype(model)), timesteps.to(device)
    if labels is None:
        out = model(xt, timesteps)
    else:
        out = model(xt, timesteps, labels, drop_labels=drop_labels)
    return out.sample if hasattr(out, "sample") else out


def draw_drop_mask(batch_size: int, p: float, device) -> torch.Tensor:
    """Which labels condition dropout hides: (batch_size,) bool on ``device``, each True with probability p."""
    return torch.rand(batch_size, device=device) < p


def min_snr_weights(timesteps: torch.Tensor, schedule: NoiseSchedule, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for ε-prediction (Hang et al. 2023), shape (B,):

        w_t = min(SNR_t, γ) / SNR_t,   SNR_t = ᾱ_t / (1 − ᾱ_t)

    In terms of the clean image the ε-loss is SNR_t · ‖x_0 − x̂_0‖²: the nearly clean steps weigh the
    image error thousands of times more than the noisy ones that decide the layout. w_t caps that weight
    at γ: 1 for the noisy steps (SNR_t ≤ γ), γ/SNR_t for the nearly clean ones.
    """
    abar = schedule.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = abar / (1 - abar)
    return (gamma / snr).clamp(max=1.0)           # = min(SNR_t, γ)/SNR_t, also 1 where ᾱ_t = 0


def diffusion_loss(model, x0: torch.Tensor, schedule: NoiseSchedule, labels=None,
                   cond_drop_prob: float = 0.0, drop_fn=draw_drop_mask, min_snr_gamma: float = 0.0) -> torch.Tensor:
    """Algorithm 1 (training), one step:

        t ~ Uniform{0 … T−1},  ε ~ N(0, I)
        loss = ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²       (Ho et al. eq. 14)

    With ``labels`` each sample's condition is dropped with probability ``cond_drop_prob``
    (replaced by the learned null label), which trains the unconditional model that
    classifier-free guidance needs (Ho & Salimans 2022). ``drop_fn(B, cond_drop_prob, device)`` draws
    that (B,) bool mask (e.g. a hand-written one; default ``draw_drop_mask``).
    ``min_snr_gamma`` > 0 weights each sample's squared error by ``min_snr_weights`` (Min-SNR-γ);
    0 is Algorithm 1 exactly.
    x0: (B, C, H, W) in [-1, 1]; labels: (B, K) or None; both are moved to the model's device.
    Returns a scalar.
    """
    device = model_device(model) or x0.device
    x0 = x0.to(device)
    labels = labels.to(device) if labels is not None else None
    B = x0.shape[0]
    timesteps = torch.randint(0, schedule.num_train_timesteps, (B,), device=x0.device)  # (B,)
    noise = torch.randn_like(x0)                                                       # ε
    xt = q_sample(x0, timesteps, noise, schedule)
    drop = None
    if labels is not None and cond_drop_prob > 0:
        drop = drop_fn(B, cond_drop_prob, x0.device)                                    # (B,) bool
        if not (torch.is_tensor(drop) and drop.dtype == torch.bool and drop.shape == (B,)):
            raise ValueError(f"drop_fn({B}, {cond_drop_prob}, {x0.device}) must return a ({B},) bool tensor, got "
                             + (f"{drop.dtype} {tuple(drop.shape)}" if torch.is_tensor(drop) else type(drop).__name__))
    eps = predict_noise(model, xt, timesteps, labels, drop)
    if not min_snr_gamma:
        return F.mse_loss(eps.float(), noise.float())
    per_sample = (eps.float() - noise.float()).pow(2).mean(dim=tuple(range(1, x0.ndim)))    # (B,)
    return (min_snr_weights(timesteps, schedule, min_snr_gamma) * per_sample).mean()


def make_loss_fn(schedule: NoiseSchedule, *, conditional: bool = False, cond_drop_prob: float = 0.0,
                 drop_fn=draw_drop_mask, min_snr_gamma: float = 0.0):
    """The ``loss_fn(model, batch)`` the training loop calls: Algorithm 1 on ``batch["x0"]``,
    conditioned on ``batch["labels"]`` when ``conditional`` (MNIST's digit labels are ignored), with
    condition dropout drawn by ``drop_fn`` and Min-SNR-γ weights when ``min_snr_gamma`` > 0
    (see ``diffusion_loss``)."""
    on_device = {}   # the schedule copied once to each device it meets, not once per step

    def loss_fn(model, batch):
        labels = batch["labels"] if conditional else None
        device = model_device(model) or batch["x0"].device
        if device not in on_device:
            on_device[device] = schedule.to(device)
        return diffusion_loss(model, batch["x0"], on_device[device], labels, cond_drop_prob, drop_fn, min_snr_gamma)
    return loss_fn


# ----------------------------------------------------------------------- reverse process
VARIANCE_TYPES = ("fixed_small", "fixed_large")    # Algorithm 2's σ_t²: β̃_t or β_t (diffusers' names)


def ddpm_step(eps: torch.Tensor, t: int, xt: torch.Tensor, schedule: NoiseSchedule, *,
              clip_sample: bool = True, generator: torch.Generator | None = None,
              variance_type: str = "fixed_small") -> torch.Tensor:
    """One step of Algorithm 2 (sampling): x_t → x_{t−1}.

    Without clipping this is Algorithm 2, line 4:
        x_{t−1} = 1/√α_t · (x_t − β_t/√(1 − ᾱ_t) · ε_θ) + σ_t z,   z ~ N(0, I)
    With ``clip_sample`` the predicted x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ)/√ᾱ_t (eq. 15) is clamped
    to [-1, 1] and the mean is the posterior mean μ̃_t(x_t, x̂_0) of eq. 7 (the same value
    when nothing is clamped). σ_t² = β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t (eq. 7; ``"fixed_small"``) or
    σ_t² = β_t (``"fixed_large"``; Ho et al. §3.2 report both work), no noise at t = 0.
    eps, xt: (B, C, H, W); t: int in [0, T). Matches diffusers ``DDPMScheduler.step`` with that variance_type.
    """
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alphas_cumprod[t]
    abar_prev = schedule.alphas_cumprod[t - 1] if t > 0 else abar.new_tensor(1.0)
    if clip_sample:
        x0_hat = ((xt - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)        # eq. 15
        mean = (abar_prev.sqrt() * beta / (1 - abar)) * x0_hat \
            + (alpha.sqrt() * (1 - abar_prev) / (1 - abar)) * xt                      # eq. 7
    else:
        mean = (xt - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()                    # Alg. 2
    if t == 0:
        return mean
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type={variance_type!r}: use one of {VARIANCE_TYPES}.")
    variance = (1 - abar_prev) / (1 - abar) * beta if variance_type == "fixed_small" else beta   # β̃_t or β_t
    z = _randn(xt.shape, generator, xt.device, xt.dtype)
    return mean + variance.clamp(min=1e-20).sqrt() * z


def make_diffusers_scheduler(sampler: str, schedule: NoiseSchedule, *, clip_sample: bool = True):
    """A diffusers scheduler with exactly these betas: "ddpm", "ddim" (Song et al. 2021, η = 0),
    "dpm" (DPM-Solver++ 2M, Lu et al. 2022: an ODE solver, no fresh noise) or "sde-dpm" (SDE-DPM-Solver++ 2M,
    the stochastic variant of DPM-Solver++ in diffusers:
    the same solver for the reverse SDE, fresh noise at every step like Algorithm 2, so it corrects the errors
    of a briefly trained network instead of following them; benchmarks/results/mnist_learnability.md).
    ``clip_sample`` clamps the predicted x̂_0 to [-1, 1] in every sampler (for the DPM-Solvers through diffusers'
    thresholding with s capped at 1, which is that clamp). Without it a schedule whose ᾱ_T is nearly 0 (cosine)
    sends the first x̂_0 = (x_T − √(1 − ᾱ_T) ε_θ)/√ᾱ_T far out of range: iCLEVR accuracy fell to 0.13.
    Built fresh each time, never pickled."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=schedule.num_train_timesteps,
                  trained_betas=schedule.betas.cpu().numpy(), prediction_type="epsilon")
    if sampler == "ddpm":
        return DDPMScheduler(**common, clip_sample=clip_sample, variance_type="fixed_small")
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=clip_sample, timestep_spacing="trailing",
                             set_alpha_to_one=True)
    if sampler in ("dpm", "sde-dpm"):   # thresholding with s ≤ 1: x̂_0 clamped to [-1, 1], like clip_sample
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++" if sampler == "dpm" else "sde-dpmsolver++",
                                           solver_order=2, timestep_spacing="trailing", final_sigmas_type="zero",
                                           thresholding=clip_sample, sample_max_value=1.0)
    raise ValueError(f"sampler={sampler!r}: use one of {SAMPLERS}.")


def scheduler_step_kwargs(sampler: str) -> dict:
    """Extra ``scheduler.step`` arguments. DDIM's step (Song et al. eq. 12) moves x̂_0 along the ε it was
    predicted with; with ``clip_sample`` diffusers clamps x̂_0 but keeps the network's ε unless
    ``use_clipped_model_output``, which recomputes ε = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t) so the pair agrees,
    as DDPM's posterior mean and the DPM-Solvers' thresholding do."""
    return {"use_clipped_model_output": True} if sampler == "ddim" else {}


def mix_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """ε = ε_uncond + w · (ε_cond − ε_uncond) in float32, also for fp16/bf16 inputs. Shapes kept: (B, C, H, W)."""
    eps_cond, eps_uncond = eps_cond.float(), eps_uncond.float()
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_noise(model, xt: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                 guidance_scale: float, guidance_mix=mix_guidance) -> torch.Tensor:
    """ε for sampling; with labels, classifier-free guidance (Ho & Salimans 2022) in one forward:

        ε = ε_uncond + w · (ε_cond − ε_uncond)

    w = ``guidance_scale``: w = 1 is plain conditional sampling, w = 0 unconditional, w > 1
    trades diversity for fidelity to the labels. Conditional and unconditional halves run as
    one batch of 2B, mixed by ``guidance_mix(eps_cond, eps_uncond, w)`` (e.g. a hand-written one; default
    ``mix_guidance``), which gets the halves in the network's dtype.
    xt: (B, C, H, W); labels: (B, K) or None. Returns float32 (B, C, H, W).
    """
    B = xt.shape[0]
    if labels is None:
        return predict_noise(model, xt, t.expand(B)).float()
    if guidance_scale == 1.0:
        return predict_noise(model, xt, t.expand(B), labels).float()
    drop = torch.arange(2 * B, device=xt.device) >= B                          # second half: null label
    eps = predict_noise(model, torch.cat([xt, xt]), t.expand(2 * B), torch.cat([labels, labels]), drop)
    eps_cond, eps_uncond = eps.chunk(2)
    return guidance_mix(eps_cond, eps_uncond, guidance_scale).float()


def _randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) drawn on the CPU (with ``generator``) and moved to ``device``: a seed gives the same
    noise on every device, and the generator never has to live where the model does. To a GPU the
    copy goes from pinned memory without waiting, so the host never stalls the GPU once per step."""
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if torch.device(device).type == "cuda":
        return noise.pin_memory().to(device, dtype, non_blocking=True)
    return noise.to(device, dtype)


@dataclass
class SampleResult:
    """``images``: (B, C, H, W) in [-1, 1] on the CPU. ``frames``: snapshots of x_t from noise
    to image (the first is x_T, the last equals ``images``); ``frame_timesteps``: the t each
    snapshot was taken after (T for x_T, 0 for the final image)."""

    images: torch.Tensor
    frames: list[torch.Tensor]
    frame_timesteps: list[int]


@torch.inference_mode()
def sample(model, schedule: NoiseSchedule, num_images: int, image_shape: tuple[int, int, int], *,
           sampler: str = "ddpm", num_inference_steps: int | None = None, labels=None,
           guidance_scale: float = 1.0, seed: int | None = 0, num_frames: int = 0,
           clip_sample: bool = True, mixed_precision: str = "auto", progress: bool = True,
           variance_type: str = "fixed_small", guidance_mix=mix_guidance) -> SampleResult:
    """Generate ``num_images`` images of ``image_shape`` (C, H, W), starting from x_T ~ N(0, I).

    "ddpm" is Algorithm 2 with all T steps (``ddpm_step``); "ddim", "dpm" and "sde-dpm" use diffusers
    schedulers with ``num_inference_steps`` (e.g. 50). The loop reads: predict noise; step.
    ``labels``: (B, K) multi-hot for a conditional model, with ``guidance_scale`` w (see
    ``guided_noise``, which mixes with ``guidance_mix``). ``num_frames`` > 0 keeps that many evenly
    spaced snapshots for a GIF.
    ``variance_type``: Algorithm 2's σ_t² for "ddpm", β̃_t ("fixed_small") or β_t ("fixed_large").

    Runs on the model's device. The network runs under ``mixed_precision`` ("auto": fp16/bf16 on
    CUDA by the precision rule of ``utils.devices``, fp32 elsewhere); x_t and each step stay float32.
    The noise comes from a CPU generator seeded with ``seed``, so a seed means the same noise on
    every device.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: use one of {SAMPLERS}.")
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"variance_type={variance_type!r}: use one of {VARIANCE_TYPES}.")
    if variance_type != "fixed_small" and sampler != "ddpm":
        raise ValueError(f"variance_type={variance_type!r} is Algorithm 2's σ_t², used by sampler='ddpm' only; "
                         f"{sampler!r} " + ("draws its noise as its SDE solver prescribes" if sampler == "sde-dpm" else
                                            "adds no fresh noise (η = 0)") + ". Use sampler='ddpm'.")
    device = model_device(model) or torch.device("cpu")
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    schedule_d = schedule.to(device)
    if labels is not None:
        labels = labels.to(device=device, dtype=model_dtype(model))

    if sampler == "ddpm":
        timesteps = list(range(schedule.num_train_timesteps - 1, -1, -1))   # T−1 … 0
        step = lambda eps, t, x: ddpm_step(eps, t, x, schedule_d, clip_sample=clip_sample, generator=generator,
                                           variance_type=variance_type)
    else:
        steps = num_inference_steps or 50
        if steps > schedule.num_train_timesteps:
            raise ValueError(f"num_inference_steps={steps} for {sampler!r}: the model was trained with T = "
                             f"{schedule.num_train_timesteps} steps, so a fast sampler can take at most {schedule.num_train_timesteps} "
                             "(the smoke preset has a small T; use min(steps, T)).")
        scheduler = make_diffusers_scheduler(sampler, schedule, clip_sample=clip_sample)
        scheduler.set_timesteps(steps, device=device)
        timesteps = [int(t) for t in scheduler.timesteps]
        extra = scheduler_step_kwargs(sampler)
        step = lambda eps, t, x: scheduler.step(eps, t, x, generator=generator, **extra).prev_sample

    x = _randn((num_images, *image_shape), generator, device)                                 # x_T, float32
    t_all = torch.tensor(timesteps, device=device)  # (N,), copied once: no host → device transfer per step
    keep = _frame_indices(len(timesteps), num_frames)
    frames, frame_t = ([x.clone()], [schedule.num_train_timesteps]) if num_frames else ([], [])
    model.eval()
    with CPUThreads(device) as threads:     # a busy shared CPU: one thread when that is faster
        for i, t in enumerate(tqdm(timesteps, desc=f"sampling ({sampler})", disable=not progress, leave=False)):
            threads.tick()
            with autocast(device, mixed_precision):
                eps = guided_noise(model, x, t_all[i:i + 1], labels, guidance_scale, guidance_mix)        # predict noise
            x = step(eps.to(x.dtype), t, x)                                                    # step
            if i in keep:
                frames.append(x.clone())
                frame_t.append(t)
    x = x.clamp(-1, 1)  # the finished images live in [-1, 1]; fast samplers can overshoot slightly
    if num_frames:
        frames[-1] = x
    return SampleResult(x.float().cpu(), [f.float().cpu() for f in frames], frame_t)


def handin_sampling(cfg) -> dict:
    """How a config's hand-in images are drawn: the ``sample`` arguments that notebooks 01, 02 and 04, the CLI and
    the benchmarks all pass, so the grid a notebook hands in is the one the others redraw and score. ``cfg.sampler``
    ("ddpm": Algorithm 2, all T steps; or a fast one with ``num_inference_steps``), ``cfg.clip_sample`` (MNIST:
    off, Algorithm 2 as written, which notebook 01's own loop reproduces), ``cfg.seed``."""
    return dict(sampler=cfg.sampler, num_inference_steps=cfg.num_inference_steps, clip_sample=cfg.clip_sample,
                seed=cfg.seed)


def _frame_indices(num_steps: int, num_frames: int) -> set[int]:
    """Which steps to snapshot after x_T: ``num_frames − 1`` evenly spaced, ending at the last."""
    n = num_frames - 1
    if n <= 0:
        return set()
    return {round(k * num_steps / n) - 1 for k in range(1, n + 1)}
