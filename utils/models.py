"""U-Nets from diffusers, sized by the config, and the multi-hot conditional wrapper."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn


def build_unet(cfg, *, class_conditional: bool = False) -> UNet2DModel:
    """A ``UNet2DModel`` for cfg.image_size × cfg.image_size images with cfg.channels channels.

    Self-attention sits at the levels where ``cfg.attention_levels`` is True (the low
    resolutions, where it is cheap). ``class_conditional`` adds a slot for an extra embedding
    that is summed into the timestep embedding (used by ``ConditionalUNet``).
    """
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout, class_embed_type="identity" if class_conditional else None,
        resnet_time_scale_shift=cfg.resnet_time_scale_shift,
    )


class ConditionalUNet(nn.Module):
    """ε_θ(x_t, t, y) for a multi-hot label y ∈ {0, 1}^K.

    y goes through a small MLP to the size of the timestep embedding and is added to it,
    so every ResNet block sees the condition (the "identity" class-embedding slot of
    ``UNet2DModel``). Samples whose label is dropped get a learned null embedding ∅ instead,
    which is how one network also learns ε_θ(x_t, t, ∅) for classifier-free guidance.
    """

    def __init__(self, unet: UNet2DModel, num_labels: int):
        super().__init__()
        if unet.class_embedding is None:
            raise ValueError("Build the U-Net with build_unet(cfg, class_conditional=True).")
        dim = unet.config.block_out_channels[0] * 4                  # timestep-embedding width
        self.unet = unet
        self.label_mlp = nn.Sequential(nn.Linear(num_labels, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null_embedding = nn.Parameter(torch.zeros(dim))          # ∅, learned

    def forward(self, xt, timesteps, labels, drop_labels=None) -> torch.Tensor:
        """xt: (B, C, H, W); timesteps: (B,); labels: (B, K) multi-hot; drop_labels: (B,) bool or None."""
        emb = self.label_mlp(labels.to(self.null_embedding))         # (B, D), on the weights' device and dtype
        if drop_labels is not None:
            drop = drop_labels.to(emb.device)[:, None]                  # (B, 1) bool
            emb = torch.where(drop, self.null_embedding.expand_as(emb), emb)
        return self.unet(xt, timesteps, class_labels=emb).sample


@torch.no_grad()
def conditioning_response(model: nn.Module, *, image_size: int | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """How much each ResNet block's output moves when only its condition changes: {block name: {"t": …, "label": …}}.

    One forward pass of a random image records every ResNet block's input. Each block then runs again on
    that same input with two embeddings that differ only in the timestep (t = 10 vs 900), and, for a
    ``ConditionalUNet``, only in the label (two random multi-hot lists); the number is
    ‖out_a − out_b‖ / ‖out_a‖. A block whose GroupNorm has one channel per group after an additive
    embedding (``resnet_time_scale_shift="default"``) gives ≈ 1e-7: it cannot see t or y. Random weights
    are enough: the cancellation is exact whatever they are, and so is the image size (``image_size``:
    default the model's; a smaller one that still halves through every level probes the same blocks faster).
    """
    from diffusers.models.resnet import ResnetBlock2D

    unet = model.unet if isinstance(model, ConditionalUNet) else model
    size, channels = image_size or unet.config.sample_size, unet.config.in_channels
    gen = torch.Generator().manual_seed(seed)
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype   # the model's, whatever they are
    x = torch.randn(1, channels, size, size, generator=gen).to(device, dtype)
    blocks = {name: m for name, m in unet.named_modules() if isinstance(m, ResnetBlock2D)}
    inputs: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args):
            inputs[name] = args[0]                                      # (1, C, h, w): the block's input
        return hook
    hooks = [m.register_forward_pre_hook(record(name)) for name, m in blocks.items()]
    was_training = model.training
    model.eval()
    try:
        t = torch.tensor([500], device=device)
        if isinstance(model, ConditionalUNet):
            model(x, t, torch.zeros(1, model.label_mlp[0].in_features, device=device, dtype=dtype))
        else:
            model(x, t)
    finally:
        for hook in hooks:
            hook.remove()

    def time_embedding(step: int) -> torch.Tensor:                           # (1, D), as UNet2DModel makes it
        t_emb = unet.time_proj(torch.tensor([step], device=device)).to(x.dtype)
        return unet.time_embedding(t_emb)

    variants = {"t": (time_embedding(10), time_embedding(900))}
    if isinstance(model, ConditionalUNet):
        k = model.label_mlp[0].in_features
        y_a, y_b = (torch.rand(2, k, generator=gen) < 0.2).to(device, dtype).unbind(0)
        base = time_embedding(500)
        variants["label"] = (base + model.label_mlp(y_a[None]), base + model.label_mlp(y_b[None]))
    out = {}
    for name, block in blocks.items():
        response = {}
        for what, (emb_a, emb_b) in variants.items():
            a, b = block(inputs[name], emb_a), block(inputs[name], emb_b)
            response[what] = ((a - b).norm() / a.norm().clamp(min=1e-12)).item()
        out[name] = response
    model.train(was_training)
    return out


def blind_blocks(model: nn.Module, threshold: float = 1e-3, image_size: int | None = None) -> list[str]:
    """Names of the ResNet blocks whose output changes by less than ``threshold`` (relative) when only t or
    the label changes (``conditioning_response``): levels the network cannot condition."""
    return [name for name, response in conditioning_response(model, image_size=image_size).items()
            if min(response.values()) < threshold]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(cfg) -> nn.Module:
    """The network a config describes: a plain U-Net, or a conditional one when cfg.num_labels > 0."""
    if cfg.num_labels:
        return ConditionalUNet(build_unet(cfg, class_conditional=True), cfg.num_labels)
    return build_unet(cfg)


# ----------------------------------------------------------------------------- DCGAN baseline
def _dcgan_levels(image_size: int) -> tuple[int, int]:
    """(start size, number of ×2 stages): 64 → (4, 4), 32 → (4, 3), 28 → (7, 2)."""
    size, levels = image_size, 0
    while size % 2 == 0 and size > 7:
        size, levels = size // 2, levels + 1
    if levels == 0:
        raise ValueError(f"image_size={image_size}: DCGAN needs a size that halves at least once down to 4–7 px "
                         "(e.g. 28, 32 or 64).")
    return size, levels


def dcgan_init_(module: nn.Module) -> nn.Module:
    """Radford et al.'s init: conv weights ~ N(0, 0.02), BatchNorm γ ~ N(1, 0.02), β = 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


def dcgan_generator(image_size: int, channels: int, latent_dim: int = 100, width: int = 64) -> nn.Sequential:
    """G: z (B, latent_dim, 1, 1) → images (B, channels, image_size, image_size) in [-1, 1].

    Radford et al.: a transposed conv projects z to s×s (s = 4 for 64 px, 7 for 28 px), then
    stride-2 transposed convs double the size and halve the width; BatchNorm + ReLU between, tanh out.
    """
    start, levels = _dcgan_levels(image_size)
    ch = width * 2 ** (levels - 1)                                           # 512 at 4×4 for 64 px, width 64
    layers = [nn.ConvTranspose2d(latent_dim, ch, start, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
    for _ in range(levels - 1):
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
        ch //= 2
    layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
    return dcgan_init_(nn.Sequential(*layers))


def dcgan_discriminator(image_size: int, channels: int, width: int = 64) -> nn.Sequential:
    """D: images (B, channels, image_size, image_size) in [-1, 1] → logits (B,).

    The mirror of the generator: stride-2 convs halve the size and double the width, with
    LeakyReLU(0.2) and BatchNorm (none on the input layer), then one conv over the s×s map.
    """
    start, levels = _dcgan_levels(image_size)
    ch = width
    layers = [nn.Conv2d(channels, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    for _ in range(levels - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
        ch *= 2
    layers += [nn.Conv2d(ch, 1, start, 1, 0, bias=False), nn.Flatten(0)]    # (B, 1, 1, 1) → (B,)
    return dcgan_init_(nn.Sequential(*layers))
