"""Fixtures for the figure tests: real photos that ship with packages, and a small trained-looking checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dccnext_cli.models.dccnext import create_dccnext
from dccnext_cli.models.weights import CheckpointMeta, save_weights

TRAIN_SIZE = (64, 64)  # b0 at 64 px: stage 3 is 4x4 = 16 tokens (>= K=12), stage 4 is 2x2 = 4 tokens (< K=18)


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    import matplotlib.cbook
    import skimage

    data = Path(skimage.__file__).parent / "data"
    found = {name: data / f"{name}.png" for name in ("astronaut", "chelsea", "coffee")}
    found["grace_hopper"] = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    for path in found.values():
        assert path.is_file(), path
    return found


@pytest.fixture(scope="session")
def b0_checkpoint(tmp_path_factory) -> Path:
    """A b0 checkpoint whose DCConv kernels fall off with the slot (as a trained one's do), plus noise,
    so that every slot and block has a distinct mean |W|; its metadata records a 64x64 training size."""
    torch.manual_seed(1)
    model = create_dccnext("b0", num_classes=5)
    with torch.no_grad():
        for _, layer in model.dcconv_layers():
            k = layer.cluster_size
            layer.weight.copy_(torch.randn(k, layer.dim) * torch.linspace(1.0, 0.1, k)[:, None])
        for p in model.parameters():  # move the rest off its init so the features are not all alike
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "b0.safetensors"
    meta = CheckpointMeta("b0", model.config, class_names=list("abcde"), epoch=3,
                          input_size=TRAIN_SIZE)
    save_weights(path, model, meta)
    return path
