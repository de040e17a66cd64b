"""The DCGAN baseline (Radford et al. 2016) trained by the one ``training.train`` loop.

The loop steps one optimizer on ``loss_fn(model, batch)``. A GAN has two players, so:

* the loop's optimizer (Adam, lr 2e-4, β1 = 0.5 from ``cfg.adam_betas``) trains the **generator**: the
  module declares it with ``loop_parameters()``, so the loop never steps D a second time;
* ``loss_fn`` first takes the **discriminator's** step itself, with the Adam stored on the
  ``DCGAN`` module, then returns the generator's loss with D frozen, so the loop's backward
  reaches only G.

D's optimizer state and loss history travel in the module's ``state_dict`` (extra state), so
the loop's checkpoints and auto-resume cover the whole GAN. Single process only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .devices import model_device
from .models import dcgan_discriminator, dcgan_generator


class DCGAN(nn.Module):
    """Generator G(z) and discriminator D(x), plus D's own Adam. ``forward(z)`` is G."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int, *,
                 learning_rate: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999)):
        super().__init__()
        self.generator, self.discriminator, self.latent_dim = generator, discriminator, latent_dim
        self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=learning_rate, betas=tuple(betas))
        self.d_losses: list[torch.Tensor] = []          # one D loss per step (kept on device until read)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_dim, 1, 1) → images (B, C, H, W) in [-1, 1]."""
        return self.generator(z)

    def loop_parameters(self):
        """What ``training.train``'s optimizer (and gradient clipping) covers: G only; D steps in ``loss_fn``."""
        return self.generator.parameters()

    @property
    def d_loss_history(self) -> list[float]:
        if not self.d_losses:
            return []
        device = self.d_losses[-1].device       # a resumed run holds the saved losses on the host, new ones on the device
        return torch.stack([loss.to(device) for loss in self.d_losses]).tolist()

    def get_extra_state(self) -> dict:
        return {"d_optimizer": self.d_optimizer.state_dict(),
                "d_loss_history": torch.tensor(self.d_loss_history, dtype=torch.float64)}

    def set_extra_state(self, state: dict) -> None:
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.d_losses = list(state["d_loss_history"].float().unbind()) if len(state["d_loss_history"]) else []


def build_dcgan(cfg) -> DCGAN:
    """The DCGAN a ``config.DCGANConfig`` describes (28×28 gray or 64×64 color), initialised as in the paper."""
    return DCGAN(dcgan_generator(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.generator_width),
                 dcgan_discriminator(cfg.image_size, cfg.channels, cfg.discriminator_width),
                 cfg.latent_dim, learning_rate=cfg.learning_rate, betas=cfg.adam_betas)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
    """One DCGAN iteration for ``training.train``: D's step here, G's loss returned to the loop.

    D step: minimise −log D(x) − log(1 − D(G(z))) over real x = batch["x0"] (B, C, H, W) in [-1, 1].
    G loss: the non-saturating −log D(G(z)) on the same z, with D frozen (the loop backpropagates it).
    """
    gan = getattr(model, "module", model)               # unwrap DistributedDataParallel
    real = batch["x0"].to(model_device(gan))            # (B, C, H, W) in [-1, 1], where the networks are
    z = torch.randn(len(real), gan.latent_dim, 1, 1, device=real.device, dtype=real.dtype)
    fake = gan.generator(z)                             # (B, C, H, W)

    gan.discriminator.requires_grad_(True)
    d_loss = _bce(gan.discriminator(real), 1.0) + _bce(gan.discriminator(fake.detach()), 0.0)
    gan.d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    gan.d_optimizer.step()
    gan.d_losses.append(d_loss.detach())

    gan.discriminator.requires_grad_(False)             # the loop's backward must not reach D
    return _bce(gan.discriminator(fake), 1.0)


@torch.no_grad()
def sample(model: nn.Module, num_images: int, *, seed: int | None = 0) -> torch.Tensor:
    """``num_images`` images (N, C, H, W) in [-1, 1] on the CPU from z ~ N(0, I) seeded by ``seed``.

    ``model`` is a ``DCGAN`` (or its generator), on any device; G runs in eval mode (BatchNorm's
    running statistics). z is drawn on the CPU, so a seed gives the same images on every device.
    """
    generator = model.generator if isinstance(model, DCGAN) else model
    latent_dim = generator[0].in_channels
    rng = torch.Generator()
    rng.manual_seed(seed) if seed is not None else rng.seed()
    z = torch.randn(num_images, latent_dim, 1, 1, generator=rng).to(model_device(generator))
    was_training = generator.training
    images = generator.eval()(z).clamp(-1, 1).float().cpu()
    generator.train(was_training)
    return images
