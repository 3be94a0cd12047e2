"""The dense-task recipe: the paper's fine-tuning settings as a dataclass, loaded from YAML.

Bundled recipes (`dccnext_cli/recipes/dense/`): `semantic-fpn`, `retinanet-1x`, `mask-rcnn-1x`; a task name
picks its recipe. `--set key=value` overrides are parsed as YAML values (`lr=2e-4`, `crop_size=[256,256]`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.recipe_files import RECIPE_ROOT, build_recipe, check_rules, parse_overrides, read_recipe
from .tasks import DENSE_TASKS, DenseTask

__all__ = ["DenseRecipe", "load_dense_recipe", "RECIPE_DIR", "TASK_RECIPES", "AMP_MODES"]

RECIPE_DIR = RECIPE_ROOT / "dense"
TASK_RECIPES = {task.name: task.recipe for task in DENSE_TASKS.values()}  # a task name picks its recipe
AMP_MODES = ("auto", "no", "bf16", "fp16")  # Accelerate's mixed precision; auto: bf16 on a GPU that has it


@dataclass(frozen=True)
class DenseRecipe:
    """Everything a dense fine-tuning run needs besides data, weights and an output folder."""

    task: str = "semantic-fpn"
    variant: str = "b2"
    num_classes: int | None = None  # None: from the data (COCO categories); ADE20K: 150
    # optimisation: AdamW, no weight decay on 1-D parameters
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 32  # the total per optimiser step, over all processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimiser step on each process
    iterations: int | None = 40000  # either iterations ...
    epochs: int | None = None  # ... or epochs over the data
    schedule: str = "poly"  # poly | step
    poly_power: float = 0.9
    min_lr: float = 0.0
    step_epochs: tuple[int, ...] = (8, 11)
    step_gamma: float = 0.1
    warmup_iters: int = 0
    warmup_ratio: float = 1e-3
    grad_clip: float | None = None
    amp: str = "no"  # one of AMP_MODES (DCConv distances stay float32 under any)
    # model
    drop_path_rate: float = 0.1
    frozen_stages: int = -1
    freeze_norms: bool = False
    out_norm: bool = True
    # data
    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    hflip: float = 0.5
    min_size: int = 800
    max_size: int = 1333
    workers: int = 2
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 0  # iterations between train states (0: only at the end)
    checkpoint_minutes: float = 10.0  # and a train state at least this often (0: by iterations only)
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute the backbone's activations in the backward pass: less memory
    keep_last: int = 2  # train states kept under RUN/checkpoints/

    def __post_init__(self) -> None:
        for name in ("betas", "step_epochs", "crop_size", "scale", "ratio_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        steps = self.iterations if self.iterations is not None else self.epochs
        check_rules([
            ("task", self.task, self.task in DENSE_TASKS, f"must be one of {', '.join(DENSE_TASKS)}"),
            ("schedule", self.schedule, self.schedule in ("poly", "step"), "must be 'poly' or 'step'"),
            ("iterations", self.iterations, self.iterations is None or self.epochs is None,
             "must be null when epochs is set (a dense recipe counts one of them)"),
            ("epochs", self.epochs, steps is not None, "must be set when iterations is null"),
            ("iterations" if self.iterations is not None else "epochs", steps, steps is None or steps >= 1,
             "must be at least 1"),
            *((key, getattr(self, key), getattr(self, key) >= 1, "must be at least 1")
              for key in ("batch_size", "grad_accum", "keep_last", "log_every")),
            ("lr", self.lr, self.lr > 0, "must be positive"),
            ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 0, "must be 0 or more"),
            ("checkpoint_minutes", self.checkpoint_minutes, self.checkpoint_minutes >= 0, "must be 0 or more"),
            ("amp", self.amp, self.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
            ("batch_size", self.batch_size, self.batch_size % max(self.grad_accum, 1) == 0,
             f"must be a multiple of grad_accum {self.grad_accum} (it is the total per optimiser step)"),
        ])

    @property
    def dense_task(self) -> DenseTask:
        return DENSE_TASKS[self.task]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def load_dense_recipe(name: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> DenseRecipe:
    """A bundled recipe by name (or task name), or a YAML file, with `key=value` overrides applied."""
    data, path = read_recipe(name, RECIPE_DIR, TASK_RECIPES, what="dense recipe")
    changes = parse_overrides(overrides)
    for length, other in (("epochs", "iterations"), ("iterations", "epochs")):
        if changes.get(length) is not None and other not in changes:
            changes[other] = None  # setting one run length replaces the other
        if data.get(length) is not None and other not in data:
            data[other] = None
    data.update(changes)
    return build_recipe(DenseRecipe, data, path.name)
