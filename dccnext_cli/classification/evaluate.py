"""Top-1/top-5 accuracy and loss: of a model on batches (used by `train`), and of a checkpoint on a data source.

The evaluation transform is the recipe's (resize to size/crop_pct, centre crop, normalise), rebuilt from the
checkpoint's metadata, so `eval` scores a model exactly as its training run did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..common.device import default_device
from ..common.threads import fit_threads
from ..data.images import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from ..data.loading import build_loader
from ..data.sources import open_split, parse_data
from ..errors import DataError
from ..models.dccnext import DCCNeXt
from ..models.inference import optimize_for_inference
from ..models.precision import DEFAULT_PRECISION, to_precision
from ..models.weights import CheckpointMeta

__all__ = ["EvalResult", "Lockstep", "evaluate_batches", "evaluate_checkpoint", "eval_settings", "DEFAULT_EVAL_DATA"]

DEFAULT_EVAL_DATA = "builtin:fashion-mnist"


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    loss: float
    samples: int
    skipped_images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "samples": self.samples,
                "skipped_images": self.skipped_images, **self.extra}


def eval_settings(meta: CheckpointMeta) -> dict[str, Any]:
    """The evaluation transform a checkpoint was trained with (224, crop 1.0, bicubic, ImageNet stats if unknown)."""
    recipe = meta.recipe or {}
    size = meta.input_size or tuple(recipe.get("input_size", (224, 224)))
    return {"resolution": tuple(size), "crop_pct": recipe.get("crop_pct", 1.0),
            "interpolation": recipe.get("interpolation", "bicubic"),
            "mean": tuple(recipe.get("mean", IMAGENET_MEAN)), "std": tuple(recipe.get("std", IMAGENET_STD))}


@dataclass
class Lockstep:
    """For engines whose every forward pass is a collective (FSDP, ZeRO-3): processes keep forwarding `filler`
    (not scored) until none has a batch left, so one that runs out first does not leave the others waiting."""

    any_left: Callable[[bool], bool]  # given whether this process has a batch, whether any process has one
    filler: torch.Tensor  # one input of the right shape, on the device


def _batches_within(batches: Iterable, max_samples: int | None, totals: torch.Tensor) -> Iterator:
    """(images, labels) to score, counting skipped images into `totals[4]`, up to `max_samples`."""
    for images, labels, skipped in batches:
        fit_threads()
        totals[4] += skipped
        if max_samples is not None:
            room = max_samples - int(totals[3])
            if room <= 0:
                return
            images, labels = images[:room], labels[:room]
        if len(labels):
            yield images, labels


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable, num_classes: int, *, device: torch.device,
                     max_samples: int | None = None, reduce=None, autocast=None, on_batch=None,
                     lockstep: Lockstep | None = None, dtype: torch.dtype | None = None) -> EvalResult:
    """Accuracy over batches of (images, labels, skipped); `reduce` sums counts over processes when distributed.

    `dtype` casts the images (to the model's own format, see `models.precision`); logits are scored in float32.
    """
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, samples, skipped
    mine = _batches_within(batches, max_samples, totals)
    while True:
        item = next(mine, None)
        if lockstep is not None and not lockstep.any_left(item is not None):
            break
        if item is None:
            if lockstep is None:
                break
            _forward(model, lockstep.filler, autocast)  # keeps step with processes that still have batches
            continue
        images, labels = item[0].to(device, dtype), item[1].to(device)
        if int(labels.max()) >= num_classes or int(labels.min()) < 0:
            raise DataError(f"a label {int(labels.max())} is outside the model's {num_classes} classes; "
                            "the data and the checkpoint do not match")
        logits = _forward(model, images, autocast)
        top = logits.topk(k, dim=1).indices
        totals[0] += (top[:, 0] == labels).sum()
        totals[1] += (top == labels[:, None]).any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, labels, reduction="sum")
        totals[3] += len(labels)
        if on_batch is not None:
            on_batch(len(labels))
    if reduce is not None:
        totals = reduce(totals)
    model.train(was_training)
    n = max(int(totals[3]), 1)
    return EvalResult(100 * float(totals[0]) / n, 100 * float(totals[1]) / n, float(totals[2]) / n, int(totals[3]),
                      int(totals[4]))


def _forward(model: torch.nn.Module, images: torch.Tensor, autocast) -> torch.Tensor:
    if autocast is None:
        return model(images).float()
    with autocast():
        return model(images).float()


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, split: str | None = None, *,
                        batch_size: int = 256, workers: int = 0, max_samples: int | None = None,
                        image_column: str | None = None, label_column: str | None = None,
                        device: str | torch.device | None = None, progress=None,
                        precision: str = DEFAULT_PRECISION) -> EvalResult:
    """Score a checkpoint; by default on its training run's evaluation split, else the embedded test split.

    `precision` ("fp32" or "bf16", `models.precision`) is the format the weights and activations run in.
    """
    model, meta = DCCNeXt.from_checkpoint(checkpoint)
    model = optimize_for_inference(model)
    dtype = to_precision(model, precision)
    recipe = meta.recipe or {}
    data = data or recipe.get("data") or DEFAULT_EVAL_DATA
    split = split or (recipe.get("eval_split") if data == recipe.get("data") else None) or (
        "test" if data.startswith("builtin:") else "validation")
    source = parse_data(data)
    part = open_split(source, split, image_column=image_column or recipe.get("image_column"),
                      label_column=label_column or recipe.get("label_column"), class_names=meta.class_names)
    if part.num_classes is not None and part.num_classes != meta.num_classes:
        raise DataError(f"{data} ({split}) has {part.num_classes} classes but the checkpoint has "
                        f"{meta.num_classes}; evaluate it on the data it was trained for")
    settings = eval_settings(meta)
    batches = build_loader(part, eval_transform(**settings), batch_size, train=False, workers=workers)
    device = default_device(device)
    model.to(device)
    known = [n for n in (part.num_samples, max_samples) if n is not None]  # a stream may have no length
    total = min(known) if known else None
    if progress is not None:
        progress.start(total, title=f"evaluating {Path(checkpoint).name} on {data} ({split})")
    forwarded = []  # one entry per batch scored

    def on_batch(n: int) -> None:
        forwarded.append(n)
        if progress is not None:
            progress.advance(n)

    try:
        result = evaluate_batches(model, batches.epoch(0), meta.num_classes, device=device, max_samples=max_samples,
                                  on_batch=on_batch, dtype=dtype)
    finally:
        if progress is not None:
            progress.stop()
    if result.samples == 0:
        raise DataError(f"no image of {data} ({split}) could be read; nothing was evaluated")
    result.extra = {"checkpoint": str(checkpoint), "data": data, "split": split,
                    "resolution": list(settings["resolution"]), "precision": precision, "batches": len(forwarded),
                    "dtype": str(dtype).removeprefix("torch.")}
    return result
