"""Detection and segmentation with DCCNeXt backbones: the models, data, training, evaluation and FLOPs per task.

Each task is one registered `DenseTask` (`tasks.DENSE_TASKS`): retinanet, mask-rcnn, semantic-fpn.
Names load on first use (`common.lazy`): the task registry itself imports no torch.
"""

from ..common.lazy import lazy_exports

EXPORTS = {
    ".checkpoint": ("DenseMeta", "load_dense_model", "save_dense_checkpoint"),
    ".data": ("ADE20KSegmentation", "CocoInstances"),
    ".evaluate": ("evaluate_dense",),
    ".flops": ("count_task",),
    ".models": ("build_backbone",),
    ".recipe": ("DenseRecipe", "load_dense_recipe"),
    ".tasks": ("DENSE_TASKS", "DenseTask", "build_dense_model", "get_dense_task"),
    ".train": ("train_dense",),
}
__all__ = [name for names in EXPORTS.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
