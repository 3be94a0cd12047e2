"""Detection and segmentation with DCCNeXt backbones: data, training, evaluation and FLOPs per task.

Models are built in `dccnext_cli.models.dense`; this package holds what runs them.
"""

from .data import ADE20KSegmentation, CocoInstances, open_dense_data
from .engine import evaluate_dense, load_dense_model, save_dense_checkpoint, train_dense
from .flops import count_task
from .recipe import DenseRecipe, load_dense_recipe

__all__ = [
    "ADE20KSegmentation",
    "CocoInstances",
    "DenseRecipe",
    "count_task",
    "evaluate_dense",
    "load_dense_model",
    "load_dense_recipe",
    "open_dense_data",
    "save_dense_checkpoint",
    "train_dense",
]
