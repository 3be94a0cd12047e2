"""Dense models in the project's weights format: the task, its classes and builder options in the metadata."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..models.weights import CheckpointMeta, load_weights, save_weights
from .recipe import DenseRecipe
from .tasks import DENSE_TASKS, build_dense_model

__all__ = ["save_dense_checkpoint", "load_dense_model", "backbone_network"]


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
    meta = CheckpointMeta(recipe.variant.removeprefix("dccnext_"), config, class_names,
                          task=task.name, dense_num_classes=num_classes, iteration=iteration,
                          dense_build={"min_size": recipe.min_size, "max_size": recipe.max_size,
                                       "out_norm": recipe.out_norm},
                          input_size=task.input_size(recipe))
    return save_weights(path, model if state is None else state, meta)


def load_dense_model(path: str | Path) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild a dense model from a checkpoint written by `train_dense`, strictly."""
    state, meta = load_weights(path)
    task = DENSE_TASKS.get(meta.task)
    if task is None or meta.dense_num_classes is None:
        raise CheckpointError(
            f"{path} is not a dense-task checkpoint (no task in its metadata); pass one written by train_dense"
        )
    model = build_dense_model(task, meta.variant, meta.dense_num_classes, drop_path_rate=0.0,
                              **meta.config.architecture_options(), **task.recorded_options(meta.dense_build or {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensors do not fit a {task.name} dccnext_{meta.variant} "
                              f"({str(e)[:200]})") from None
    return model, meta
