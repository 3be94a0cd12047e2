"""DCCNeXt: blocks, stages, the network and its timm registration (docs/model.md, section 1).

The layout mirrors timm's `metaformer.py` (ConvFormer) so that names, feature taps and the head
match it: stages take and return NCHW maps, blocks work channels-last inside, and the classifier is
`head.fc.fc2`. Differences from ConvFormer: the spatial op of stages 3-4 is DCConv, and the MLP is a
ConvFFN (a 3x3 depthwise conv between its two linears).

The modules are plain, one operation per line: what a reader, a hook, FX, TorchScript or an exporter sees is
what runs. Inference speed-ups that change how a module runs (in-place activations, FFN batch slices, the ONNX
GELU) are the one explicit step `models/inference.py:optimize_for_inference`.
"""

import os
from collections import OrderedDict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.layers import (
    DropPath,
    LayerNorm,
    LayerNorm2d,
    SelectAdaptivePool2d,
    trunc_normal_,
)
from timm.models._builder import build_model_with_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, checkpoint_seq
from timm.models._registry import generate_default_cfgs, register_model
from timm.models.metaformer import LayerNorm2dNoBias, LayerNormNoBias, MlpHead, Scale, StarReLU

from ..errors import CheckpointError, ConfigError
from .config import DCCNeXtConfig, variant_config
from .dcconv import DCConv
from .pretrained import checkpoint_filter_fn, prepare_pretrained_kwargs
from .weights import CheckpointMeta, load_weights

__all__ = ["DCCNeXt", "DCCNeXtBlock", "DCCNeXtStage", "ConvFFN", "SepMixer", "DepthwiseConv2dNHWC", "GLOBAL_POOLS"]

GLOBAL_POOLS = ("", "avg", "max", "avgmax", "catavgmax")  # timm's SelectAdaptivePool2d types


class DepthwiseConv2dNHWC(nn.Conv2d):
    """Depthwise 'same' convolution on a channels-last (B, H, W, C) tensor."""

    def __init__(self, channels: int, kernel_size: int, bias: bool, device=None, dtype=None):
        super().__init__(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias,
            device=device, dtype=dtype,
        )
        # The weight is (C, 1, k, k); its gradient from a channels-last input comes back with stride 1 on the
        # size-1 dim. DDP compares strides strictly ("Grad strides do not match bucket view strides"), so the
        # weight takes that stride too: the same memory, the same numbers, still contiguous.
        weight = self.weight.detach()
        strides = (kernel_size * kernel_size, 1, kernel_size, 1)
        self.weight = nn.Parameter(torch.empty_strided(weight.shape, strides, dtype=weight.dtype,
                                                       device=weight.device).copy_(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x.permute(0, 3, 1, 2), self.weight, self.bias).permute(0, 2, 3, 1)


class SepMixer(nn.Module):
    """ConvFormer's SepConv token mixer, channels-last: Linear C->2C, StarReLU, spatial op, Linear 2C->C.

    The spatial op may be `nn.Identity` (`global_op="none"`): the mixer then mixes channels only.
    """

    def __init__(self, dim: int, spatial: nn.Module, expansion: int = 2, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden = expansion * dim
        self.pwconv1 = nn.Linear(dim, hidden, bias=False, **dd)
        self.act1 = StarReLU(**dd)
        self.spatial = spatial
        self.pwconv2 = nn.Linear(hidden, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pwconv1(x)
        x = self.act1(x)
        x = self.spatial(x)
        x = self.pwconv2(x)
        return x


class ConvFFN(nn.Module):
    """Linear C->4C, 3x3 depthwise conv (with bias), activation, Linear 4C->C (paper eqs. 7-8).

    `conv=False` makes `dwconv` an identity: the plain FFN Linear -> activation -> Linear (Table 6).
    """

    def __init__(self, dim: int, ratio: int = 4, kernel_size: int = 3, act: str = "gelu", conv: bool = True,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        hidden = ratio * dim
        self.fc1 = nn.Linear(dim, hidden, bias=False, **dd)
        self.dwconv = DepthwiseConv2dNHWC(hidden, kernel_size, bias=True, **dd) if conv else nn.Identity()
        self.act = nn.GELU() if act == "gelu" else StarReLU(**dd)
        self.fc2 = nn.Linear(hidden, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x)
        x = self.act(x)
        x = self.fc2(x)
        return x


class DCCNeXtBlock(nn.Module):
    """Pre-norm MetaFormer block on (B, H, W, C): x = rs1*x + mixer(LN(x)); x = rs2*x + ffn(LN(x))."""

    def __init__(
            self,
            dim: int,
            spatial: nn.Module,
            cfg: DCCNeXtConfig,
            res_scale: bool,
            drop_path: float = 0.0,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.norm1 = LayerNormNoBias(dim, eps=1e-6, **dd)
        self.token_mixer = SepMixer(dim, spatial, cfg.mixer_expansion, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.res_scale1 = Scale(dim, use_nchw=False, **dd) if res_scale else nn.Identity()
        self.norm2 = LayerNormNoBias(dim, eps=1e-6, **dd)
        self.mlp = ConvFFN(dim, cfg.mlp_ratio, cfg.ffn_kernel_size, cfg.ffn_act, cfg.conv_ffn, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.res_scale2 = Scale(dim, use_nchw=False, **dd) if res_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual stream runs as (B, N, C) tokens, the same memory. Inductor gives 4-D buffers of a graph
        # with convolutions a channels-last layout, which for a (B, H, W, C) map means H fastest: its residual
        # adds and LayerNorms then ran through transposes, and compiled B2 was ~1.09x slower than with 3-D ones.
        shape = x.shape
        x = x.flatten(1, 2)
        y = self.norm1(x).view(shape)
        y = self.token_mixer(y).flatten(1, 2)
        x = self.res_scale1(x) + self.drop_path1(y)
        y = self.norm2(x).view(shape)
        y = self.mlp(y).flatten(1, 2)
        x = self.res_scale2(x) + self.drop_path2(y)
        return x.view(shape)


class DCCNeXtStage(nn.Module):
    """Optional downsampling (LN, 3x3 stride-2 conv) then blocks; NCHW in and out, NHWC inside."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stage_index: int,
            cfg: DCCNeXtConfig,
            dp_rates: list[float],
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        if stage_index == 0:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(OrderedDict([
                ("norm", LayerNorm2dNoBias(in_chs, eps=1e-6, **dd)),
                ("conv", nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=2, padding=1, **dd)),
            ]))
        op = cfg.stage_op(stage_index)
        hidden = cfg.mixer_expansion * out_chs
        res_scale = cfg.res_scale and stage_index >= 2

        def spatial() -> nn.Module:
            if op == "dcc":
                k, d = cfg.dcc_params(stage_index)
                return DCConv(hidden, cluster_size=k, subvector_interval=d, **dd)
            if op == "none":
                return nn.Identity()
            return DepthwiseConv2dNHWC(hidden, cfg.mixer_kernel_size, bias=False, **dd)

        self.blocks = nn.Sequential(*[
            DCCNeXtBlock(out_chs, spatial(), cfg, res_scale=res_scale, drop_path=dp_rates[i], **dd)
            for i in range(cfg.depths[stage_index])
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class DCCNeXt(nn.Module):
    """The DCCNeXt classifier. Build it from a `DCCNeXtConfig` or keyword fields of one.

    Mirrors timm's MetaFormer API: `forward_features` (NCHW map), `forward_head`,
    `forward_intermediates`, `reset_classifier`, `set_grad_checkpointing`, `group_matcher`.
    """

    def __init__(self, config: DCCNeXtConfig | None = None, device=None, dtype=None, **kwargs: Any):
        super().__init__()
        kwargs.pop("pretrained_cfg", None)
        global_pool = kwargs.pop("global_pool", None)
        global_pool = "avg" if global_pool is None else global_pool
        cfg = (config or DCCNeXtConfig()).replace(**kwargs) if kwargs else (config or DCCNeXtConfig())
        _check_pool(global_pool, cfg.num_classes)
        self.config = cfg
        dd = {"device": device, "dtype": dtype}
        dims = cfg.dims
        self.num_classes = cfg.num_classes
        self.in_chans = cfg.in_chans
        self.num_features = dims[-1]
        self.global_pool = global_pool
        self.head_hidden_size = dims[-1] * _pool_mult(global_pool)
        self.drop_rate = cfg.drop_rate
        self.num_stages = len(dims)
        self.grad_checkpointing = False

        self.stem = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(cfg.in_chans, dims[0], kernel_size=7, stride=4, padding=2, **dd)),
            ("norm", LayerNorm2dNoBias(dims[0], eps=1e-6, **dd)),
        ]))
        total = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # timm: linear from 0
        stages, self.feature_info, start, prev = [], [], 0, dims[0]
        for i in range(self.num_stages):
            stages.append(DCCNeXtStage(prev, dims[i], i, cfg, rates[start:start + cfg.depths[i]], **dd))
            self.feature_info.append(dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
            start += cfg.depths[i]
            prev = dims[i]
        self.stages = nn.Sequential(*stages)

        self.head = nn.Sequential(OrderedDict([
            ("global_pool", SelectAdaptivePool2d(pool_type=global_pool)),
            ("norm", LayerNorm2d(self.num_features, eps=1e-6, **dd)),
            ("flatten", nn.Flatten(1) if global_pool else nn.Identity()),
            ("drop", nn.Dropout(cfg.drop_rate)),
            ("fc", self._make_classifier(cfg.num_classes, **dd)),
        ]))
        self.apply(self._init_weights)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **config_changes: Any) -> tuple["DCCNeXt", CheckpointMeta]:
        """The classifier a dccnext weights file describes, with its weights loaded strictly, and its metadata.

        `config_changes` replace fields of the recorded config (e.g. `drop_path_rate`); the tensors must still fit.
        """
        state, meta = load_weights(path)
        if not meta.is_classifier:
            raise CheckpointError(f"{path} is a {meta.task} checkpoint, not a classifier; "
                                  "load it with dccnext_cli.dense.load_dense_model")
        model = cls(meta.config.replace(**config_changes) if config_changes else meta.config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if keys
            )
            raise CheckpointError(
                f"{Path(path)}: tensors do not fit its metadata (variant {meta.variant}, {meta.num_classes} "
                f"classes): {detail}; the file was edited or belongs to another model"
            )
        model.load_state_dict(state)
        return model, meta

    def _make_classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        # The MLP's hidden width stays head_mlp_ratio * C also when catavgmax doubles its input.
        # [R] the head's own LayerNorm at eps 1e-5 (timm's MlpHead defaults to 1e-6; the names stay head.fc.norm)
        ratio = self.config.head_mlp_ratio * self.num_features / self.head_hidden_size
        return MlpHead(self.head_hidden_size, num_classes, mlp_ratio=ratio, norm_layer=partial(LayerNorm, eps=1e-5),
                       device=device, dtype=dtype)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, DCConv):
            m.reset_parameters()

    # ----------------------------------------------------------------- timm model API
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """1-D parameters (norms, biases, res-scales, StarReLU scalars, DCConv bias): no weight decay."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^head\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        """A new classifier for `num_classes` (0: none), optionally a new pooling; as timm's MetaFormer.

        `global_pool=""` with `num_classes=0` makes `forward` return the head-normed NCHW map.
        `reset_other` also drops the head norm (timm's feature pruning).
        """
        _check_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        training = self.head.training
        if global_pool is not None:
            self.global_pool = global_pool
            self.head_hidden_size = self.num_features * _pool_mult(global_pool)
            self.head.global_pool = SelectAdaptivePool2d(pool_type=global_pool).train(training)
            self.head.flatten = (nn.Flatten(1) if global_pool else nn.Identity()).train(training)
        if reset_other:
            self.head.norm = nn.Identity()
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        ref = next(self.parameters())
        self.head.fc = self._make_classifier(num_classes, device=ref.device, dtype=ref.dtype).train(training)
        self.head.fc.apply(self._init_weights)

    def dcconv_layers(self) -> Iterator[tuple[int, DCConv]]:
        """(1-based block number over the whole network, layer) for every DCConv, as the paper counts."""
        number = 0
        for stage in self.stages:
            for block in stage.blocks:
                number += 1
                if isinstance(block.token_mixer.spatial, DCConv):
                    yield number, block.token_mixer.spatial

    def keep_cluster_indices(self, enable: bool = True) -> None:
        """Ask every DCConv to keep its last cluster indices (`last_indices`), or to stop keeping them."""
        for _, layer in self.dcconv_layers():
            layer.keep_indices = enable
            if not enable:
                layer.last_indices = None

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (NCHW, strides 4-32) for `indices`, as in timm's models."""
        if output_fmt != "NCHW":
            raise ValueError("output_fmt must be 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates = []
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        for feat_idx, stage in enumerate(stages):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, "", reset_other=True)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head.global_pool(x)
        if self.head_hidden_size != self.num_features:  # catavgmax: the head norm on each C-wide half
            avg, top = x.chunk(2, dim=1)
            x = torch.cat([self.head.norm(avg), self.head.norm(top)], dim=1)
        else:
            x = self.head.norm(x)
        x = self.head.flatten(x)
        x = self.head.drop(x)
        return x if pre_logits else self.head.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _pool_mult(global_pool: str) -> int:
    """How many C-wide vectors the pooling yields (2 for catavgmax)."""
    return 2 if global_pool == "catavgmax" else 1


def _check_pool(global_pool: str, num_classes: int) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ConfigError(f"unknown global_pool {global_pool!r}; choose one of {', '.join(map(repr, GLOBAL_POOLS))}")
    if global_pool == "" and num_classes > 0:
        raise ConfigError("global_pool='' returns the unpooled NCHW map and needs num_classes=0; "
                          "pass num_classes=0 or pick a pooling such as 'avg'")


# --------------------------------------------------------------------- timm registration
def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "classifier": "head.fc.fc2",
        "first_conv": "stem.conv",
        "license": "apache-2.0",
        "paper_ids": "DCCNeXt (Li et al., AAAI 2025)",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"dccnext_{v}": _cfg() for v in ("b0", "b1", "b2", "b3", "b4")})


def _create_dccnext(variant: str, pretrained: bool = False, **kwargs: Any) -> DCCNeXt:
    if pretrained:
        kwargs, pretrained = prepare_pretrained_kwargs(variant, kwargs)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    config = variant_config(variant)
    return build_model_with_cfg(
        DCCNeXt,
        variant,
        pretrained,
        config=config,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


@register_model
def dccnext_b0(pretrained: bool = False, **kwargs: Any) -> DCCNeXt:
    """DCCNeXt-B0: dims 32-64-160-256, depths 3-3-5-2."""
    return _create_dccnext("dccnext_b0", pretrained, **kwargs)


@register_model
def dccnext_b1(pretrained: bool = False, **kwargs: Any) -> DCCNeXt:
    """DCCNeXt-B1: dims 48-96-240-384, depths 2-2-6-2."""
    return _create_dccnext("dccnext_b1", pretrained, **kwargs)


@register_model
def dccnext_b2(pretrained: bool = False, **kwargs: Any) -> DCCNeXt:
    """DCCNeXt-B2: ConvFormer-S18's skeleton, dims 64-128-320-512, depths 3-3-9-3."""
    return _create_dccnext("dccnext_b2", pretrained, **kwargs)


@register_model
def dccnext_b3(pretrained: bool = False, **kwargs: Any) -> DCCNeXt:
    """DCCNeXt-B3: ConvFormer-M36's skeleton, dims 96-192-384-576, depths 3-12-18-3."""
    return _create_dccnext("dccnext_b3", pretrained, **kwargs)


@register_model
def dccnext_b4(pretrained: bool = False, **kwargs: Any) -> DCCNeXt:
    """DCCNeXt-B4: dims 96-192-384-768, depths 5-12-20-5."""
    return _create_dccnext("dccnext_b4", pretrained, **kwargs)


def create_dccnext(variant: str, **kwargs: Any) -> DCCNeXt:
    """Build a variant ('b0'..'b4') directly from its config, with config field overrides."""
    return DCCNeXt(variant_config(variant, **kwargs))
