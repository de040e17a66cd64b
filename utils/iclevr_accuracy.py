"""iCLEVR accuracy exactly as the course evaluator computes it (choosing w with it: ``utils.guidance``).

The course's ``evaluation_model`` is a torchvision ResNet-18 whose head is
``fc = Sequential(Linear(512, 24), Sigmoid())``, loaded from ``checkpoint.pth['model']``.
Images (B, 3, 64, 64) in [-1, 1] go in; for each image with k true objects it counts how many
of the k highest outputs are true objects. Accuracy = hits summed over the whole set / labels
summed over the whole set, so 32 test images give a multiple of 1/72, new_test of 1/84.
Unlike the course's class this runs on any device and takes the checkpoint path as an argument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import to_model, to_unit
from .devices import model_device

EVALUATOR_FILE = "checkpoint.pth"
HELP = ("The evaluator weights checkpoint.pth come with the course's lab files: see data_links.md, "
        "section iCLEVR, then set evaluator_checkpoint to its path.")


class EvaluatorError(RuntimeError):
    """The evaluator checkpoint is missing or not in the course's format. The message says what to do."""


def build_evaluator_network(num_labels: int = 24) -> nn.Module:
    """The course's classifier: torchvision ResNet-18, ``fc = Sequential(Linear(512, 24), Sigmoid())``."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, num_labels), nn.Sigmoid())
    return net


def find_evaluator(path: str | Path | None, data_dir: str | Path) -> Path | None:
    """The evaluator checkpoint: ``path`` if given (an error if it does not exist), else the first
    ``checkpoint.pth`` in data_dir, data_dir/file, data_dir/iclevr; None when there is none."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise EvaluatorError(f"evaluator_checkpoint={str(path)!r} does not exist. {HELP}")
        return path
    data_dir = Path(data_dir)
    return next((p for p in (data_dir / EVALUATOR_FILE, data_dir / "file" / EVALUATOR_FILE,
                             data_dir / "iclevr" / EVALUATOR_FILE) if p.is_file()), None)


def load_evaluator(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The course's ResNet-18 with the weights of ``checkpoint.pth`` (``weights_only=True``), in eval mode.

    Accepts the course's ``{'model': state_dict}``, a bare state dict, and either with DataParallel's
    ``module.`` prefix on every key.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluatorError(f"No evaluator checkpoint at {path}. {HELP}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "Unsupported global" in str(err):  # torch's weights-only unpickler met a Python class or function
            raise EvaluatorError(
                f"{path} contains Python objects beyond tensors, so it is refused for safety (loading it could run "
                "code). If you trust where it came from, load it there and re-save the weights alone: "
                "torch.save({'model': net.state_dict()}, path).") from err
        raise EvaluatorError(f"{path} is not a readable checkpoint ({err}). Download it again. {HELP}") from err
    net = build_evaluator_network()
    net.load_state_dict(_evaluator_state_dict(ckpt, path, net.state_dict()))
    return net.to(device).eval()


def _evaluator_state_dict(ckpt, path: Path, expected: dict) -> dict:
    """The ResNet-18 weights in ``ckpt`` (see ``load_evaluator``), checked against ``expected``'s keys and shapes."""
    state = ckpt["model"] if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if isinstance(state, dict) and state and all(str(k).startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if not isinstance(state, dict):
        found = type(state).__name__
    elif state.keys() != expected.keys():
        missing = [k for k in expected if k not in state]
        found = (f"keys {[str(k) for k in list(state)[:3]]}" + (f" … ({len(state)} in all)" if len(state) > 3 else "")
                 + (f", without {missing[:2]}" if missing else ""))
    else:
        bad = next((k for k, v in expected.items() if not torch.is_tensor(state[k]) or state[k].shape != v.shape), None)
        if bad is None:
            return state
        found = f"{bad} of shape {tuple(getattr(state[bad], 'shape', ()))}, not {tuple(expected[bad].shape)}"
    raise EvaluatorError(f"{path} is not the course's evaluator: expected {{'model': state_dict}} of its ResNet-18 "
                         f"(keys like conv1.weight, fc.0.weight; 24 labels); found {found}. {HELP}")


@dataclass
class Accuracy:
    """Course accuracy of one image set: ``hits`` true objects among the top-k, out of ``total`` labels."""

    hits: int
    total: int

    @property
    def value(self) -> float:
        return self.hits / self.total


def count_hits(scores: torch.Tensor, labels: torch.Tensor) -> Accuracy:
    """The course's ``compute_acc`` summed over a set.

    scores: (N, K) classifier outputs; labels: (N, K) multi-hot 0/1. For image i with
    k_i = Σ labels[i] true objects, hits_i = number of true objects among the k_i highest scores.
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must have the same shape.")
    scores, labels = scores.detach().float().cpu(), labels.detach().float().cpu()
    hits = total = 0
    for score, label in zip(scores, labels):
        k = int(label.sum().item())                 # number of true objects
        top = score.topk(k).indices                 # the k highest outputs
        hits += int(label[top].sum().item())
        total += k
    if total == 0:
        raise ValueError("The labels hold no objects: accuracy is undefined.")
    return Accuracy(hits, total)


@torch.inference_mode()
def accuracy(evaluator: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 64) -> Accuracy:
    """Course accuracy of ``images`` (N, 3, 64, 64) in [-1, 1] against multi-hot ``labels`` (N, 24)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images should be (N, 3, 64, 64); got {tuple(images.shape)}.")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label vectors.")
    low, high = images.min().item(), images.max().item()
    if low < -1.01 or high > 1.01:
        raise ValueError(f"images should be in [-1, 1] (model space); found [{low:.2f}, {high:.2f}]. "
                         "Clamp them, or convert with utils.data.to_model.")
    device = model_device(evaluator)          # fp32, as the course's evaluator runs: its numbers stay comparable
    scores = torch.cat([evaluator(images[i:i + batch_size].to(device, torch.float32)).cpu()
                        for i in range(0, len(images), batch_size)])   # (N, 24) in (0, 1)
    return count_hits(scores, labels)


def as_saved(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] → the same images after an 8-bit PNG round trip, still in [-1, 1].

    Scoring these gives the number a grader gets from the handed-in PNGs.
    """
    return to_model((to_unit(images.float()) * 255).round().to(torch.uint8))


def save_accuracy(results: dict[str, Accuracy], path: str | Path, **settings) -> Path:
    """Write ``accuracy.json``: per set its accuracy, hits and labels, plus the sampling ``settings``."""
    payload = {name: {"accuracy": acc.value, "hits": acc.hits, "labels": acc.total} for name, acc in results.items()}
    payload["settings"] = settings
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
