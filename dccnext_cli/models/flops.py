"""Parameters and FLOPs in the paper's convention (docs/model.md, section 3).

"FLOPs" here, as in the paper and fvcore, are multiply-accumulates: one MAC = one FLOP. Dense layers
(convolutions, linears, matmuls) are counted by torch's `FlopCounterMode` (which counts 2 per MAC, so
its totals are halved) on a model built on the `meta` device: no memory, no compute, any resolution.
A stock counter cannot see the clustering (sort, gather, index arithmetic) and would see only part of
the distance matmul, so everything inside a DCConv is dropped from the counter's total and replaced
by the counting rule per DCConv layer with n tokens, E channels, cluster size K and interval d:

    n^2 * ceil(E / d)      the Gram matrix of the sub-vectors (distances)
  + n * min(K, n) * E      the cluster convolution
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .config import DCCNeXtConfig, variant_config
from .dccnext import DCCNeXt
from .dcconv import DCConv, effective_cluster_size

__all__ = ["dcconv_macs", "PartCost", "FlopReport", "count_model", "count_variant", "COUNTING_NOTE"]

COUNTING_NOTE = (
    "FLOPs are multiply-accumulates (1 MAC = 1 FLOP, fvcore/paper convention). Conv, linear and matmul "
    "MACs come from torch's FlopCounterMode (halved); each DCConv is counted by the paper's rule: "
    "n^2*ceil(E/d) for distances + n*min(K,n)*E for the cluster conv; norms, activations, top-k and gather count 0."
)


def dcconv_macs(num_tokens: int, channels: int, cluster_size: int, subvector_interval: int) -> tuple[int, int]:
    """(distance MACs, cluster-conv MACs) of one DCConv on one image, by the counting rule."""
    sub_channels = math.ceil(channels / subvector_interval)
    distances = num_tokens * num_tokens * sub_channels
    cluster = num_tokens * effective_cluster_size(cluster_size, num_tokens) * channels
    return distances, cluster


@dataclass
class PartCost:
    """Cost of one part of the network (stem, a stage, the head) for one image."""

    name: str
    params: int
    dense_flops: int
    distance_flops: int = 0
    cluster_flops: int = 0
    grid: tuple[int, int] | None = None

    @property
    def flops(self) -> int:
        return self.dense_flops + self.distance_flops + self.cluster_flops


@dataclass
class FlopReport:
    """Totals (`params`, `flops` for the whole batch) and the per-part breakdown for one image."""

    variant: str
    resolution: tuple[int, int]
    batch_size: int
    params: int
    flops_per_image: int
    parts: list[PartCost] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    note: str = COUNTING_NOTE

    @property
    def flops(self) -> int:
        return self.flops_per_image * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "resolution": list(self.resolution),
            "batch_size": self.batch_size,
            "params": self.params,
            "flops": self.flops,
            "flops_per_image": self.flops_per_image,
            "dcconv_flops": sum(p.distance_flops + p.cluster_flops for p in self.parts) * self.batch_size,
            "parts": [{**asdict(p), "flops": p.flops} for p in self.parts],
            "config": self.config,
            "note": self.note,
        }


def _module_totals(counts: dict[str, dict[Any, int]]) -> dict[str, int]:
    return {name: sum(ops.values()) for name, ops in counts.items()}


def _under(name: str, prefix: str) -> bool:
    """`name` is the module `prefix` or inside it; the prefix "" is the whole model."""
    return not prefix or name == prefix or name.startswith(prefix + ".")


def count_model(
        model: nn.Module,
        resolution: tuple[int, int],
        parts: dict[str, str],
        batch_size: int = 1,
        variant: str = "custom",
        config: dict[str, Any] | None = None,
) -> FlopReport:
    """Count any module containing DCConv layers, grouping the counts into `parts` (label -> module prefix).

    `model` is best built on the meta device; the input is created on the model's device.
    """
    ref = next(model.parameters())
    x = torch.zeros(1, 3, *resolution, device=ref.device, dtype=ref.dtype)
    dcc_shapes: dict[str, tuple[int, ...]] = {}
    dcc_modules = {name: m for name, m in model.named_modules() if isinstance(m, DCConv)}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: dcc_shapes.__setitem__(name, tuple(args[0].shape)))
        for name, m in dcc_modules.items()
    ]
    root = type(model).__name__
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    totals = _module_totals(counter.get_flop_counts())

    def counted(prefix: str) -> int:
        """Counts under a module path. Counts nest (a parent includes its children), but a module that is
        never called itself (the head, whose parts forward_head calls one by one) has no entry: sum its
        outermost called descendants instead."""
        path = f"{root}.{prefix}" if prefix else root
        if path in totals:
            return totals[path]
        inside = [k for k in totals if k.startswith(path + ".")]
        outermost = [k for k in inside if not any(k.startswith(o + ".") for o in inside)]
        return sum(totals[k] for k in outermost)

    report_parts = []
    for label, prefix in parts.items():
        params = sum(p.numel() for n, p in model.named_parameters() if _under(n, prefix))
        dense = counted(prefix)
        dist = clus = 0
        grid = None
        for name, layer in dcc_modules.items():
            if not _under(name, prefix):
                continue
            dense -= counted(name)  # the counter saw part of the clustering; the rule replaces all of it
            _, height, width, channels = dcc_shapes[name]
            grid = (height, width)
            d, c = dcconv_macs(height * width, channels, layer.cluster_size, layer.subvector_interval)
            dist += d
            clus += c
        report_parts.append(PartCost(label, params, dense // 2, dist, clus, grid))
    total_params = sum(p.numel() for p in model.parameters())
    return FlopReport(
        variant=variant,
        resolution=tuple(resolution),
        batch_size=batch_size,
        params=total_params,
        flops_per_image=sum(p.flops for p in report_parts),
        parts=report_parts,
        config=config or {},
    )


def classifier_parts(num_stages: int = 4) -> dict[str, str]:
    return {"stem": "stem", **{f"stage {i + 1}": f"stages.{i}" for i in range(num_stages)}, "head": "head"}


def count_variant(
        variant: str,
        resolution: tuple[int, int] = (224, 224),
        batch_size: int = 1,
        **config_changes: Any,
) -> FlopReport:
    """Parameters and FLOPs of a named variant ('b0'..'b4') with optional config overrides."""
    config: DCCNeXtConfig = variant_config(variant, **config_changes)
    with torch.device("meta"):
        model = DCCNeXt(config)
    return count_model(
        model, resolution, classifier_parts(), batch_size, variant=variant.removeprefix("dccnext_"),
        config={k: list(v) if isinstance(v, tuple) else v for k, v in config.architecture_options().items()},
    )
