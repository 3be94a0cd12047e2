"""A weights folder for timm and the Hugging Face Hub: timm's `config.json` and a model card.

The folder has the layout of timm's `save_for_hf` (`config.json` + `model.safetensors`), so
`timm.create_model("local-dir:FOLDER", pretrained=True)` and, once uploaded, `"hf-hub:REPO"` load it;
`model.safetensors` also carries the dccnext metadata, so every `dccnext` command reads it too. timm
only knows the architecture after `import dccnext_cli`, which the card says first.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from .._version import __version__
from .weights import CheckpointMeta

__all__ = ["PAPER_BIBTEX", "architecture_name", "hub_config", "model_card", "push_folder"]

PAPER_BIBTEX = """@inproceedings{li2025dccnext,
  title     = {Dynamic Clustering Convolutional Neural Network},
  author    = {Li and others},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence (AAAI-25)},
  year      = {2025}
}"""
IMPORT_LINE = "import dccnext_cli  # registers the DCCNeXt architectures with timm"
# --data schemes whose Hub dataset id is known: the card's `datasets` entry.
_DATASETS = {"builtin:fashion-mnist": "zalando-datasets/fashion_mnist"}


def architecture_name(meta: CheckpointMeta) -> str:
    """The timm name to build: a 'custom' config builds on dccnext_b0 with its full config as model_args."""
    return f"dccnext_{meta.variant}" if meta.variant != "custom" else "dccnext_b0"


def hub_config(model: nn.Module, meta: CheckpointMeta, resolution: tuple[int, int]) -> dict[str, Any]:
    """timm's `config.json` for `model`, written by timm's own `save_config_for_hf`.

    `model_args` is the whole model config (so a changed K or d survives), `pretrained_cfg` the input size the
    weights were trained at and the checkpoint's preprocessing, `label_names` the class names.
    """
    from timm.models import resolve_pretrained_cfg
    from timm.models._hub import save_config_for_hf

    if not hasattr(model, "pretrained_cfg"):  # built from a checkpoint, not through timm.create_model
        model.pretrained_cfg = resolve_pretrained_cfg(architecture_name(meta)).to_dict()
    recipe = meta.recipe or {}
    data_config = {"input_size": (meta.config.in_chans, *resolution)}
    data_config.update({k: tuple(recipe[k]) if isinstance(recipe[k], list) else recipe[k]
                        for k in ("mean", "std", "crop_pct", "interpolation") if k in recipe})
    model_config: dict[str, Any] = {"dccnext": meta.to_metadata()}
    if meta.class_names is not None:
        model_config["label_names"] = list(meta.class_names)
    model_args = json.loads(meta.config.to_json())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        save_config_for_hf(model, str(path), model_config=model_config, model_args=model_args,
                           data_config=data_config)
        return json.loads(path.read_text())


def _dataset(meta: CheckpointMeta) -> str | None:
    data = str((meta.recipe or {}).get("data") or "")
    if data in _DATASETS:
        return _DATASETS[data]
    if data.startswith("hf:"):
        return data.removeprefix("hf:").split(":")[0]
    return None


def _front_matter(meta: CheckpointMeta, name: str, dataset: str | None) -> dict[str, Any]:
    """The card's YAML header: what the Hub indexes (library, tags, licence, datasets, model-index)."""
    front: dict[str, Any] = {
        "library_name": "timm",
        "license": "apache-2.0",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "timm", "dccnext", "dynamic-clustering-convolution"],
    }
    if dataset:
        front["datasets"] = [dataset]
    top1 = (meta.metrics or {}).get("top1")
    if top1 is not None:
        dataset_entry = {"name": dataset or "evaluation split", "type": dataset or "custom"}
        metrics = [{"type": "accuracy", "name": "Top-1 accuracy", "value": round(float(top1), 2)}]
        top5 = (meta.metrics or {}).get("top5")
        if top5 is not None:
            metrics.append({"type": "top-5-accuracy", "name": "Top-5 accuracy", "value": round(float(top5), 2)})
        front["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": dataset_entry, "metrics": metrics}]}]
    return front


_RECIPE_ROWS = (("data", "data"), ("epochs", "epochs"), ("batch size", "batch_size"), ("optimiser", "opt"),
                ("learning rate", "lr"), ("weight decay", "weight_decay"), ("warm-up epochs", "warmup_epochs"),
                ("augmentation", "auto_augment"), ("mixup / cutmix", ("mixup", "cutmix")),
                ("label smoothing", "smoothing"), ("drop path", "drop_path_rate"), ("seed", "seed"))


def _recipe_table(meta: CheckpointMeta, resolution: tuple[int, int]) -> str:
    recipe = meta.recipe or {}
    rows = [("input size", f"{resolution[0]}x{resolution[1]} px")]
    for label, key in _RECIPE_ROWS:
        keys = key if isinstance(key, tuple) else (key,)
        if all(recipe.get(k) is not None for k in keys):
            rows.append((label, " / ".join(str(recipe[k]) for k in keys)))
    if meta.epoch is not None:
        rows.append(("epoch of these weights", str(meta.epoch)))
    lines = ["| setting | value |", "|---|---|"] + [f"| {a} | `{b}` |" for a, b in rows]
    return "\n".join(lines)


def model_card(meta: CheckpointMeta, name: str, resolution: tuple[int, int], repo_id: str | None = None) -> str:
    """The README.md of a Hub folder: metadata header, how to load it, the recipe, the evaluation, the citation."""
    dataset = _dataset(meta)
    header = yaml.safe_dump(_front_matter(meta, name, dataset), sort_keys=False).strip()
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"
    classes = f"{meta.num_classes} classes" + (f" ({', '.join(meta.class_names[:5])}, ...)"
                                                if meta.class_names and len(meta.class_names) > 5
                                                else f" ({', '.join(meta.class_names)})" if meta.class_names else "")
    metrics = meta.metrics or {}
    evaluation = (f"Top-1 {metrics['top1']:.2f} %" + (f", top-5 {metrics['top5']:.2f} %" if "top5" in metrics else "")
                  + f" on {dataset or 'the run’s evaluation split'}, as recorded in the checkpoint."
                  if "top1" in metrics else "No evaluation was recorded with these weights.")
    return f"""---
{header}
---
# {name}

DCCNeXt-{meta.variant.upper()}, the Dynamic Clustering Convolutional Neural Network (Li et al., AAAI 2025):
a ConvFormer-style MetaFormer whose stages 3 and 4 mix each token with its K nearest tokens (DCConv).
Weights exported by the `dccnext` package (dccnext-cli {__version__}), the first public implementation.
{classes}; trained at {resolution[0]}x{resolution[1]} px.

## Use

timm learns the DCCNeXt architectures when `dccnext_cli` is imported; without that line timm reports
"Unknown model".

```python
{IMPORT_LINE}
import timm
import torch

model = timm.create_model("{source}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
with torch.no_grad():
    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)  # image: a PIL image
```

The same `model.safetensors` is a dccnext weights file: `dccnext eval --checkpoint model.safetensors`,
`dccnext predict IMAGE --checkpoint model.safetensors`, `dccnext export ...`.

## Training recipe

{_recipe_table(meta, resolution)}

## Evaluation

{evaluation}

## Citation

```bibtex
{PAPER_BIBTEX}
```
"""


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload the folder to the Hub repo (created if missing); returns the commit URL. Needs the network."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="dccnext", library_version=__version__)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="Add DCCNeXt weights")
    return str(getattr(commit, "commit_url", commit))
