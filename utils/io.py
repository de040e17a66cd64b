"""Atomic, ``weights_only``-loadable torch files (checkpoints and dataset caches)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import torch

from .lock import unwritable_message  # noqa: F401  (config and checkpoints import it from here)


def previous_path(path: str | Path) -> Path:
    """Where ``atomic_save(..., keep_previous=True)`` keeps the file it replaced: ``last.pt`` → ``last.previous.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def atomic_save(obj, path: str | Path, *, keep_previous: bool = False, verify: bool = False, guard=None) -> Path:
    """``torch.save`` so that an interruption, a full disk or a second writer never leaves a broken ``path``.

    The data go to a temp file with a name of its own (process id + random), are flushed to disk
    (fsync), with ``verify`` read back with ``weights_only=True``, and only then renamed over ``path``.
    With ``keep_previous`` the file it replaces stays as ``previous_path(path)``, so a damaged newest
    file still leaves the one before. A failure (a full disk: torch reports it as a RuntimeError, raised
    here as an OSError) removes the temp file and leaves ``path`` as it was. ``guard``: a context manager
    factory held around the renames (``TrainingLock.owned``: it raises, and nothing is renamed, when the
    folder is no longer this run's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    rotated = False
    try:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            if verify:
                safe_load(tmp)
        except RuntimeError as err:   # torch's zip writer: "unexpected pos …" on a full disk; a bad read-back
            raise OSError(f"writing {path.name} failed ({err})") from err
        with guard() if guard is not None else contextlib.nullcontext():
            if keep_previous and path.exists():
                os.replace(path, previous_path(path))
                rotated = True
            os.replace(tmp, path)
    except BaseException:
        if rotated and not path.exists():   # interrupted between the two renames: put the old file back
            os.replace(previous_path(path), path)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def temp_path(path: Path) -> Path:
    """A temp file name for ``path`` that no other writer shares: ``.last.pt.<pid>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def leftover_temp_files(path: str | Path) -> list[Path]:
    """Temp files of ``path`` that an interrupted ``atomic_save`` (a killed process) left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_load(path: str | Path, map_location="cpu"):
    """``torch.load(..., weights_only=True)``: plain dicts of tensors and numbers only."""
    return torch.load(path, map_location=map_location, weights_only=True)
