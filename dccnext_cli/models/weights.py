"""The one weights format every command reads and writes: a plain file format, no model building here.

A `.safetensors` file of a state dict whose string metadata holds `format` = `dccnext/1`, `variant`,
`num_classes`, `model_config` (JSON of `DCCNeXtConfig`), `class_names` (JSON list, when known), `epoch`,
`dccnext_version`, and what a run knows about the weights: `task`, `input_size` ([H, W] trained at),
`recipe` (JSON), `eval` (JSON metrics). `CheckpointMeta` reads these into typed fields. Any other key is kept as
written in `extra`: a task's own entries (the dense tasks' classes, steps, builder options) are the task's to write
and to parse, with `parse_entry` / `parse_count`, so this format stays the same for every task. Files are written
atomically.
Building a model from a file is the model's own job: `DCCNeXt.from_checkpoint`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from .._version import __version__
from ..common.files import atomic_write
from ..common.recipe_files import INTERPOLATIONS
from ..errors import CheckpointError, ConfigError
from .config import VARIANTS, DCCNeXtConfig

if TYPE_CHECKING:  # torch loads when weights are saved or read, not when a command's help is shown
    import torch

__all__ = [
    "FORMAT",
    "CLASSIFICATION",
    "CheckpointMeta",
    "save_weights",
    "read_meta",
    "load_weights",
    "unwrap_state_dict",
    "check_finite",
    "parse_entry",
    "parse_count",
    "broken_entry",
]

FORMAT = "dccnext/1"
CLASSIFICATION = "classification"  # the task a file records when it says none (every classifier)
# JSON-valued metadata keys and the typed field each one fills; `epoch` is an int, the rest are str.
_JSON_KEYS = {"class_names": "class_names", "input_size": "input_size", "recipe": "recipe", "eval": "metrics"}
MAX_RESOLUTION = 8192  # an input_size a file may record (the commands' own ceiling, see cli/options.py)
MAX_COUNT = 10**9  # the largest epoch, step or class count a file may record
_KNOWN = {"format", "variant", "num_classes", "model_config", "dccnext_version", "task", "epoch", *_JSON_KEYS}


@dataclass
class CheckpointMeta:
    """What a weights file says about itself."""

    variant: str
    config: DCCNeXtConfig
    class_names: list[str] | None = None
    epoch: int | None = None
    version: str = ""
    task: str = CLASSIFICATION
    input_size: tuple[int, int] | None = None  # (height, width) the weights were trained at
    recipe: dict[str, Any] | None = None  # the training recipe, as saved with the run
    metrics: dict[str, Any] | None = None  # evaluation at save time (top1, top5)
    extra: dict[str, str] = field(default_factory=dict)  # a task's own keys, and keys this version does not know

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION

    def to_metadata(self) -> dict[str, str]:
        meta = {
            "format": FORMAT,
            "variant": self.variant,
            "num_classes": str(self.config.num_classes),
            "model_config": self.config.to_json(),
            "dccnext_version": self.version or __version__,
            **self.extra,
        }
        if not self.is_classifier:
            meta["task"] = self.task
        for key, name in _JSON_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                meta[key] = json.dumps(list(value) if isinstance(value, tuple) else value)
        if self.epoch is not None:
            meta["epoch"] = str(self.epoch)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> CheckpointMeta:
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{path} is not a dccnext checkpoint (metadata format={meta.get('format')!r}, "
                f"expected {FORMAT!r}); pass a file written by `dccnext train` or `dccnext export`"
            )
        config = parse_entry(path, meta, "model_config", DCCNeXtConfig.from_json)
        fields = {name: parse_entry(path, meta, key, json.loads) for key, name in _JSON_KEYS.items() if key in meta}
        if "epoch" in meta:
            fields["epoch"] = parse_count(path, meta, "epoch")
        if "input_size" in fields:
            fields["input_size"] = _parse_input_size(fields["input_size"], meta["input_size"], path)
        _check_fields(fields, config, path)
        variant = meta.get("variant", "custom")
        _check_variant(variant, config, path)
        extra = {k: v for k, v in meta.items() if k not in _KNOWN}
        return cls(variant, config, version=meta.get("dccnext_version", ""),
                   task=meta.get("task", CLASSIFICATION), extra=extra, **fields)


def broken_entry(path: str | os.PathLike, key: str, why: str) -> CheckpointError:
    """The one-line error for a metadata entry that does not hold what its key promises."""
    return CheckpointError(f"{path} has a broken {key} metadata entry ({why}); re-export the weights")


def _check_variant(variant: str, config: DCCNeXtConfig, path: Path) -> None:
    """A file labelled with a published variant must have that variant's widths and depths."""
    known = VARIANTS.get(variant.removeprefix("dccnext_"))
    if known is not None and (known.dims, known.depths) != (config.dims, config.depths):
        raise broken_entry(path, "variant", f"labelled {variant} but its model_config has dims "
                                            f"{list(config.dims)}, depths {list(config.depths)}")


def _check_fields(fields: dict[str, Any], config: DCCNeXtConfig, path: Path) -> None:
    """Types, lengths and bounds of the JSON entries, before anything is built from them."""
    names = fields.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                              or len(names) != config.num_classes):
        raise broken_entry(path, "class_names", f"expected a list of {config.num_classes} names")
    for key in ("recipe", "metrics"):
        if fields.get(key) is not None and not isinstance(fields[key], dict):
            raise broken_entry(path, {"metrics": "eval"}.get(key, key), "expected a JSON object")
    size = fields.get("input_size")
    if size is not None and not all(1 <= v <= MAX_RESOLUTION for v in size):
        raise broken_entry(path, "input_size", f"{list(size)} is outside 1..{MAX_RESOLUTION}")
    recipe = fields.get("recipe") or {}
    for key, lo in (("mean", None), ("std", 0.0)):
        values = recipe.get(key)
        if values is not None and not (isinstance(values, list) and len(values) == 3 and all(
                _is_number(v) and (lo is None or v > lo) for v in values)):
            positive = ", all positive" if lo is not None else ""
            raise broken_entry(path, "recipe", f"{key} must be 3 finite numbers{positive}")
    crop = recipe.get("crop_pct", 1.0)
    if not (_is_number(crop) and 0 < crop <= 1):
        raise broken_entry(path, "recipe", f"crop_pct {crop!r} is not in (0, 1]")
    interpolation = recipe.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:  # what `--set interpolation=...` refuses, in the same words
        raise broken_entry(path, "recipe", f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                                           f"got {interpolation!r}")
    size = recipe.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_RESOLUTION for v in size)):
        raise broken_entry(path, "recipe", f"input_size {size!r} is not [H, W] in 1..{MAX_RESOLUTION}")


def _is_number(value: Any) -> bool:
    """A finite int or float; JSON's true and false are not numbers here (Python counts them as 1 and 0)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_entry(path: str | os.PathLike, meta: dict[str, str], key: str, parse: Any) -> Any:
    """`parse(meta[key])`, or one line naming the file and the broken entry (a task parses its own keys so)."""
    if key not in meta:
        raise CheckpointError(f"{path} has no {key} metadata entry; re-export the weights")
    try:
        return parse(meta[key])
    except (ValueError, TypeError, ConfigError) as e:
        raise broken_entry(path, key, str(e)) from None


def parse_count(path: str | os.PathLike, meta: dict[str, str], key: str) -> int:
    """An integer entry in 0..MAX_COUNT (an epoch, a step, a number of classes), or one line naming it."""
    value = parse_entry(path, meta, key, int)
    if not 0 <= value <= MAX_COUNT:
        raise broken_entry(path, key, f"{value} is out of range")
    return value


def _parse_input_size(size: Any, text: str, path: Path) -> tuple[int, int]:
    """[H, W] or a single int -> (H, W); anything else is a broken file."""
    try:
        if isinstance(size, bool) or not isinstance(size, (int, list)):
            raise TypeError
        if isinstance(size, list) and (len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int)
                                                             for v in size)):
            raise TypeError  # [true, true] would be [1, 1], [2.5, 3] silently [2, 3]
        height, width = (size, size) if isinstance(size, int) else size
    except (ValueError, TypeError):
        raise CheckpointError(f"{path} has a broken input_size metadata entry {text!r}; expected [H, W]") from None
    return height, width


def save_weights(path: str | os.PathLike, model: torch.nn.Module | dict[str, torch.Tensor],
                 meta: CheckpointMeta) -> Path:
    """Write the model's state dict (or a state dict: one gathered from shards) with dccnext metadata, atomically."""
    from safetensors.torch import save_file

    state = model if isinstance(model, dict) else model.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    needed = sum(t.nbytes for t in state.values())
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta.to_metadata()), needed=needed)


def _open(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .safetensors file")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated: re-copy or re-export it"
        ) from None


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Read only the header: cheap, and enough to know which model to build."""
    path = Path(path)
    with _open(path) as f:
        return CheckpointMeta.from_metadata(f.metadata() or {}, path)


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a dccnext checkpoint: its state dict and its metadata."""
    path = Path(path)
    with _open(path) as f:
        meta = CheckpointMeta.from_metadata(f.metadata() or {}, path)
        try:
            state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is truncated or corrupt ({e}); re-copy or re-export it") from None
    check_finite(state, path)
    return state, meta


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse weights holding NaN or Inf (a diverged run): scored, they give NaN logits and 0 % without a word."""
    import torch

    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{path}: tensor {name} holds {bad} NaN or Inf value(s) of {tensor.numel()}; "
                                  "the weights are broken (a diverged run?): use an earlier checkpoint")


def unwrap_state_dict(state: Any) -> Any:
    """A training script's {"state_dict": {...}} wrapper -> the state dict inside; anything else as is."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        return state["state_dict"]
    return state
