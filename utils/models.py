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
        emb = self.label_mlp(labels.to(self.null_embedding.dtype))   # (B, D)
        if drop_labels is not None:
            emb = torch.where(drop_labels[:, None], self.null_embedding.expand_as(emb), emb)
        return self.unet(xt, timesteps, class_labels=emb).sample


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(cfg) -> nn.Module:
    """The network a config describes: a plain U-Net, or a conditional one when cfg.num_labels > 0."""
    if cfg.num_labels:
        return ConditionalUNet(build_unet(cfg, class_conditional=True), cfg.num_labels)
    return build_unet(cfg)
