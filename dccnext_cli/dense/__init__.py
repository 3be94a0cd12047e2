"""Detection and segmentation with DCCNeXt backbones: the models, data, training, evaluation and FLOPs per task.

Each task is one registered `DenseTask` (`tasks.DENSE_TASKS`): retinanet, mask-rcnn, semantic-fpn.
"""

from .checkpoint import load_dense_model, save_dense_checkpoint
from .data import ADE20KSegmentation, CocoInstances
from .evaluate import evaluate_dense
from .flops import count_task
from .models import build_backbone
from .recipe import DenseRecipe, load_dense_recipe
from .tasks import DENSE_TASKS, DenseTask, build_dense_model, get_dense_task
from .train import train_dense

__all__ = [
    "ADE20KSegmentation",
    "CocoInstances",
    "DENSE_TASKS",
    "DenseRecipe",
    "DenseTask",
    "build_backbone",
    "build_dense_model",
    "count_task",
    "evaluate_dense",
    "get_dense_task",
    "load_dense_model",
    "load_dense_recipe",
    "save_dense_checkpoint",
    "train_dense",
]
