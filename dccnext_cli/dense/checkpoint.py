"""Dense models in the project's weights format: the task, its classes and builder options in the metadata.

The dense entries (`dense_num_classes`, `iteration`, `dense_build`) are this task's own: the weights format keeps
them as written (`CheckpointMeta.extra`) and `DenseMeta` writes, parses and checks them here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..models.weights import CheckpointMeta, broken_entry, load_weights, parse_count, parse_entry, save_weights
from .recipe import DenseRecipe
from .tasks import DENSE_TASKS, build_dense_model

__all__ = ["DenseMeta", "save_dense_checkpoint", "load_dense_model", "backbone_network"]


@dataclass(frozen=True)
class DenseMeta:
    """What a dense weights file says beyond the backbone: enough to rebuild the detector or segmenter."""

    num_classes: int  # the detector's / segmenter's classes (the backbone config's num_classes counts names)
    iteration: int | None = None  # optimiser steps taken
    build: dict[str, Any] = field(default_factory=dict)  # builder options (min_size, max_size, out_norm)

    def to_metadata(self) -> dict[str, str]:
        """The entries, under the keys dense files have always used (older files read unchanged)."""
        meta = {"dense_num_classes": str(self.num_classes), "dense_build": json.dumps(self.build)}
        if self.iteration is not None:
            meta["iteration"] = str(self.iteration)
        return meta

    @classmethod
    def of(cls, meta: CheckpointMeta, path: str | Path) -> DenseMeta:
        """The dense entries of a file's metadata, checked; one line naming the file and entry otherwise."""
        extra = meta.extra
        if meta.task not in DENSE_TASKS or "dense_num_classes" not in extra:
            raise CheckpointError(
                f"{path} is not a dense-task checkpoint (no task in its metadata); pass one written by train_dense"
            )
        build = parse_entry(path, extra, "dense_build", json.loads) if "dense_build" in extra else {}
        if not isinstance(build, dict):
            raise broken_entry(path, "dense_build", "expected a JSON object")
        wrong = [k for k, v in build.items() if not (isinstance(v, (int, float, bool)) or v is None)]
        if wrong:
            raise broken_entry(path, "dense_build", f"{wrong[0]} is not a number or true/false")
        iteration = parse_count(path, extra, "iteration") if "iteration" in extra else None
        return cls(parse_count(path, extra, "dense_num_classes"), iteration, build)


def backbone_network(model: nn.Module) -> nn.Module:
    """The DCCNeXt inside any dense model: BackboneWithFPN -> DCCNeXtBackbone -> DCCNeXt."""
    return model.backbone.body.body


def save_dense_checkpoint(path: str | Path, model: nn.Module, recipe: DenseRecipe, class_names: list[str] | None,
                          num_classes: int, iteration: int, state: dict[str, torch.Tensor] | None = None) -> Path:
    """The project's weights format; task, classes, builder options and training size go into the metadata.

    `state`: the tensors to write when they are not `model.state_dict()` (a launch's gathered state dict, from
    `training.full_state.gather_model_state` on every process); `model` then only describes the backbone.
    """
    task = recipe.dense_task
    config = backbone_network(model).config  # a backbone's: num_classes 0, unless the classes are named
    if class_names:  # the metadata's rule: as many names as the config's num_classes
        config = config.replace(num_classes=len(class_names))
    dense = DenseMeta(num_classes, iteration,
                      {"min_size": recipe.min_size, "max_size": recipe.max_size, "out_norm": recipe.out_norm})
    meta = CheckpointMeta(recipe.variant.removeprefix("dccnext_"), config, class_names, task=task.name,
                          input_size=task.input_size(recipe), extra=dense.to_metadata())
    return save_weights(path, model if state is None else state, meta)


def load_dense_model(path: str | Path) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a dense model from a checkpoint written by `train_dense`, strictly."""
    state, meta = load_weights(path)
    dense, task = DenseMeta.of(meta, path), DENSE_TASKS[meta.task]
    model = build_dense_model(task, meta.variant, dense.num_classes, drop_path_rate=0.0,
                              **meta.config.architecture_options(), **task.recorded_options(dense.build))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit a {task.name} dccnext_{meta.variant} "
                              f"({str(e)[:200]})") from None
    return model, meta
