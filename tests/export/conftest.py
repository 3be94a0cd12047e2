"""Export fixtures: one small source model, and each format exported once per session (exports are slow)."""

from __future__ import annotations

import pytest
import torch

from dccnext_cli.models.config import variant_config
from dccnext_cli.models.dccnext import DCCNeXt
from dccnext_cli.models.weights import CheckpointMeta

# Non-default classes and K, so that a reload which forgot the config would not even load.
CONFIG_CHANGES = dict(num_classes=10, cluster_sizes=(10, 16))
CLASS_NAMES = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="session")
def source():
    """A seeded b0 with 10 classes and K = (10, 16), in eval mode, with its checkpoint metadata."""
    torch.manual_seed(0)
    config = variant_config("b0", **CONFIG_CHANGES)
    model = DCCNeXt(config).eval()
    return model, CheckpointMeta("b0", config, class_names=CLASS_NAMES, epoch=3)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def exported(source, export_dir):
    """exported(fmt) -> (path, ExportResult), written once per session."""
    from dccnext_cli.export import export_model

    cache: dict[str, tuple] = {}
    suffix = {"safetensors": ".safetensors", "timm": "", "onnx": ".onnx", "torchscript": ".ts",
              "exported-program": ".pt2"}

    def get(fmt: str):
        if fmt not in cache:
            path = export_dir / f"b0{suffix[fmt]}"
            cache[fmt] = (path, export_model(*source, fmt, path))
        return cache[fmt]

    return get


@pytest.fixture(scope="session")
def check_inputs():
    """The issue's parity inputs: 224x224 and 320x256 (height x width), batch 1 and 3."""
    gen = torch.Generator().manual_seed(123)
    return [torch.randn(b, 3, h, w, generator=gen) for (h, w) in ((224, 224), (320, 256)) for b in (1, 3)]


@pytest.fixture(scope="session")
def eager_outputs(source, check_inputs):
    model = source[0]
    with torch.no_grad():
        return [model(x) for x in check_inputs]
