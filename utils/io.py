"""Atomic, ``weights_only``-loadable torch files (checkpoints and dataset caches)."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temp file, then rename: an interruption never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def safe_load(path: str | Path, map_location="cpu"):
    """``torch.load(..., weights_only=True)``: plain dicts of tensors and numbers only."""
    return torch.load(path, map_location=map_location, weights_only=True)
