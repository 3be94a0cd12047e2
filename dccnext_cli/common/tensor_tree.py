"""Nested tensors and plain values (an optimiser's state dict, a grad scaler's) as one safetensors file: no pickle.

A file may have been touched by anyone, so reading it must never execute code from it. `save_tree` stores
every tensor of a nested dict/list/tuple structure in a safetensors file and the structure itself, with
references to the tensors, as JSON in the file's metadata; `load_tree` rebuilds it. Only tensors, dicts (str or
int keys), lists, tuples, str, int, float, bool and None are allowed, so the reader only ever builds plain data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError

__all__ = ["save_tree", "load_tree"]

_TREE_KEY = "dccnext_tree"


def _encode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = node.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(node, dict):
        items = []
        for key, value in node.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"cannot store a dict key of type {type(key).__name__}")
            items.append([key, _encode(value, tensors)])
        return {"__dict__": items}
    if isinstance(node, (list, tuple)):
        values = [_encode(value, tensors) for value in node]
        return {"__tuple__": values} if isinstance(node, tuple) else values
    if node is None or isinstance(node, (str, int, float, bool)):
        return node
    raise TypeError(f"cannot store a value of type {type(node).__name__} without pickle")


def save_tree(path: str | Path, tree: Any) -> None:
    """Write `tree` (tensors and plain values) to `path` as safetensors + JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, tensors)
    save_file(tensors, str(path), metadata={_TREE_KEY: json.dumps(structure)})


def _decode(node: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(node, list):
        return [_decode(value, tensors, path) for value in node]
    if isinstance(node, dict):
        if set(node) == {"__tensor__"} and node["__tensor__"] in tensors:
            return tensors[node["__tensor__"]]
        if set(node) == {"__tuple__"} and isinstance(node["__tuple__"], list):
            return tuple(_decode(value, tensors, path) for value in node["__tuple__"])
        if set(node) == {"__dict__"} and isinstance(node["__dict__"], list):
            out = {}
            for item in node["__dict__"]:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                    raise CheckpointError(f"{path} holds a malformed entry; the checkpoint is damaged")
                out[item[0]] = _decode(item[1], tensors, path)
            return out
        raise CheckpointError(f"{path} holds a malformed entry; the checkpoint is damaged")
    return node


def load_tree(path: str | Path) -> Any:
    """Read a file `save_tree` wrote; anything else is one clear CheckpointError."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(_TREE_KEY)
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable training-state file ({e})") from None
    if text is None:
        raise CheckpointError(f"{path} is not a dccnext training-state file (no {_TREE_KEY} entry)")
    try:
        structure = json.loads(text)
    except ValueError:
        raise CheckpointError(f"{path} has a broken {_TREE_KEY} entry; the checkpoint is damaged") from None
    return _decode(structure, tensors, path)
