"""Loading weights into a DCCNeXt: local dccnext files through timm, backbone weights, the ConvFormer warm start.

No DCCNeXt weights are published yet. DCCNeXt-B2 and -B3 share the skeletons of timm's
`convformer_s18` and `convformer_m36`, so their ImageNet weights give everything but the DCConv
kernels and the ConvFFN depthwise convs, which stay at their init.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError
from .weights import check_finite, load_weights, read_meta, unwrap_state_dict

__all__ = [
    "WarmStartReport",
    "convformer_to_dccnext",
    "warm_start_from_convformer",
    "checkpoint_filter_fn",
    "load_backbone_weights",
    "prepare_pretrained_kwargs",
]


@dataclass
class WarmStartReport:
    """What a warm start did, by tensor name: loaded (some under a new name), left at init, and unused.

    `sizes` holds the element count of every tensor of the target model, so that `rows()` and `table()` can
    say which share of the model each group is (a ConvFormer start leaves the DCConv kernels and the
    ConvFFN depthwise convs at their init: the user should see how much that is before training).
    """

    mapped: list[str] = field(default_factory=list)  # every target tensor loaded, renamed ones included
    renamed: dict[str, str] = field(default_factory=dict)  # target name -> the source name it came from
    unused_source: list[str] = field(default_factory=list)
    left_at_init: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # target tensor name -> element count
    unused_elements: int = 0

    def summary(self) -> str:
        return (
            f"mapped {len(self.mapped)} tensors ({len(self.renamed)} renamed); {len(self.left_at_init)} left at "
            f"init (DCConv, ConvFFN depthwise convs, ...); {len(self.unused_source)} ConvFormer tensors unused"
        )

    def rows(self) -> list[tuple[str, int, int, float]]:
        """(what, tensors, elements, share of the model's elements) per group; the first three sum to the model."""
        total = sum(self.sizes.values()) or 1
        same = [k for k in self.mapped if k not in self.renamed]
        groups = [("loaded", same), ("loaded, renamed", list(self.renamed)), ("left at init", self.left_at_init)]
        out = [(what, len(keys), sum(self.sizes.get(k, 0) for k in keys)) for what, keys in groups]
        out.append(("source tensors unused", len(self.unused_source), self.unused_elements))
        return [(what, n, elements, elements / total) for what, n, elements in out]

    def left_at_init_kinds(self) -> dict[str, int]:
        """Tensors left at init by name pattern (block and stage numbers as *), e.g. the ConvFFN dwconv."""
        kinds: dict[str, int] = {}
        for key in self.left_at_init:
            pattern = re.sub(r"\.\d+\.", ".*.", re.sub(r"\.\d+\.", ".*.", key))
            kinds[pattern] = kinds.get(pattern, 0) + 1
        return kinds

    def table(self) -> str:
        """The report as a plain-text table (what `dccnext train --weights` prints)."""
        lines = [f"{'ConvFormer warm start':<24}{'tensors':>9}{'parameters':>14}{'share':>9}"]
        for what, n, elements, share in self.rows():
            share_text = f"{100 * share:.1f} %" if what != "source tensors unused" else ""
            lines.append(f"{what:<24}{n:>9}{elements:>14,}{share_text:>9}")
        lines += [f"  at init: {pattern} ({n})" for pattern, n in self.left_at_init_kinds().items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {what: {"tensors": n, "parameters": elements, "share": round(share, 6)}
                for what, n, elements, share in self.rows()}


def _is_convformer(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith("token_mixer.pwconv1.weight") and v.ndim == 4 for k, v in state_dict.items())


def _rename(key: str) -> str:
    # ConvFormer's depthwise 7x7 is `token_mixer.dwconv`; ours is `token_mixer.spatial` in every stage.
    return re.sub(r"token_mixer\.dwconv\.", "token_mixer.spatial.", key)


def convformer_to_dccnext(
        state_dict: dict[str, torch.Tensor],
        model: nn.Module,
) -> tuple[dict[str, torch.Tensor], WarmStartReport]:
    """Map a ConvFormer state dict onto `model`'s names and shapes (1x1 convs become linears).

    A tensor is taken only where the name and element count fit; the rest is reported.
    """
    target = model.state_dict()
    report = WarmStartReport(sizes={k: v.numel() for k, v in target.items()})
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = _rename(key)
        dest = target.get(name)
        if dest is None or dest.numel() != value.numel() or (dest.ndim == 4 and dest.shape != value.shape):
            report.unused_source.append(key)
            report.unused_elements += value.numel()
            continue
        out[name] = value.reshape(dest.shape).to(dest.dtype)
        report.mapped.append(name)
        if name != key:
            report.renamed[name] = key
    report.left_at_init = sorted(set(target) - set(out))
    return out, report


def warm_start_from_convformer(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> WarmStartReport:
    """Load ConvFormer weights into a DCCNeXt in place; returns what was and was not mapped."""
    if not _is_convformer(state_dict):
        raise CheckpointError(
            "that state dict is not a ConvFormer's (no 1x1-conv token_mixer.pwconv1); "
            "pass timm's convformer_s18 weights for dccnext_b2 or convformer_m36 for dccnext_b3"
        )
    mapped, report = convformer_to_dccnext(state_dict, model)
    if not report.mapped:
        raise CheckpointError("no ConvFormer tensor fits this DCCNeXt; b2 pairs with convformer_s18, b3 with m36")
    model.load_state_dict(mapped, strict=False)
    return report


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's pretrained filter: dccnext state dicts pass through; ConvFormer ones are mapped.

    Keys a ConvFormer cannot provide are filled from the model's own init, so timm's strict load works.
    """
    state_dict = unwrap_state_dict(state_dict)
    check_finite(state_dict, "the pretrained weights")
    if not _is_convformer(state_dict):
        return state_dict
    mapped, report = convformer_to_dccnext(state_dict, model)
    logging.getLogger(__name__).info("ConvFormer warm start: %s", report.summary())
    own = model.state_dict()
    return {**{k: own[k] for k in report.left_at_init}, **mapped}


def prepare_pretrained_kwargs(variant: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The kwargs for pretrained=True, and whether there are weights to load.

    With no weights to load (none are published, no file given) it warns and the model keeps its random
    init, as timm does for such a model, so generic pipelines that always pass pretrained=True still run.
    A dccnext file gives num_classes and the architecture options.
    """
    cfg = kwargs.get("pretrained_cfg")
    if isinstance(cfg, dict) and cfg.get("source") in ("local-dir", "hf-hub"):
        return kwargs, True  # a timm folder / Hub repo: its config.json carries num_classes and model_args
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    if overlay.get("state_dict") is not None:
        return kwargs, True
    file = overlay.get("file")
    if not file:
        logging.getLogger(__name__).warning(
            "No pretrained weights exist for %s. Using random initialization. (No DCCNeXt weights are published "
            "yet; load a file with pretrained_cfg_overlay=dict(file='model.safetensors').)", variant)
        return kwargs, False
    if str(file).endswith(".safetensors"):
        try:
            meta = read_meta(file)
        except CheckpointError:
            meta = None  # a plain safetensors state dict (e.g. ConvFormer's): timm loads it as is
        if meta is not None:
            if meta.variant not in (variant, variant.removeprefix("dccnext_")):
                raise CheckpointError(
                    f"{file} holds dccnext_{meta.variant.removeprefix('dccnext_')} weights, not {variant}; "
                    f"create that model instead"
                )
            # Keep the trained classifier: timm drops it when num_classes differs from the cfg's.
            overlay.setdefault("num_classes", meta.num_classes)
            kwargs = {**kwargs, "pretrained_cfg_overlay": overlay}
            for name, value in meta.config.architecture_options().items():
                kwargs.setdefault(name, value)
            kwargs.setdefault("num_classes", meta.num_classes)
    return kwargs, True


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Any weights file without executing code: safetensors, or a torch file loaded with `weights_only=True`."""
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}); re-copy or re-export it") from None
        check_finite(state, path)
        return state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(f"{path} is not a readable weights file ({e}); pass a .safetensors or .pth") from None
    state = unwrap_state_dict(state)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    check_finite({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, path)
    return state


def load_backbone_weights(model: nn.Module, path: str | Path, variant: str) -> tuple[str, WarmStartReport | None]:
    """Load ImageNet weights into a DCCNeXt's backbone: a dccnext checkpoint (strict outside the head) or
    ConvFormer weights (warm start). Returns a one-line summary, and the warm start's report if it was one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights {path} {'is a folder' if path.is_dir() else 'do not exist'}; pass a "
                              "dccnext checkpoint or ConvFormer file")
    try:
        meta = read_meta(path)
    except CheckpointError:
        meta = None
    if meta is None:
        report = warm_start_from_convformer(model, read_state_dict(path))
        return f"ConvFormer warm start from {path}: {report.summary()}", report
    name = variant.removeprefix("dccnext_")
    if meta.variant.removeprefix("dccnext_") != name:
        raise CheckpointError(f"{path} holds dccnext_{meta.variant} weights, not dccnext_{name}; pick that variant")
    state, _ = load_weights(path)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: backbone tensors do not fit (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "the file belongs to another model config"
        )
    return f"ImageNet weights from {path} (epoch {meta.epoch})", None
