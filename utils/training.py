"""The one training loop. It takes a model, a ``loss_fn(model, batch)`` and a batch loader;
it knows nothing about diffusion.

Accelerate handles the device, mixed precision and multi-GPU; the loop adds EMA weights,
gradient clipping, a per-iteration loss history, a progress bar, atomic checkpoints with
automatic resume, a NaN guard and a time budget.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import (CHECKPOINT_FORMAT, CHECKPOINT_NAME, NEW_RUN_ADVICE, CheckpointError,  # noqa: F401
                          LockLost, TrainingLock, check_compatible, check_same_training, checkpoint_path,
                          load_checkpoint, load_ema_model, load_weights, new_run_id, run_id_of, trained_config)
from .devices import CPUThreads, pick_device, resolve_mixed_precision
from .io import atomic_save, leftover_temp_files, previous_path


@dataclass
class Progress:
    """What the ``on_log`` hook sees after every loss read-out (main process only)."""

    step: int                           # iterations done
    total_steps: int                    # iterations planned
    loss_history: list[float]           # one mean loss per iteration so far
    elapsed: float                      # seconds in this call
    ema_model: Callable[[], nn.Module]  # call to get the current EMA network (copies weights)
    final: bool = False                 # True on the last call


@dataclass
class TrainResult:
    model: nn.Module                    # the trained network (unwrapped, on its device)
    ema_model: nn.Module                # its EMA twin: sample with this one
    loss_history: list[float]           # one mean loss per iteration, all runs included
    step: int                           # iterations done
    stop_reason: str                    # "done", "time budget" or "already done"
    checkpoint: Path                    # where the final state was written
    run_id: str = ""                    # names the training run (kept across resumes); hand-in files record it


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(_as_nested_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_nested_tuple(v):
    return tuple(_as_nested_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def _seed_rank(seed: int, accelerator) -> None:
    """Give each process its own random stream (timesteps, noise, label dropout) from ``seed``."""
    random.seed(seed * 1009 + accelerator.process_index)
    torch.manual_seed(seed * 1009 + accelerator.process_index)


def _resume_rng(ckpt: dict, accelerator, seed: int) -> None:
    """Each process gets back its own saved RNG state; with another process count, fresh streams."""
    states = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if len(states) == accelerator.num_processes:
        _set_rng_state(states[accelerator.process_index])
    else:
        _seed_rank(seed + ckpt["step"], accelerator)


def _set_peak_learning_rate(lr_scheduler, learning_rate: float) -> None:
    """Make ``learning_rate`` the schedule's peak from the current step on (diffusers' schedules are
    ``LambdaLR``: lr = peak × factor(step)); a resumed run may lower it, e.g. after a NaN stop."""
    if not hasattr(lr_scheduler, "lr_lambdas"):
        return
    lr_scheduler.base_lrs = [learning_rate] * len(lr_scheduler.base_lrs)
    for group, factor in zip(lr_scheduler.optimizer.param_groups, lr_scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(lr_scheduler.last_epoch)
    lr_scheduler._last_lr = [group["lr"] for group in lr_scheduler.optimizer.param_groups]


def _sync_from_main(model: nn.Module, accelerator) -> None:
    """Copy the main process's weights to every process, so all ranks (and their EMA) start equal."""
    if accelerator.num_processes > 1:
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


def _stop_everywhere(error: Exception | None, accelerator, what: str) -> None:
    """Raise ``error`` (the main process's) on every process, so none waits at the next collective for
    one that stopped; ``what`` names it for the others."""
    if accelerator.num_processes > 1 and _main_decides(error is not None, accelerator) and error is None:
        error = CheckpointError(f"The main process {what}: see its message.")
    if error is not None:
        raise error


def _main_value(value: str, accelerator) -> str:
    """The main process's ``value`` on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _main_decides(flag: bool, accelerator) -> bool:
    """The main process's ``flag`` on every process (one tiny broadcast)."""
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(flag)], device=accelerator.device)).item())


def loop_parameters(model: nn.Module):
    """The parameters the loop's optimizer trains: ``model.loop_parameters()`` when the model declares them
    (a GAN whose discriminator steps its own optimizer inside ``loss_fn``), else all of them."""
    declared = getattr(model, "loop_parameters", None)
    return declared() if callable(declared) else model.parameters()


def notebook_accelerator(mixed_precision: str):
    """A single-process ``Accelerator`` on ``pick_device()`` in ``mixed_precision`` (a config's setting).

    Accelerate keeps one state per process and refuses a second precision; a notebook that trains a
    DDPM in fp16 and then a DCGAN in fp32 (notebook 04), or a student who changes the setting and runs
    the cell again, would hit that. A single process has nothing to lose by a fresh state, so it gets one.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device = pick_device()
    precision = resolve_mixed_precision(mixed_precision, device)
    cpu = device.type == "cpu"
    if AcceleratorState._shared_state:
        state = AcceleratorState()
        moved = cpu != (state.device.type == "cpu")       # DDPM_DEVICE=cpu on a GPU machine, or back
        if state.num_processes == 1 and (state.mixed_precision != precision or moved):
            AcceleratorState._reset_state(reset_partial_state=moved)
    return Accelerator(mixed_precision=precision, cpu=cpu)


@contextlib.contextmanager
def folder_lock(cfg, accelerator):
    """Hold ``cfg.checkpoint_dir``'s ``TrainingLock`` on the main process (``None`` on the others); a busy
    or unwritable folder stops every process. For a caller that writes more (the CLI's hand-in) under the
    lock that ``train(..., lock=...)`` trains under."""
    with contextlib.ExitStack() as stack:
        error, lock = None, None
        if accelerator.is_main_process:
            try:
                lock = stack.enter_context(TrainingLock(cfg.checkpoint_dir))
            except CheckpointError as err:
                error = err
        _stop_everywhere(error, accelerator, f"could not lock {cfg.checkpoint_dir}")
        if lock is not None and lock.took_over:
            print(f"Took over the lock of {cfg.checkpoint_dir} from {lock.took_over}.")
        yield lock


_OWN_LOCK = object()


def train(model: nn.Module, loss_fn: Callable, loader, cfg, *, on_log: Callable[[Progress], None] | None = None,
          accelerator=None, progress: bool = True, lock=_OWN_LOCK) -> TrainResult:
    """Train ``model`` to minimise ``loss_fn(model, batch)`` over ``loader``; return the result.

    ``loader`` has ``len()`` (batches per epoch) and ``epoch(e, start)`` (batches of epoch e
    from index ``start``), like ``utils.data.BatchLoader``. Reads from ``cfg``: num_epochs,
    max_steps, learning_rate, adam_betas (optional), lr_schedule, warmup_steps, weight_decay, grad_clip, ema_decay,
    mixed_precision, log_every, checkpoint_every, time_budget_minutes, resume, checkpoint_dir,
    and, where the config has them, channels_last and torch_compile.
    With ``cfg.resume`` a run continues from ``checkpoint_dir/last.pt``: same step count,
    loss history, optimizer, EMA and RNG state. ``on_log(Progress)`` runs on the main process
    after every loss read-out.

    Under several processes (``accelerate launch``) build ``loader`` with ``rank`` =
    ``accelerator.process_index`` and ``world_size`` = ``accelerator.num_processes`` and pass
    that ``accelerator``: every process starts from the main process's weights and draws its
    own noise, the history holds the mean loss over processes (one entry per step), and only
    the main process writes checkpoints. Resuming on several machines needs ``checkpoint_dir``
    on a file system they share. While it trains, ``checkpoint_dir/training.lock`` keeps a second
    run out of the same folder (``TrainingLock``; pass ``lock=`` what ``folder_lock`` gave to train under a
    lock you hold). A run that finds its lock taken over (it was paused past the staleness and another run
    took the folder) stops with ``LockLost`` and writes nothing more.

    Weights that are not finite are never saved: a NaN or infinite loss, or weights gone non-finite
    at a checkpoint step, stop training with a ``FloatingPointError`` that names the last good checkpoint.
    """
    if accelerator is None:
        accelerator = notebook_accelerator(cfg.mixed_precision)
    if lock is not _OWN_LOCK:
        return _train(model, loss_fn, loader, cfg, on_log, accelerator, progress, lock)
    with folder_lock(cfg, accelerator) as held:
        return _train(model, loss_fn, loader, cfg, on_log, accelerator, progress, held)


def optimization_step(loss_fn: Callable, model, batch: dict, accelerator, optimizer, trained: list, grad_clip: float,
                      ema, ema_source: nn.Module) -> torch.Tensor:
    """One iteration: the loss of ``batch``, backward, gradient clipping (``grad_clip`` > 0), the AdamW step, the EMA
    update from ``ema_source``. Returns the loss. The loop runs it (then the learning-rate step); notebook 04's
    ``compare.seconds_per_step`` times it."""
    loss = loss_fn(model, batch)
    accelerator.backward(loss)
    if grad_clip:
        accelerator.clip_grad_norm_(trained, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(ema_source.parameters())
    return loss


def _train(model: nn.Module, loss_fn: Callable, loader, cfg, on_log, accelerator, progress: bool,
           lock: TrainingLock | None) -> TrainResult:
    """``train`` after the accelerator and the folder lock are in place."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    main = accelerator.is_main_process
    steps_per_epoch = len(loader)
    total_steps = cfg.max_steps or cfg.num_epochs * steps_per_epoch

    model = model.to(accelerator.device)
    if getattr(cfg, "channels_last", False):  # NHWC: faster convolutions on tensor-core GPUs
        model = model.to(memory_format=torch.channels_last)
    _sync_from_main(model, accelerator)
    trained = list(loop_parameters(model))     # what the loop's optimizer steps (a GAN's D has its own)
    optimizer = torch.optim.AdamW(trained, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=getattr(cfg, "adam_betas", (0.9, 0.999)))  # GANs use β1 = 0.5
    lr_scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=total_steps)
    lr_scheduler.span = (0, total_steps)       # the steps this schedule runs over (saved; see _continue_schedule)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, foreach=True)
    history, step, run_id = _resume(model, optimizer, lr_scheduler, ema, cfg, accelerator, total_steps,
                                    steps_per_epoch)
    if step == 0 and accelerator.num_processes > 1:
        _seed_rank(cfg.seed, accelerator)
    accelerator.wait_for_everyone()

    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    # compiled for the training forward only: checkpoints and the EMA twin use the plain module
    forward_model = torch.compile(model) if getattr(cfg, "torch_compile", False) else model
    ema_model = _EMATwin(raw_model, ema, accelerator)
    checkpoints = _Checkpoints(cfg, accelerator, raw_model, ema, optimizer, lr_scheduler, history, saved_step=step,
                               run_id=run_id, lock=lock)

    def finished(reason: str) -> TrainResult:
        """The result, its networks without Accelerate's training autocast (sampling picks its precision)."""
        plain = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        return TrainResult(plain, ema_model(), history, step, reason, checkpoints.file, run_id)

    if step >= total_steps:
        if main:
            print(f"The checkpoint is already at step {step} of {total_steps}, trained with these settings: nothing "
                  f"to train. Raise max_steps/num_epochs to train it longer (its learning rate restarts: a short warm-up, "
                  f"then a new decay over the added steps). {NEW_RUN_ADVICE}")
        return finished("already done")

    start_time = time.monotonic()
    budget = cfg.time_budget_minutes * 60 if cfg.time_budget_minutes else math.inf
    bar = tqdm(total=total_steps, initial=step, desc="training", disable=not (main and progress),
               unit="it", dynamic_ncols=True)
    losses = _LossReadout(history, bar, lr_scheduler, checkpoints, accelerator, on_log, ema_model, total_steps,
                          start_time)
    stop_reason = "done"
    one_process = accelerator.device if accelerator.num_processes == 1 else None   # several: each keeps its threads
    with CPUThreads(one_process) as threads:
        model.train()
        while step < total_steps:
            epoch, start = divmod(step, steps_per_epoch)
            for batch in loader.epoch(epoch, start):
                threads.tick()
                loss = optimization_step(loss_fn, forward_model, batch, accelerator, optimizer, trained, cfg.grad_clip,
                                         ema, raw_model)
                lr_scheduler.step()
                losses.add(loss)
                step += 1
                out_of_time = time.monotonic() - start_time > budget
                if accelerator.num_processes > 1:  # all processes stop at one step: the main one decides at read-outs
                    out_of_time = budget < math.inf and step % cfg.log_every == 0 and _main_decides(out_of_time, accelerator)
                last = step == total_steps or out_of_time
                if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or last:
                    losses.read(step, final=last)
                if step % cfg.checkpoint_every == 0 or last:
                    checkpoints.save(step, bar)
                if last:
                    break
            if out_of_time:
                stop_reason = "time budget"
                if main:
                    print(f"Time budget of {cfg.time_budget_minutes} min reached at step {step} of {total_steps}; "
                          "checkpoint saved. Run this cell again to continue.")
                break
    bar.close()
    if main and threads.switched_to_fewer:
        print(f"The CPU was busy: {threads.switched_to_fewer} of the loop's speed checks found {threads.fewer} thread(s) "
              f"faster than all {threads.all}, and it trained on {threads.fewer} until the next check "
              "(utils.devices.CPUThreads).")
    return finished(stop_reason)


def _resume(model: nn.Module, optimizer, lr_scheduler, ema, cfg, accelerator,
            total_steps: int, steps_per_epoch: int) -> tuple[list[float], int, str]:
    """Start from ``cfg.checkpoint_dir``: with ``cfg.resume`` the saved state goes back into the model,
    optimizer, schedule and EMA; without it the earlier checkpoints are set aside. Returns (loss history, step,
    run id): a new run gets a new id."""
    ckpt_file = checkpoint_path(cfg.checkpoint_dir)
    if accelerator.is_main_process:
        for leftover in leftover_temp_files(ckpt_file):   # saves a killed run never finished (this run holds the lock)
            leftover.unlink(missing_ok=True)
    has_checkpoint = ckpt_file.exists() or previous_path(ckpt_file).exists()
    if has_checkpoint and cfg.resume:
        return _restore(ckpt_file, model, optimizer, lr_scheduler, ema, cfg, accelerator, total_steps, steps_per_epoch)
    if has_checkpoint and accelerator.is_main_process:
        _set_aside(ckpt_file)
    return [], 0, _main_value(new_run_id(), accelerator)


def _restore(ckpt_file: Path, model: nn.Module, optimizer, lr_scheduler, ema, cfg, accelerator,
             total_steps: int, steps_per_epoch: int) -> tuple[list[float], int, str]:
    """Load ``ckpt_file`` (checked against ``cfg``) into the training state; return (loss history, step, run id)."""
    main = accelerator.is_main_process
    ckpt = load_checkpoint(ckpt_file, cfg)
    changed = check_same_training(ckpt["config"], cfg, ckpt_file, finished=ckpt["step"] >= total_steps)
    load_weights(model, ckpt["model"], ckpt_file)
    optimizer.load_state_dict(ckpt["optimizer"])
    lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    schedule_note = _continue_schedule(lr_scheduler, cfg, ckpt, total_steps, steps_per_epoch)
    _set_peak_learning_rate(lr_scheduler, cfg.learning_rate)   # the saved state holds the old one
    ema.load_state_dict(ckpt["ema"])
    ema.decay = cfg.ema_decay
    ema.to(accelerator.device)
    history = ckpt["loss_history"].tolist()
    step = ckpt["step"]
    _resume_rng(ckpt, accelerator, cfg.seed)
    if accelerator.scaler is not None and ckpt.get("scaler"):
        accelerator.scaler.load_state_dict(ckpt["scaler"])
    accelerator.wait_for_everyone()            # every process has read it before the files move
    if main and ckpt.get("loaded_from"):       # last.pt damaged or missing: the one before becomes last.pt
        if ckpt_file.exists():
            ckpt_file.rename(ckpt_file.with_name(f"last.damaged-{time.strftime('%Y%m%d-%H%M%S')}.pt"))
        os.replace(previous_path(ckpt_file), ckpt_file)
    if main:
        print(f"Resuming from {ckpt_file}: step {step} of {total_steps}, {len(history)} losses kept.")
        if changed:
            print(f"From step {step} on with your changed settings: " + "; ".join(changed) + ".")
        if schedule_note:
            print(schedule_note)
    return history, step, run_id_of(ckpt)


def _continue_schedule(lr_scheduler, cfg, ckpt: dict, total_steps: int, steps_per_epoch: int) -> str:
    """Fit the restored learning-rate schedule to a run whose planned length changed; return what was done ("" if
    nothing). The schedule's span (first step, last step) is saved with each checkpoint (``lr_scheduler.span``).

    A run that had finished its schedule (its learning rate decayed to the end) and is asked for more steps gets
    a warm restart: a short linear warm-up back to the peak (``warmup_steps``, at most a tenth of the new steps),
    then a new decay over the added steps, as SGDR (Loshchilov & Hutter 2017) does. Without it the cosine would
    resume mid-curve, at whatever the longer schedule prescribes for that step (≈ half the peak when a 10k run
    is raised to 20k). An unfinished run keeps its start and ends its decay at the new last step.
    """
    from diffusers.optimization import get_scheduler

    saved = ckpt["config"]
    start, end = ckpt.get("lr_schedule_span") or (0, saved.get("max_steps") or saved["num_epochs"] * steps_per_epoch)
    step = ckpt["step"]
    if end == total_steps or not hasattr(lr_scheduler, "lr_lambdas"):
        note = ""
    elif step >= end:                           # finished: a warm restart over the added steps
        start, warmup = step, min(cfg.warmup_steps, max(1, (total_steps - step) // 10))
        note = (f"The run had finished its learning-rate schedule at step {step}; training on to step {total_steps} "
                f"with a new one: a warm-up over {warmup} steps back to lr = {cfg.learning_rate:g}, then a "
                f"{cfg.lr_schedule} decay over the {total_steps - step} added steps.")
    else:
        warmup = cfg.warmup_steps
        note = (f"The learning-rate schedule now ends at step {total_steps} instead of {end}: from step {step} on "
                f"it follows the {cfg.lr_schedule} curve of the longer run.")
    if note:
        one = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)       # only to borrow the curve
        curve = get_scheduler(cfg.lr_schedule, one, num_warmup_steps=warmup,
                              num_training_steps=total_steps - start).lr_lambdas[0]
        lr_scheduler.lr_lambdas = [lambda s, curve=curve, start=start: curve(max(0, s - start))
                                   for _ in lr_scheduler.lr_lambdas]
    lr_scheduler.span = (start, total_steps)
    return note


def _set_aside(ckpt_file: Path) -> None:
    """resume=False: rename ``last.pt`` and ``last.previous.pt`` to ``replaced_<time>…`` so a new run starts."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    kept = [f.rename(f.with_name(f"replaced_{stamp}{f.name[len('last'):]}"))
            for f in (ckpt_file, previous_path(ckpt_file)) if f.exists()]
    print(f"resume=False: starting over; the earlier checkpoints are kept as {', '.join(map(str, kept))}.")


class _EMATwin:
    """Call it for the current EMA network: one copy of the model, made on first use, refreshed each call,
    without the training autocast (samplers choose their own precision)."""

    def __init__(self, raw_model: nn.Module, ema, accelerator):
        self.raw_model, self.ema, self.accelerator = raw_model, ema, accelerator
        self.twin = None

    def __call__(self) -> nn.Module:
        if self.twin is None:
            self.twin = self.accelerator.unwrap_model(copy.deepcopy(self.raw_model), keep_fp32_wrapper=False)
            self.twin.eval().requires_grad_(False)
        self.ema.copy_to(self.twin.parameters())
        return self.twin


class _Checkpoints:
    """The run's ``last.pt``: saves the whole training state (finite weights only) and says which one is
    the last good checkpoint when training has to stop."""

    def __init__(self, cfg, accelerator, raw_model: nn.Module, ema, optimizer, lr_scheduler, history: list[float],
                 saved_step: int, run_id: str, lock: TrainingLock | None):
        self.cfg, self.accelerator = cfg, accelerator
        self.raw_model, self.ema, self.optimizer, self.lr_scheduler = raw_model, ema, optimizer, lr_scheduler
        self.history = history                    # the loop's list, extended in place
        self.file = checkpoint_path(cfg.checkpoint_dir)
        self.saved_step = saved_step or None      # the step of the last good checkpoint on disk, None for none
        self.run_id = run_id                      # saved with every checkpoint: names the run
        self.lock = lock                          # the folder's lock (main process), checked before every write

    def last_good(self) -> str:
        if self.saved_step is None:
            return "No checkpoint of this run was written, so running the cell again starts from scratch."
        again = ("running the cell again resumes from it; resume=False starts over" if self.cfg.resume else
                 "set resume=True to continue from it (with resume=False a rerun starts over)")
        return f"The last good checkpoint is {self.file} (step {self.saved_step}), untouched: {again}."

    def what_now(self) -> str:
        """What to do after a NaN: the last good checkpoint, then gentler settings."""
        return (f"{self.last_good()} Lower learning_rate (now {self.cfg.learning_rate}) or grad_clip, or set "
                "mixed_precision='no', then run again.")

    def save(self, step: int, bar) -> None:
        """Write the state at ``step`` (main process), or stop every process if the weights are not finite or
        the write fails; ``bar`` is closed before an error so its message stays readable."""
        from accelerate.utils import gather_object

        accelerator = self.accelerator
        finite = torch.stack([p.detach().isfinite().all() for p in self.raw_model.parameters()]).all()
        if not bool(finite):   # one sync per checkpoint: bad weights never overwrite good ones
            bar.close()
            raise FloatingPointError(
                f"The weights became NaN or infinite by step {step} (the losses read so far were finite); nothing "
                f"was saved. {self.what_now()}")
        accelerator.wait_for_everyone()
        rng_ranks = gather_object([_rng_state()])  # every process's RNG state, in rank order
        failure = None
        if accelerator.is_main_process:
            try:
                if self.lock is not None:
                    self.lock.verify()            # lost (paused past the staleness)? stop before writing anything
                atomic_save({
                    "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(), "step": step, "run_id": self.run_id,
                    "model": self.raw_model.state_dict(), "ema": self.ema.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                    "lr_schedule_span": list(self.lr_scheduler.span),
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                    "loss_history": torch.tensor(self.history, dtype=torch.float64), "rng": rng_ranks[0],
                    "rng_ranks": rng_ranks,
                }, self.file, keep_previous=True, verify=True, guard=self.lock.owned if self.lock is not None else None)
            except LockLost as err:
                failure = LockLost(f"{err} This run's steps after its last checkpoint (step {self.saved_step or 0}) "
                                   f"are not saved: step {step} was not written.")
            except OSError as err:
                failure = CheckpointError(
                    f"Could not write the checkpoint {self.file} at step {step} ({err.strerror or err}). "
                    f"{self.last_good()} Free space (or quota on Drive) or choose another checkpoint_dir, then run "
                    "again.")
                failure.__cause__ = err
        if failure is not None:
            bar.close()
        _stop_everywhere(failure, accelerator, f"could not write {self.file}")
        self.saved_step = step


class _LossReadout:
    """The losses of the steps since the last read-out: kept on the device, then moved to the host in one
    sync, checked for NaN, added to the history, shown on the progress bar and handed to ``on_log``."""

    def __init__(self, history: list[float], bar, lr_scheduler, checkpoints: _Checkpoints, accelerator, on_log,
                 ema_model: Callable[[], nn.Module], total_steps: int, start_time: float):
        self.history, self.bar, self.lr_scheduler, self.checkpoints = history, bar, lr_scheduler, checkpoints
        self.accelerator, self.on_log, self.ema_model, self.total_steps = accelerator, on_log, ema_model, total_steps
        self.start_time = start_time              # time.monotonic() when this call started training
        self.pending: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())

    def read(self, step: int, final: bool = False) -> None:
        if not self.pending:
            return
        accelerator = self.accelerator
        losses = accelerator.gather(torch.stack(self.pending).float()).view(accelerator.num_processes, -1).mean(0)
        values = losses.tolist()
        first = step - len(values) + 1
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            self.bar.close()
            raise FloatingPointError(
                f"The loss became {values[bad]} at step {first + bad}; training stopped. "
                f"{self.checkpoints.what_now()}")
        self.history.extend(values)
        self.pending = []
        self.bar.update(len(values))
        self.bar.set_postfix(loss=f"{sum(values) / len(values):.4f}", lr=f"{self.lr_scheduler.get_last_lr()[0]:.1e}")
        if self.on_log is not None and accelerator.is_main_process:
            self.on_log(Progress(step, self.total_steps, self.history, time.monotonic() - self.start_time,
                                 self.ema_model, final))
