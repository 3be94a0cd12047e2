"""Top-k classes of images under a checkpoint, through the same image path and transform as `eval`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.device import default_device
from ..common.threads import fit_threads
from ..data.images import eval_transform, load_image
from ..models.dccnext import DCCNeXt
from ..models.inference import optimize_for_inference
from ..models.precision import DEFAULT_PRECISION, to_precision
from .evaluate import eval_settings

__all__ = ["Prediction", "predict"]


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first

    def to_dict(self) -> dict:
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}


@torch.inference_mode()  # no autograd bookkeeping at all (lighter than no_grad)
def predict(checkpoint: str | Path, images: list[str | Path], top_k: int = 5, batch_size: int = 32,
            device: str | torch.device | None = None, precision: str = DEFAULT_PRECISION) -> list[Prediction]:
    """Every image is loaded (and checked) before the model runs, so a bad file fails fast.

    `precision` ("fp32" or "bf16", `models.precision`) is the format the weights and activations run in;
    probabilities are computed in float32 either way.
    """
    model, meta = DCCNeXt.from_checkpoint(checkpoint)
    model = optimize_for_inference(model)
    dtype = to_precision(model, precision)
    transform = eval_transform(**eval_settings(meta))
    tensors = [transform(load_image(p)) for p in images]
    device = default_device(device)
    model.to(device).eval()
    names = meta.class_names or [str(i) for i in range(meta.num_classes)]
    k = min(top_k, meta.num_classes)
    out: list[Prediction] = []
    for start in range(0, len(tensors), batch_size):
        fit_threads()
        probs = model(torch.stack(tensors[start:start + batch_size]).to(device, dtype)).float().softmax(dim=1)
        values, indices = probs.topk(k, dim=1)
        for i, (vals, idx) in enumerate(zip(values.tolist(), indices.tolist(), strict=True)):
            out.append(Prediction(str(images[start + i]), [(names[j], v) for j, v in zip(idx, vals, strict=True)]))
    return out
