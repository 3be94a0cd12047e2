"""The model configuration: every architectural choice as a named field (docs/model.md).

Fields tagged [D] are decisions of this project where the paper is silent; they are
options here so that anyone can reproduce a different reading of the paper.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..common.recipe_files import check_fields, check_rules
from ..errors import ConfigError

__all__ = ["DCCNeXtConfig", "VARIANTS", "VARIANT_DROP_PATH", "PAPER_TABLE1", "ARCHITECTURE_OPTIONS", "SPATIAL_OPS",
           "checked_model_changes", "model_fields", "variant_config"]

# The fields a variant name does not imply but a trained model's weights depend on: every loader that builds a
# model from a variant name plus a checkpoint (timm's pretrained path, dense backbones, dense checkpoints) takes
# these from the checkpoint's config.
ARCHITECTURE_OPTIONS = ("cluster_sizes", "subvector_intervals", "global_op", "res_scale", "ffn_act", "conv_ffn")

SpatialOp = Literal["dcc", "conv", "none"]
SPATIAL_OPS = ("dcc", "conv", "none")
FfnAct = Literal["gelu", "starrelu"]


MAX_WIDTH, MAX_DEPTH, MAX_CLASSES = 4096, 64, 100_000  # ceilings of a config read from a file


@dataclass(frozen=True)
class DCCNeXtConfig:
    """Architecture of one DCCNeXt network.

    Stages 1-2 always mix tokens with a 7x7 depthwise conv; `global_op` picks the spatial op of
    stages 3-4: `dcc` (the paper), `conv` (the 7x7 of stages 1-2, a ConvFormer-like control) or `none`
    (the mixer without a spatial op: Linear, StarReLU, Linear; Table 6's "DCCConv -> None").
    `cluster_sizes` and `subvector_intervals` hold one value per DCC stage (stage 3, stage 4).
    `conv_ffn=False` drops the FFN's depthwise conv (the plain FFN of Table 6's first two rows). Left unset it
    follows `global_op`, as the paper pairs them: on with a spatial op, off with `none`, because Table 6 builds
    DCCNeXt up cumulatively from "DCCConv -> None", a network with neither DCConv nor the ConvFFN
    (B1: 11.22 M, 1.515 G). Set it to keep the ConvFFN without a spatial op (11.32 M).
    """

    dims: tuple[int, ...] = (64, 128, 320, 512)
    depths: tuple[int, ...] = (3, 3, 9, 3)
    num_classes: int = 1000
    in_chans: int = 3
    global_op: SpatialOp = "dcc"  # [D] spatial op of stages 3-4
    cluster_sizes: tuple[int, ...] = (12, 18)  # [P] K per DCC stage, counting the centre
    subvector_intervals: tuple[int, ...] = (8, 8)  # [P] d per DCC stage; 1 = no sub-sampling
    res_scale: bool = True  # [R] learnable residual scales in stages 3-4 (ConvFormer's res-scale)
    ffn_act: FfnAct = "gelu"  # [D] ConvFFN activation: exact GELU (eq. 8) or StarReLU (ConvFormer)
    conv_ffn: bool | None = None  # [P] the FFN's 3x3 depthwise conv; False: Linear -> act -> Linear (Table 6);
    # None: follow global_op (False with "none", else True), resolved at construction
    mixer_expansion: int = 2  # [R] SepConv expansion: spatial op on 2C channels
    mlp_ratio: int = 4  # [P] ConvFFN hidden width 4C
    mixer_kernel_size: int = 7  # [P] depthwise kernel of the local stages
    ffn_kernel_size: int = 3  # [P] ConvFFN depthwise kernel
    head_mlp_ratio: int = 4  # [R] MLP head hidden width 4*C4
    drop_path_rate: float = 0.0  # [D] maximum stochastic depth, linear over all blocks
    drop_rate: float = 0.0  # dropout before the classifier (timm's drop_rate)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(int(d) for d in self.dims))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "cluster_sizes", tuple(int(k) for k in self.cluster_sizes))
        object.__setattr__(self, "subvector_intervals", tuple(int(d) for d in self.subvector_intervals))
        if self.conv_ffn is None:
            object.__setattr__(self, "conv_ffn", self.global_op != "none")
        self.validate()

    def validate(self) -> None:
        dcc = (("cluster_sizes", self.cluster_sizes), ("subvector_intervals", self.subvector_intervals))
        check_rules([
            *((name, v, len(v) == 4, "needs 4 stages") for name, v in (("dims", self.dims), ("depths", self.depths))),
            *((name, v, all(d >= 1 for d in v), "must be positive") for name, v in (("dims", self.dims),
                                                                                      ("depths", self.depths))),
            ("global_op", self.global_op, self.global_op in SPATIAL_OPS, f"must be one of {', '.join(SPATIAL_OPS)}"),
            *((name, getattr(self, name), isinstance(getattr(self, name), bool), "must be true or false")
              for name in ("conv_ffn", "res_scale")),
            ("ffn_act", self.ffn_act, self.ffn_act in ("gelu", "starrelu"), "must be 'gelu' or 'starrelu'"),
            *((name, v, len(v) == 2, "needs one value per DCC stage (stage 3, stage 4)") for name, v in dcc),
            *((name, v, all(x >= 1 for x in v), "must be >= 1") for name, v in dcc),
            ("drop_path_rate", self.drop_path_rate, 0.0 <= self.drop_path_rate < 1.0, "must be in [0, 1)"),
            *self._ceilings(),
            ("drop_rate", self.drop_rate, 0.0 <= self.drop_rate < 1.0, "must be in [0, 1)"),
        ])

    def _ceilings(self) -> list[tuple[str, Any, bool, str]]:
        """Sizes a file could claim to make a loader allocate gigabytes before any shape is compared: refused
        above ceilings well past every published variant (the largest, B4, has width 768 and depth 20)."""
        limits = {"dims": (self.dims, MAX_WIDTH), "depths": (self.depths, MAX_DEPTH),
                  "cluster_sizes": (self.cluster_sizes, 1024), "subvector_intervals": (self.subvector_intervals, 1024),
                  "num_classes": ((self.num_classes,), MAX_CLASSES), "mlp_ratio": ((self.mlp_ratio,), 16),
                  "head_mlp_ratio": ((self.head_mlp_ratio,), 16), "mixer_expansion": ((self.mixer_expansion,), 8),
                  "mixer_kernel_size": ((self.mixer_kernel_size,), 31),
                  "ffn_kernel_size": ((self.ffn_kernel_size,), 31)}
        low = {"num_classes": 0}  # 0: a backbone without a classifier (the dense models)
        return [(name, values if len(values) > 1 else values[0], all(low.get(name, 1) <= v <= ceiling for v in values),
                 f"must be in {low.get(name, 1)}..{ceiling} (a ceiling that keeps a broken file from allocating "
                 "gigabytes)") for name, (values, ceiling) in limits.items()]

    def stage_op(self, stage: int) -> SpatialOp:
        """Spatial op of stage 0..3: stages 1-2 are local, stages 3-4 are `global_op`."""
        return "conv" if stage < 2 else self.global_op

    def dcc_params(self, stage: int) -> tuple[int, int]:
        """(cluster_size, subvector_interval) of DCC stage 2 or 3 (0-based)."""
        return self.cluster_sizes[stage - 2], self.subvector_intervals[stage - 2]

    def architecture_options(self) -> dict[str, Any]:
        """The `ARCHITECTURE_OPTIONS` of this config, to rebuild the same network from its variant name."""
        return {name: getattr(self, name) for name in ARCHITECTURE_OPTIONS}

    def replace(self, **changes: Any) -> DCCNeXtConfig:
        """A copy with `changes`; a new `global_op` brings its own `conv_ffn` default unless that is given too."""
        _refuse_unknown(changes, "")
        if "global_op" in changes and "conv_ffn" not in changes:
            changes = {**changes, "conv_ffn": None}
        return dataclasses.replace(self, **changes)

    def override(self, changes: Mapping[str, Any] | None, source: str) -> DCCNeXtConfig:
        """This config with `changes` from a user (a recipe's `model:` mapping, `--set model.FIELD=VALUE`),
        checked by `checked_model_changes`."""
        if not changes:
            return self
        values = checked_model_changes(changes, source)
        try:
            return self.replace(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DCCNeXtConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"model config is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError("model config must be a JSON object")
        _refuse_unknown(data, "config: ")
        return cls(**data)


def model_fields() -> list[str]:
    """The names a model option may have (`DCCNeXtConfig`'s fields), in declaration order."""
    return [f.name for f in dataclasses.fields(DCCNeXtConfig)]


def checked_model_changes(changes: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Model options from a user, each converted to its field's type (YAML lists become tuples).

    Every key must be a field and every value valid, so a typo is one line that names `source` and lists
    the fields, never a silently ignored option.
    """
    if not isinstance(changes, Mapping):
        raise ConfigError(f"{source} must be a mapping of model options (FIELD: VALUE), got {changes!r}")
    _refuse_unknown(changes, f"{source}: ")
    values = check_fields(DCCNeXtConfig, dict(changes), source)
    try:
        DCCNeXtConfig().replace(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:  # e.g. int("x") in __post_init__
        raise ConfigError(f"{source}: {e}") from None
    return values


def _refuse_unknown(changes: Mapping[str, Any], prefix: str) -> None:
    unknown = sorted(set(changes) - set(model_fields()))
    if unknown:
        raise ConfigError(f"{prefix}unknown model option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(model_fields())}")


VARIANTS: dict[str, DCCNeXtConfig] = {
    "b0": DCCNeXtConfig(dims=(32, 64, 160, 256), depths=(3, 3, 5, 2)),
    "b1": DCCNeXtConfig(dims=(48, 96, 240, 384), depths=(2, 2, 6, 2)),
    "b2": DCCNeXtConfig(dims=(64, 128, 320, 512), depths=(3, 3, 9, 3)),
    "b3": DCCNeXtConfig(dims=(96, 192, 384, 576), depths=(3, 12, 18, 3)),
    "b4": DCCNeXtConfig(dims=(96, 192, 384, 768), depths=(5, 12, 20, 5)),
}

# [D] The ImageNet recipe's stochastic depth per variant (the model itself defaults to 0, as in timm).
VARIANT_DROP_PATH: dict[str, float] = {"b0": 0.0, "b1": 0.1, "b2": 0.2, "b3": 0.4, "b4": 0.5}

# The paper's Table 1: parameters (M) and FLOPs (G, multiply-accumulates) at 224.
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "b0": (5.5, 0.8),
    "b1": (11.4, 1.6),
    "b2": (26.7, 4.0),
    "b3": (56.8, 13.0),
    "b4": (86.7, 15.7),
}


def variant_config(variant: str, **changes: Any) -> DCCNeXtConfig:
    """The config of a named variant ('b0'..'b4' or 'dccnext_b0'..), with field overrides."""
    name = variant.removeprefix("dccnext_")
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name].replace(**changes) if changes else VARIANTS[name]

