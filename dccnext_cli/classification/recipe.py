"""The classification training recipe: the paper's ImageNet settings (docs/model.md, section 6) as one flat dataclass.

Bundled recipes live in `recipes/` (installed with the package): `imagenet/b0` ... `imagenet/b4` (the paper's
300-epoch recipe; only the variant and its drop-path rate differ) and `quickstart` (the embedded Fashion-MNIST in
minutes on a laptop). Every key can be overridden with `--set key=value`; the resolved recipe is saved with
each run (`recipe.yaml`) and in its weights files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.recipe_files import (
    INTERPOLATIONS,
    RECIPE_ROOT,
    build_recipe,
    check_rules,
    merge_overrides,
    parse_overrides,
    read_recipe,
)
from ..data.images import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from ..models.config import VARIANT_DROP_PATH, VARIANTS, DCCNeXtConfig, variant_config

__all__ = ["TrainRecipe", "load_recipe", "RECIPE_ROOT", "default_recipe_name"]

AMP_MODES = ("auto", "no", "bf16", "fp16")
RE_MODES = ("const", "rand", "pixel")
MAX_INPUT_SIZE = 4096  # training resolution ceiling: activations of one 4096x4096 image already exceed most GPUs
SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


@dataclass(frozen=True)
class TrainRecipe:
    """Everything a classification run needs besides an output folder. Defaults are the paper's ImageNet recipe."""

    # model
    variant: str = "b0"
    input_size: tuple[int, int] = (224, 224)  # training resolution, height x width
    drop_path_rate: float | None = None  # None: the variant's rate (b0 0, b1 .1, b2 .2, b3 .4, b4 .5)
    num_classes: int | None = None  # for data that does not name its classes (a label feature wins)
    pretrained: str | None = None  # start from these weights: a dccnext checkpoint (head excluded) or ConvFormer's
    # model options (DCCNeXtConfig fields) over the variant's: e.g. {global_op: none} (--set model.global_op=none)
    model: dict[str, Any] | None = None
    # data: a --data value; splits; columns (None: detected); streams
    data: str = "hf:timm/imagenet-1k-wds"
    train_split: str = "train"
    eval_split: str | None = "validation"
    image_column: str | None = None
    label_column: str | None = None
    streaming: bool | None = None  # None: stream hf: sources, read local folders and shards map-style
    train_samples: int | None = None  # a stream's length, for the schedule (ImageNet-1k: 1281167)
    eval_samples: int | None = None  # evaluate on at most this many images (None: all)
    shuffle_buffer: int = 10000  # streams only
    workers: int = 8  # DataLoader worker processes per training process
    # schedule: batch_size is the total per optimiser step (all processes x accumulation steps)
    epochs: int = 300
    batch_size: int = 4096
    grad_accum: int = 1
    lr: float | None = None  # None: lr_base * batch_size / lr_base_size
    lr_base: float = 1e-3
    lr_base_size: int = 1024
    warmup_epochs: float = 20.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    # optimiser (timm create_optimizer_v2; no weight decay on 1-D parameters)
    opt: str = "adamw"
    weight_decay: float = 0.05
    grad_clip: float | None = None
    # augmentation (timm create_transform and Mixup)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    color_jitter: float | None = None
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    interpolation: str = "bicubic"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    crop_pct: float = 1.0  # evaluation: resize to input/crop_pct, centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # run
    seed: int = 0
    amp: str = "auto"  # auto: bf16 on a GPU that has it, else fp32; no | bf16 | fp16
    compile: bool = False
    grad_checkpointing: bool = False
    checkpoint_every: int = 0  # optimiser steps between train states; 0: at the end of each epoch
    checkpoint_minutes: float = 10.0  # and a train state at least this often (0: by steps only)
    keep_last: int = 2  # train states kept (the best weights are kept besides)
    eval_every: int = 1  # epochs between evaluations; 0: only at the end
    log_every: int = 20  # optimiser steps between log lines

    def __post_init__(self) -> None:
        if self.variant.removeprefix("dccnext_") not in VARIANTS:
            raise ConfigError(f"unknown variant {self.variant!r}; use one of {', '.join(VARIANTS)}")
        object.__setattr__(self, "variant", self.variant.removeprefix("dccnext_"))
        self.model_config()  # refuses an unknown model option or a bad value now, not after loading the data
        check_rules([
            *((key, getattr(self, key), getattr(self, key) >= 1, "must be at least 1")
              for key in ("epochs", "batch_size", "grad_accum", "lr_base_size", "shuffle_buffer", "keep_last",
                          "log_every")),
            *((key, getattr(self, key), getattr(self, key) >= 0, "must be 0 or more")
              for key in ("workers", "checkpoint_every", "eval_every")),
            ("input_size", self.input_size, min(self.input_size) >= 32, "must be at least 32x32"),
            ("lr", self.lr, self.lr is None or self.lr > 0, "must be positive"),
            ("amp", self.amp, self.amp in AMP_MODES, f"must be one of {', '.join(AMP_MODES)}"),
            ("scale", self.scale, 0 < self.scale[0] <= self.scale[1] <= 1, "must satisfy 0 < min <= max <= 1"),
        ])
        _check_ranges(self)
        _check_names(self)

    def model_config(self) -> DCCNeXtConfig:
        """The variant's config with this recipe's `model:` options and drop-path rate (classes come from the data)."""
        for key, recipe_key in (("num_classes", "num_classes"), ("drop_path_rate", "drop_path_rate")):
            if key in (self.model or {}):
                raise ConfigError(f"model.{key} is set by the recipe key {recipe_key} (--set {recipe_key}=...)")
        config = variant_config(self.variant).override(self.model, "model")
        return config.replace(drop_path_rate=self.drop_path)

    @property
    def drop_path(self) -> float:
        return VARIANT_DROP_PATH[self.variant] if self.drop_path_rate is None else self.drop_path_rate

    @property
    def uses_mixup(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else self.lr_base * self.batch_size / self.lr_base_size

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def _check_ranges(r: TrainRecipe) -> None:
    """Every number in the range the paper's recipe (and timm, numpy, PIL) can use; a wrong one would train
    something else silently (grad_clip -1 ascends the gradient, smoothing 1.5 inverts the targets)."""
    numbers = [k for k, hint in TrainRecipe.__annotations__.items() if "float" in str(hint)
               and not str(hint).startswith("tuple")]
    check_rules([
        *((k, getattr(r, k), _finite(getattr(r, k)), "must be a finite number") for k in numbers),
        *((k, getattr(r, k), all(math.isfinite(v) for v in getattr(r, k)), "must be a finite number")
          for k in ("scale", "ratio", "mean", "std")),
        ("smoothing", r.smoothing, 0 <= r.smoothing < 1, "must be in [0, 1)"),
        *((k, getattr(r, k), getattr(r, k) >= 0, "must be 0 or more")
          for k in ("mixup", "cutmix", "warmup_epochs", "warmup_lr", "checkpoint_minutes", "min_lr", "weight_decay")),
        ("lr_base", r.lr_base, r.lr_base > 0, "must be positive"),
        ("grad_clip", r.grad_clip, r.grad_clip is None or r.grad_clip > 0, "must be positive or null"),
        ("drop_path_rate", r.drop_path_rate, r.drop_path_rate is None or 0 <= r.drop_path_rate < 1,
         "must be in [0, 1) or null"),
        ("color_jitter", r.color_jitter, r.color_jitter is None or r.color_jitter >= 0, "must be 0 or more, or null"),
        ("crop_pct", r.crop_pct, 0 < r.crop_pct <= 1, "must be in (0, 1]"),
        ("seed", r.seed, 0 <= r.seed <= SEED_MAX, f"must be in 0..{SEED_MAX}"),
        *((k, getattr(r, k), getattr(r, k) is None or getattr(r, k) >= 1, "must be at least 1 or null")
          for k in ("eval_samples", "train_samples")),
        ("num_classes", r.num_classes, r.num_classes is None or r.num_classes >= 2, "must be at least 2 or null"),
        ("ratio", r.ratio, 0 < r.ratio[0] <= r.ratio[1], "must be ordered: 0 < min <= max"),
        ("std", r.std, min(r.std) > 0, "must be positive in every channel"),
        ("input_size", r.input_size, max(r.input_size) <= MAX_INPUT_SIZE,
         f"must be at most {MAX_INPUT_SIZE} (the training ceiling)"),
        *((k, getattr(r, k), 0 <= getattr(r, k) <= 1, "must be a probability in [0, 1]")
          for k in ("hflip", "re_prob", "mixup_prob", "mixup_switch_prob")),
        ("interpolation", r.interpolation, r.interpolation in INTERPOLATIONS,
         f"must be one of {', '.join(INTERPOLATIONS)}"),
        ("re_mode", r.re_mode, r.re_mode in RE_MODES, f"must be one of {', '.join(RE_MODES)}"),
    ])


def _check_names(r: TrainRecipe) -> None:
    """Names timm would reject only once training starts: the optimiser, interpolation, erasing mode, policy."""
    from timm.optim import list_optimizers

    if r.opt.lower().removeprefix("lookahead_") not in list_optimizers():
        raise ValueError(f"opt {r.opt!r} is not an optimiser timm knows (for example adamw, sgd, lamb)")
    if r.auto_augment:
        from timm.data import create_transform

        try:
            create_transform(input_size=(3, 32, 32), is_training=True, auto_augment=r.auto_augment)
        except (AssertionError, KeyError, ValueError, IndexError, TypeError):
            raise ValueError(f"auto_augment {r.auto_augment!r} is not a timm policy (for example "
                             "rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, trivial; null for none)") from None


def default_recipe_name(data: str | None, variant: str | None) -> str:
    """No --data: the quickstart on the embedded set; otherwise the paper's recipe for the variant."""
    return "quickstart" if data is None else f"imagenet/{(variant or 'b0').removeprefix('dccnext_')}"


def load_recipe(name: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> TrainRecipe:
    """A bundled recipe by name (`quickstart`, `imagenet/b2`) or a YAML file, with `key=value` overrides."""
    data, path = read_recipe(name, RECIPE_ROOT, what="recipe")
    if "task" in data:  # a dense recipe given to the classification trainer
        raise ConfigError(f"{path.name} is a dense-task recipe; use it with --task {data['task']}")
    merge_overrides(data, parse_overrides(overrides))
    return build_recipe(TrainRecipe, data, path.name)
