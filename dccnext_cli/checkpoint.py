"""The one weights format every command reads and writes (shared/spec/design.md).

A `.safetensors` file of the model's state dict whose string metadata holds `format` = `dccnext/1`,
`variant`, `num_classes`, `model_config` (JSON of `DCCNeXtConfig`), `class_names` (JSON list, when
known), `epoch` and `dccnext_version`. Files are written atomically (temp file + rename), so a crash
never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import CheckpointError, ConfigError
from .models.config import DCCNeXtConfig

__all__ = [
    "FORMAT",
    "CheckpointMeta",
    "atomic_write",
    "save_weights",
    "read_meta",
    "load_weights",
    "model_from_checkpoint",
    "train_size",
]

FORMAT = "dccnext/1"


@dataclass
class CheckpointMeta:
    """What a weights file says about itself."""

    variant: str
    config: DCCNeXtConfig
    class_names: list[str] | None = None
    epoch: int | None = None
    version: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def to_metadata(self) -> dict[str, str]:
        from . import __version__

        meta = {
            "format": FORMAT,
            "variant": self.variant,
            "num_classes": str(self.config.num_classes),
            "model_config": self.config.to_json(),
            "dccnext_version": self.version or __version__,
            **self.extra,
        }
        if self.class_names is not None:
            meta["class_names"] = json.dumps(list(self.class_names))
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
        try:
            config = DCCNeXtConfig.from_json(meta["model_config"])
            class_names = json.loads(meta["class_names"]) if "class_names" in meta else None
            epoch = int(meta["epoch"]) if "epoch" in meta else None
        except (KeyError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{path} has broken dccnext metadata ({e}); re-export the weights") from None
        known = {"format", "variant", "num_classes", "model_config", "class_names", "epoch", "dccnext_version"}
        extra = {k: v for k, v in meta.items() if k not in known}
        return cls(meta.get("variant", "custom"), config, class_names, epoch, meta.get("dccnext_version", ""), extra)


def train_size(meta: CheckpointMeta, source: str | os.PathLike = "the checkpoint") -> tuple[int, int] | None:
    """The (height, width) a checkpoint was trained at (metadata `input_size`), or None when it does not say."""
    text = meta.extra.get("input_size")
    if text is None:
        return None
    try:
        size = json.loads(text)
        height, width = (size, size) if isinstance(size, int) else (int(v) for v in size)
    except (ValueError, TypeError):
        raise CheckpointError(f"{source} has a broken input_size metadata entry {text!r}; expected [H, W]") from None
    return height, width


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` in one rename; no partial file survives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the file should get the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_weights(path: str | os.PathLike, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write the model's state dict with dccnext metadata, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta.to_metadata()))


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
    return state, meta


def model_from_checkpoint(path: str | os.PathLike, **config_changes: Any) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Build the model a checkpoint describes and load its weights, strictly."""
    from .models.dccnext import DCCNeXt

    state, meta = load_weights(path)
    if meta.extra.get("task", "classification") != "classification":
        raise CheckpointError(
            f"{path} is a {meta.extra['task']} checkpoint, not a classifier; "
            "load it with dccnext_cli.dense.engine.load_dense_model"
        )
    config = meta.config.replace(**config_changes) if config_changes else meta.config
    model = DCCNeXt(config)
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
            f"{path}: tensors do not fit its metadata (variant {meta.variant}, {meta.num_classes} classes): "
            f"{detail}; the file was edited or belongs to another model"
        )
    model.load_state_dict(state)
    return model, meta
