"""Checkpoints: their format, whether one fits a config, reading one back (with a fall-back to the one
before), the run id that names a training run, and (from ``utils.lock``) the folder's training lock.

``utils.training`` writes them (atomically, through ``utils.io``) and re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

from .io import previous_path, safe_load
from .lock import CheckpointError, LockLost, TrainingLock  # noqa: F401  (re-exported)

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1


def checkpoint_path(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def _as_tuple(v):
    return tuple(v) if isinstance(v, list) else v


def _differences(saved_config: dict, wanted: dict) -> list[str]:
    """``"field: checkpoint has a, config has b"`` for each field of ``wanted`` the checkpoint saved differently
    (a field an older checkpoint did not save counts as what it trained with, ``LEGACY_VALUES``, or is not compared)."""
    from .config import LEGACY_VALUES

    saved_config = {**LEGACY_VALUES, **saved_config}
    return [f"{k}: checkpoint has {_as_tuple(saved_config[k])!r}, config has {v!r}"
            for k, v in wanted.items() if k in saved_config and _as_tuple(saved_config[k]) != v]


NEW_RUN_ADVICE = ("To try other settings without touching this run, give the experiment its own folders: "
                  "run_name='my-experiment' (any short name; notebook parameter or config field). To replace "
                  "this run, set resume=False (its checkpoint is kept, renamed).")


def check_compatible(saved_config: dict, cfg, path: Path) -> None:
    """Raise ``CheckpointError`` naming every architecture field where checkpoint and config differ, or, for
    another notebook's checkpoint (an MNIST one in the anime folder), saying whose it is."""
    saved_name = saved_config.get("name")
    if saved_name and saved_name != cfg.name:
        raise CheckpointError(
            f"The checkpoint {path} is {_article(saved_name)} {saved_name!r} checkpoint, not {_article(cfg.name)} "
            f"{cfg.name!r} one: this notebook's checkpoint_dir holds another notebook's run (copied or pointed "
            f"there). Point checkpoint_dir at this notebook's folder, or move {path.name} (and "
            f"{previous_path(path).name}) back to the {saved_name!r} checkpoint folder; resume=False starts a new "
            f"{cfg.name!r} run here (that file is kept, renamed).")
    from .config import LEGACY_VALUES

    saved_config = {**LEGACY_VALUES, **saved_config}     # a field saved by no older checkpoint: what it trained with
    diffs = [f"{k}: checkpoint has {_as_tuple(saved_config.get(k))!r}, config has {v!r}"
             for k, v in cfg.architecture().items() if _as_tuple(saved_config.get(k)) != v]
    if diffs:
        raise CheckpointError(
            f"The checkpoint {path} was trained with another model or noise schedule:\n  - "
            + "\n  - ".join(diffs)
            + f"\nTo use this checkpoint, put those settings back. {NEW_RUN_ADVICE}")


def check_same_training(saved_config: dict, cfg, path: Path, *, finished: bool) -> list[str]:
    """Refuse to resume with training settings (``cfg.TRAINING``) the checkpoint was not trained with.

    A finished run would otherwise return as "already done" and a student would read the old model's
    results as those of the new settings; an unfinished one would restore its own optimizer settings.
    Only ``ADJUSTABLE_FIELDS`` (learning rate, clipping, EMA decay, precision) may change when an unfinished run
    resumes, e.g. a lower learning rate after a NaN stop; their differences are returned, to be applied.
    """
    from .config import ADJUSTABLE_FIELDS

    adjustable = [] if finished else [k for k in ADJUSTABLE_FIELDS if k in cfg.TRAINING]
    fixed = _differences(saved_config, {k: v for k, v in cfg.training().items() if k not in adjustable})
    if fixed:
        state = ("is finished: this cell would train nothing and hand back the old model" if finished
                 else "would mix its saved optimizer and schedule state with these settings")
        raise CheckpointError(
            f"The run in {path.parent} was trained with other settings than this config's, so it {state}:\n  - "
            + "\n  - ".join(fixed)
            + f"\n{NEW_RUN_ADVICE} To keep using this run as it is, put those settings back"
            + (" (to train it for longer, raise max_steps or num_epochs)." if finished else "."))
    return _differences(saved_config, {k: getattr(cfg, k) for k in adjustable})


def load_weights(module: nn.Module, state_dict: dict, path: Path) -> None:
    """``module.load_state_dict(state_dict)``, with an error a student can act on when the network changed
    since the checkpoint was written (an edit of utils/models.py): what changed, and what to do."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, network {tuple(own[k].shape)}" for k in own
                if k in state_dict and torch.is_tensor(state_dict[k]) and state_dict[k].shape != own[k].shape]
    if not (missing or unexpected or reshaped):
        module.load_state_dict(state_dict)
        return
    def few(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" … ({len(items)} in all)" if len(items) > 3 else "")
    found = [f"{len(missing)} tensors the checkpoint lacks ({few(missing)})" if missing else "",
             f"{len(unexpected)} the network no longer has ({few(unexpected)})" if unexpected else "",
             f"{len(reshaped)} of another shape ({few(reshaped)})" if reshaped else ""]
    raise CheckpointError(
        f"The network code changed since {path} was written (its config is the same, so the change is in the "
        f"code, e.g. an edit of utils/models.py): " + "; ".join(f for f in found if f) + ". "
        "Restart the kernel after editing utils (Runtime → Restart session), then either undo the edit to use "
        f"this checkpoint or train the changed network as an experiment. {NEW_RUN_ADVICE}")


def trained_config(name: str, run_name: str = "", **where):
    """The config the run ``name`` / ``run_name`` was trained with, read from its checkpoint, with this
    machine's folders (``where``: workdir etc., as for ``config.make_config``). No checkpoint: ``CheckpointError``."""
    from .config import from_saved, make_config

    here = make_config(name, run_name=run_name, **where)
    return from_saved(load_checkpoint(checkpoint_path(here.checkpoint_dir))["config"], here)


class _NotACheckpoint(CheckpointError):
    """A file that loads but is no checkpoint of this bundle (a bare state dict, another format)."""


def _read(path: Path) -> dict:
    """One checkpoint file, or an exception saying what it is instead."""
    ckpt = safe_load(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        raise _NotACheckpoint("is not a checkpoint of this bundle: it holds only a network's weights (a bare state "
                              "dict, as torch.save(model.state_dict()) writes), no step, optimizer or loss history")
    found = f"format {ckpt.get('format')!r}" if isinstance(ckpt, dict) and "format" in ckpt else type(ckpt).__name__
    raise _NotACheckpoint(f"is not a checkpoint written by utils.training (format {CHECKPOINT_FORMAT}; found {found})")


def _problem(path: Path, err: Exception) -> str:
    if not path.exists():
        return "is missing"
    if isinstance(err, _NotACheckpoint):
        return str(err)
    return f"is damaged ({type(err).__name__}: {err})"


def load_checkpoint(path: str | Path, cfg=None) -> dict:
    """Read a checkpoint (``weights_only=True``); with ``cfg``, check it fits that config.

    A damaged, missing or foreign ``path`` (a bare state dict saved over it) falls back, with a warning, to
    the checkpoint it replaced (``last.previous.pt``, kept by every save), so one bad write never costs the
    whole run; the caller that resumes keeps the bad file, renamed.
    """
    path = Path(path)
    previous = previous_path(path)
    if not path.exists() and not previous.exists():
        raise CheckpointError(f"No checkpoint at {path}. Train first (the training cell writes it).")
    try:
        ckpt = _read(path)
    except Exception as err:
        try:
            ckpt = _read(previous)
        except Exception:
            if isinstance(err, _NotACheckpoint) and "state dict" in str(err):
                advice = (f"To sample from those weights: model.load_state_dict(torch.load({str(path)!r}, "
                          "weights_only=True)). To train in this folder, move that file out of it, or set resume=False "
                          "(the file is kept, renamed) to start over.")
            elif isinstance(err, _NotACheckpoint):
                advice = "Point checkpoint_dir at this bundle's checkpoints, or set resume=False (the file is kept, renamed)."
            else:
                advice = ("Set resume=False to start over (the damaged file is kept, renamed), or copy a good last.pt "
                          "back (e.g. from Drive's file history).")
            raise CheckpointError(f"{path} {_problem(path, err)}, and there is no readable earlier checkpoint "
                                  f"({previous.name}) to fall back on. {advice}") from err
        warnings.warn(f"{path} {_problem(path, err)}; using the checkpoint before it, {previous.name} "
                      f"(step {ckpt.get('step')}).")
        ckpt["loaded_from"] = str(previous)
    if cfg is not None:
        check_compatible(ckpt["config"], cfg, path)
    return ckpt


def new_run_id() -> str:
    """A name for a new training run, kept in every checkpoint it writes: ``<start time>-<random>``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_id_of(ckpt: dict) -> str:
    """The run id a checkpoint carries; for one written before run ids, one derived from its config and first
    losses (the same at every read, and kept from the next save on)."""
    if ckpt.get("run_id"):
        return ckpt["run_id"]
    first = torch.as_tensor(ckpt.get("loss_history", []), dtype=torch.float64)[:64]
    config = json.dumps(ckpt.get("config", {}), sort_keys=True, default=str)
    return "legacy-" + hashlib.sha256(first.numpy().tobytes() + config.encode()).hexdigest()[:10]


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" or name.lower().startswith("mnist") else "a"


def load_ema_model(model: nn.Module, cfg, path: str | Path | None = None) -> nn.Module:
    """Put the EMA weights of a checkpoint (default: cfg's latest) into ``model`` and return it."""
    path = Path(path or checkpoint_path(cfg.checkpoint_dir))
    ckpt = load_checkpoint(path, cfg)
    load_weights(model, ckpt["model"], path)
    for p, s in zip(model.parameters(), ckpt["ema"]["shadow_params"]):
        p.data.copy_(s)
    return model.eval()
