"""What is measured: the models, one training step, one inference batch, the DCConv op alone.

Shared by the timing process (`compare`) and the fresh subprocesses that measure peak memory
(`memory`), so both run exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import dccnext_cli  # noqa: F401  (registers the dccnext models with timm)
from dccnext_cli.models import dcconv
from dccnext_cli.models.dccnext import create_dccnext

MODELS = ("dccnext_b2", "control_b2", "convformer_s18", "convnext_tiny")
MODEL_NOTES = {
    "dccnext_b2": "DCCNeXt-B2 (DCConv in stages 3-4)",
    "control_b2": "B2 with the 7x7 depthwise conv in stages 3-4 (same ConvFFN)",
    "convformer_s18": "timm convformer_s18",
    "convnext_tiny": "timm convnext_tiny",
}


def build_model(name: str) -> nn.Module:
    """A randomly initialised 1000-class model; nothing is downloaded."""
    if name == "dccnext_b2":
        return create_dccnext("b2")
    if name == "control_b2":
        return create_dccnext("b2", global_op="conv")
    if name == "dccnext_b0":
        return create_dccnext("b0")
    return timm.create_model(name, pretrained=False, num_classes=1000)


def inference_step(model: nn.Module, batch: int, size: tuple[int, int], features: bool = False) -> Callable[[], None]:
    """One no-grad forward (the classifier, or `forward_features` for the backbone cases)."""
    model.eval()
    x = torch.randn(batch, 3, *size)
    forward = model.forward_features if features else model

    def step() -> None:
        with torch.inference_mode():
            forward(x)

    return step


def train_step(model: nn.Module, batch: int, size: int = 224) -> Callable[[], None]:
    """Forward, cross-entropy, backward, AdamW step: what one iteration of training costs."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


OP_SHAPE = (32, 14, 14, 640)  # B2's stage 3 at 224, batch 32: E = 2C = 640 channels
OP_KERNELS = ("dcconv", "cluster_conv", "naive_gather", "plain_loop", "dwconv7x7")


def op_step(kernel: str, backward: bool, shape: tuple[int, ...] = OP_SHAPE, cluster_size: int = 12,
            subvector_interval: int = 8, compiled: bool = False) -> Callable[[], None]:
    """The spatial op alone on a channels-last tensor: the whole DCConv (indices + conv), the cluster conv
    alone (fast, naive gather, plain loop) on fixed indices, or the 7x7 depthwise conv it replaces."""
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=backward)
    batch, height, width, channels = shape
    grad = torch.randn(*shape)
    if kernel == "dwconv7x7":
        conv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels, bias=False)
        fn = lambda t: conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # noqa: E731
    elif kernel == "dcconv":
        fn = dcconv.DCConv(channels, cluster_size, subvector_interval)
    else:
        idx = dcconv.cluster_indices(x.detach(), cluster_size, subvector_interval)
        weight = nn.Parameter(torch.randn(cluster_size, channels) * 0.02)
        bias = nn.Parameter(torch.zeros(channels))
        conv_fn = {"cluster_conv": dcconv.cluster_conv, "naive_gather": dcconv.cluster_conv_reference,
                   "plain_loop": dcconv.cluster_conv_plain}[kernel]
        fn = lambda t: conv_fn(t.flatten(1, 2), idx, weight, bias)  # noqa: E731
    if compiled:
        fn = torch.compile(fn)

    def step() -> None:
        if backward:
            fn(x).reshape(shape).backward(grad)
        else:
            with torch.no_grad():
                fn(x)

    return step


def saved_bytes(step_fn: Callable[[], None]) -> int:
    """Bytes autograd keeps for backward during `step_fn` (distinct storages, via saved_tensors_hooks)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step_fn()
    return sum(seen.values())
