"""The dense tasks, each one registered object: how it reads data, builds its model, computes its loss,
evaluates a batch, and which layers its FLOP count runs. Nothing else in the package dispatches on a
task's name; `DENSE_TASKS` is the registry the CLI's `--task` choices and the recipes are checked against.

| task         | data          | model                                  | metric           | default size |
|--------------|---------------|----------------------------------------|------------------|--------------|
| retinanet    | coco:PATH     | FPN on stages 2-4 + P6/P7, RetinaNet 1x | COCO box AP      | 1280x800     |
| mask-rcnn    | coco:PATH     | FPN on stages 1-4, Mask R-CNN 1x       | COCO box/mask AP | 1280x800     |
| semantic-fpn | ade20k:PATH   | FPN on stages 1-4, Semantic FPN head   | mIoU, aAcc       | 512x512      |
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..common.command_options import EVAL_OPTIONS, TRAIN_OPTIONS
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn
    from torch.utils.data import Dataset

    from .data import SegAugment

__all__ = ["DenseTask", "DENSE_TASKS", "TaskParts", "get_dense_task", "build_dense_model"]

Batch = Any  # (images, targets) as the task's collate returns them


@dataclass(frozen=True)
class TaskParts:
    """What a task runs, loaded (with torch) the first time it is asked for."""

    build: Callable[..., nn.Module]  # build(variant, num_classes=..., **options)
    collate: Callable[[list], Batch]
    loss: Callable[[nn.Module, Any, Any, torch.device], dict[str, torch.Tensor]]
    evaluate_batch: Callable[[nn.Module, Any, Any, Any, torch.device], None]
    flop_view: Callable[[nn.Module], nn.Module]
    flop_parts: dict[str, str]


# --------------------------------------------------------------------- the task object
@dataclass(frozen=True)
class DenseTask:
    """One detection or segmentation task: everything the engine, the FLOP count and the CLI need.

    Naming it costs nothing (the CLI's --task choices and help); its parts load on first use.
    """

    name: str
    summary: str  # one line for --help
    data_scheme: str  # the --data prefix it reads: coco or ade20k
    recipe: str  # its bundled recipe under recipes/dense/
    default_resolution: tuple[int, int]  # (height, width) of the FLOP count and the paper's table
    paper_b2: tuple[float, float]  # the paper's B2 figures: params (M), FLOPs (G)
    load_parts: Callable[[], TaskParts] = field(repr=False, compare=False)
    detector: bool = True  # torchvision detector: takes min_size/max_size, resizes its own inputs
    with_masks: bool = False
    default_num_classes: int | None = None  # when the data does not name its classes
    eval_batch_size: int = 1  # eval's default --batch-size (images of their own sizes, up to 1333 px)
    # command -> the options it honours: all of them (--res sets the crop or the detector's resize, `size_keys`)
    honours: dict[str, frozenset[str]] = field(
        default_factory=lambda: {"train": TRAIN_OPTIONS, "eval": EVAL_OPTIONS}, compare=False, repr=False)

    @property
    def build(self) -> Callable[..., nn.Module]:
        return self.load_parts().build

    @property
    def collate(self) -> Callable[[list], Batch]:
        return self.load_parts().collate

    @property
    def loss(self) -> Callable[..., dict[str, torch.Tensor]]:
        return self.load_parts().loss

    @property
    def evaluate_batch(self) -> Callable[..., None]:
        return self.load_parts().evaluate_batch

    @property
    def flop_view(self) -> Callable[[nn.Module], nn.Module]:
        return self.load_parts().flop_view

    @property
    def flop_parts(self) -> dict[str, str]:
        return self.load_parts().flop_parts

    def open_data(self, spec: str | Dataset, train: bool, num_classes: int | None = None,
                  augment: SegAugment | None = None, hflip: float = 0.5, split: str | None = None) -> Dataset:
        """The task's data set from a `--data` value (or a Dataset, passed through); `split` (train or
        validation) picks the images, `train` the augmentation; by default they agree."""
        from .data import open_dense_source

        return open_dense_source(spec, self.data_scheme, self.name, train, with_masks=self.with_masks,
                                 num_classes=num_classes, augment=augment, hflip=hflip, split=split)

    def make_evaluator(self, num_classes: int | None, dataset: Dataset):
        from .metrics import DetectionEvaluator, SegmentationEvaluator

        if self.detector:
            return DetectionEvaluator(masks=self.with_masks)
        return SegmentationEvaluator(num_classes or getattr(dataset, "num_classes", self.default_num_classes))

    def build_options(self, recipe: Any) -> dict[str, Any]:
        """Builder options a recipe sets (detectors also take their input resize)."""
        options = {"out_norm": recipe.out_norm}
        if self.detector:
            options.update(min_size=recipe.min_size, max_size=recipe.max_size)
        return options

    def recorded_options(self, build: dict[str, Any]) -> dict[str, Any]:
        """The builder options a checkpoint recorded that apply to this task."""
        keys = ("out_norm", "min_size", "max_size") if self.detector else ("out_norm",)
        return {k: build[k] for k in keys if k in build}

    def size_keys(self, size: tuple[int, int]) -> dict[str, Any]:
        """The recipe keys `--res HxW` sets: a detector's shorter and longer side (1280x800: min_size 800,
        max_size 1280), or semantic segmentation's training crop."""
        if self.detector:
            return {"min_size": min(size), "max_size": max(size)}
        return {"crop_size": size}

    def input_size(self, recipe: Any) -> tuple[int, int]:
        """What a checkpoint records as its training size: the crop, or a detector's (min, max) resize."""
        return (recipe.min_size, recipe.max_size) if self.detector else tuple(recipe.crop_size)


# --------------------------------------------------------------------- each task's parts, loaded on first use
@functools.cache
def _retinanet_parts() -> TaskParts:
    from . import flop_views, steps
    from .data import detection_collate
    from .models import build_retinanet

    return TaskParts(build_retinanet, detection_collate, steps.detection_loss, steps.detection_eval,
                     flop_views.RetinaNetLayers, flop_views.RETINANET_PARTS)


@functools.cache
def _mask_rcnn_parts() -> TaskParts:
    from . import flop_views, steps
    from .data import detection_collate
    from .models import build_mask_rcnn

    return TaskParts(build_mask_rcnn, detection_collate, steps.detection_loss, steps.detection_eval,
                     flop_views.MaskRCNNLayers, flop_views.MASK_RCNN_PARTS)


@functools.cache
def _semantic_fpn_parts() -> TaskParts:
    from . import flop_views, steps
    from .data import segmentation_collate
    from .models import build_semantic_fpn

    return TaskParts(build_semantic_fpn, segmentation_collate, steps.segmentation_loss, steps.segmentation_eval,
                     flop_views.whole_model, flop_views.SEMANTIC_FPN_PARTS)


RETINANET = DenseTask(
    name="retinanet", summary="RetinaNet 1x (COCO)", data_scheme="coco", recipe="retinanet-1x",
    default_resolution=(800, 1280), paper_b2=(33.8, 247.1), load_parts=_retinanet_parts,
)
MASK_RCNN = DenseTask(
    name="mask-rcnn", summary="Mask R-CNN 1x (COCO)", data_scheme="coco", recipe="mask-rcnn-1x",
    default_resolution=(800, 1280), paper_b2=(43.7, 281.1), load_parts=_mask_rcnn_parts, with_masks=True,
)
SEMANTIC_FPN = DenseTask(
    name="semantic-fpn", summary="Semantic FPN (ADE20K)", data_scheme="ade20k", recipe="semantic-fpn",
    default_resolution=(512, 512), paper_b2=(27.8, 43.3), load_parts=_semantic_fpn_parts, detector=False,
    default_num_classes=150,
)

DENSE_TASKS: dict[str, DenseTask] = {t.name: t for t in (RETINANET, MASK_RCNN, SEMANTIC_FPN)}


def get_dense_task(task: str | DenseTask) -> DenseTask:
    """The registered task of that name (a DenseTask passes through); one line naming the choices otherwise."""
    if isinstance(task, DenseTask):
        return task
    if task not in DENSE_TASKS:
        raise ConfigError(f"unknown dense task {task!r}; choose one of {', '.join(DENSE_TASKS)}")
    return DENSE_TASKS[task]


def build_dense_model(task: str | DenseTask, variant: str = "b2", num_classes: int | None = None,
                      **kwargs: Any) -> nn.Module:
    """One entry point for every dense model: `task` is 'retinanet', 'mask-rcnn' or 'semantic-fpn'."""
    task = get_dense_task(task)
    if num_classes is not None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        kwargs["num_classes"] = num_classes
    return task.build(variant, **kwargs)
