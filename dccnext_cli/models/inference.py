"""`optimize_for_inference`: the one explicit step that makes a DCCNeXt run faster without autograd.

The model modules stay plain (as timm writes them), so that a reader, a hook, FX, TorchScript or an exporter
sees every operation. This step swaps in forms that compute the same numbers with less memory traffic:

- in-place activations: the mixer's StarReLU and the FFN's GELU run on the widest tensors of a block (2C and 4C
  channels). Out of place each costs a fresh allocation and a full extra pass over memory; B2's batch-32 eager
  inference ran 1.2x faster in place. Only without autograd, outside torch.compile (Inductor fuses them itself)
  and outside exporting; a forward hook on the layer before an activation then sees its output activated.
- FFN batch slices: without autograd the ConvFFN runs over slices of the batch whose 4C-wide hidden tensor takes
  at most `ffn_slice_bytes` (16 MiB: the slice stays in cache; B2 1.2x faster at batch 32; 0 turns it off).
- the export GELU: while exporting for ONNX (`export_target="onnx"`), the exact GELU is written as
  x * (1 + erf(x / sqrt 2)) * 0.5, the op order onnxruntime fuses into one Gelu node (torch's order it leaves as
  five passes over the FFN's 4C-wide tensor).
- DCConv without its custom ops: without autograd and autocast each DCConv calls its backend's functions
  directly (`dcconv.cluster_layer`, `custom_ops=False`): the two custom op calls of a layer cost ~40 us
  inside B2 at batch 1, 1.3 % of the forward. A FLOP counter then sees the backend's aten ops only.
- the blocks' linears as 1x1 convolutions on the NCHW view of the same memory (`pointwise_conv`, on by default):
  on the CPU oneDNN's convolution ran these GEMMs much faster than the Linear's MKL GEMM on the project's AMD
  EPYC (B2 eager: 50.6 against 65.3 ms at batch 1 with 2 threads, 80.6 against 110.9 ms with one thread; 975
  against 1643 ms for the control at batch 32). Eager CPU inference calls oneDNN by name, since `F.conv2d` sends a
  1x1 convolution with one thread and a small batch to a slow fallback. The ONNX export keeps them too:
  onnxruntime's run of the MatMul form agreed with eager less well (near-tie clusters swapped, 8 of 11,368 slots
  on the export tests' model, against none with Conv).

The parameters keep their names: the state dict of the optimized model is the plain model's.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.metaformer import StarReLU

from .dccnext import ConvFFN, SepMixer
from .dcconv import DCConv
from .dcconv_export import exporting
from .settings import operator_settings

__all__ = ["optimize_for_inference", "InferenceGELU", "InferenceStarReLU", "SlicedConvFFN", "PointwiseConv"]

FFN_SLICE_BYTES = 16 << 20


def _in_place_allowed() -> bool:
    """No autograd (its backward needs the input), no compiler tracing, no exporting (graphs stay plain)."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or exporting())


class InferenceStarReLU(StarReLU):
    """StarReLU (scale * relu(x) ** 2 + bias), computed in place on `x` when `_in_place_allowed`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _in_place_allowed():
            return super().forward(x)
        return x.relu_().square_().mul_(self.scale).add_(self.bias)


class InferenceGELU(nn.GELU):
    """nn.GELU, in place when `_in_place_allowed`, in onnxruntime's fused op order when exporting for ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting() and self.approximate == "none" and operator_settings().export_target == "onnx":
            return x * (torch.erf(x / math.sqrt(2.0)) + 1.0) * 0.5
        if not _in_place_allowed():
            return F.gelu(x, approximate=self.approximate)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


class SlicedConvFFN(ConvFFN):
    """ConvFFN over slices of the batch without autograd; the same submodules (and parameter names)."""

    def __init__(self, ffn: ConvFFN, slice_bytes: int = FFN_SLICE_BYTES):
        nn.Module.__init__(self)
        self.fc1, self.dwconv, self.act, self.fc2 = ffn.fc1, ffn.dwconv, ffn.act, ffn.fc2
        self.slice_bytes = slice_bytes
        self.train(ffn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_slice = self.images_per_slice(x)
        if per_slice is None:
            return ConvFFN.forward(self, x)
        return torch.cat([ConvFFN.forward(self, part) for part in x.split(per_slice)])

    def images_per_slice(self, x: torch.Tensor) -> int | None:
        """Images per slice under `slice_bytes`, or None for the whole batch (also with autograd, a symbolic batch
        size, which would pin compiled graphs to it, and while exporting)."""
        batch = x.shape[0]
        if self.slice_bytes <= 0 or torch.is_grad_enabled() or not isinstance(batch, int) or exporting():
            return None
        image_bytes = x.shape[1:-1].numel() * self.fc1.out_features * x.element_size()  # H * W * 4C
        per_slice = max(1, self.slice_bytes // image_bytes)
        return per_slice if per_slice < batch else None


class PointwiseConv(nn.Linear):
    """nn.Linear over the channels of a (B, H, W, C) map, as a 1x1 convolution of its NCHW view where that helps:
    oneDNN's convolution called by name in eager CPU inference (`F.conv2d` would hand a 1x1 convolution with one
    thread and a small batch to a slow fallback); `F.conv2d` while exporting (ONNX files keep their Conv nodes) and
    under torch.compile in float32 on the CPU (Inductor hands a convolution to oneDNN, a linear to MKL's GEMM:
    B2's compiled inference took 1,701 against 953 ms at batch 32 and 61 against 46 ms at batch 1 on the
    project's AMD EPYC; in bfloat16 the linear was the faster one); otherwise (autograd, other devices and
    dtypes) the plain Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            return super().forward(x)
        if exporting() or (torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32):
            return F.conv2d(x.permute(0, 3, 1, 2), self.weight[:, :, None, None], self.bias).permute(0, 2, 3, 1)
        if torch.compiler.is_compiling() or not _onednn_direct(x):
            return super().forward(x)
        x = x.permute(0, 3, 1, 2)
        x = torch.mkldnn_convolution(x, self.weight[:, :, None, None], self.bias, (0, 0), (1, 1), (1, 1), 1)
        return x.permute(0, 2, 3, 1)


def _onednn_direct(x: torch.Tensor) -> bool:
    """Eager CPU inference in float32 or bfloat16 where PyTorch has oneDNN."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available())


def _as_pointwise_conv(linear: nn.Linear) -> PointwiseConv:
    conv = PointwiseConv(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    conv.weight, conv.bias = linear.weight, linear.bias
    return conv


def _activation(act: nn.Module) -> nn.Module:
    if isinstance(act, StarReLU) and not isinstance(act, InferenceStarReLU):
        faster = InferenceStarReLU(device="meta")
        faster.scale, faster.bias = act.scale, act.bias
        return faster
    if type(act) is nn.GELU:
        return InferenceGELU(approximate=act.approximate)
    return act


def optimize_for_inference(model: nn.Module, *, ffn_slice_bytes: int = FFN_SLICE_BYTES,
                           pointwise_conv: bool = True) -> nn.Module:
    """The inference forms above swapped into every block of `model` (in place); returns the model in eval mode.

    Outputs equal the plain model's (the tests compare them); the state dict is unchanged. Applied by `eval`,
    `predict` and `export`; call it on a model you only run for inference.
    """
    for module in list(model.modules()):
        if isinstance(module, DCConv):
            module.custom_ops = False
        if isinstance(module, SepMixer):
            module.act1 = _activation(module.act1)
        if isinstance(module, ConvFFN):
            module.act = _activation(module.act)
        if pointwise_conv and isinstance(module, (SepMixer, ConvFFN)):
            for name in ("pwconv1", "pwconv2", "fc1", "fc2"):
                layer = getattr(module, name, None)
                if type(layer) is nn.Linear:
                    setattr(module, name, _as_pointwise_conv(layer))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ConvFFN:
                setattr(parent, name, SlicedConvFFN(child, ffn_slice_bytes))
            elif isinstance(child, SlicedConvFFN):
                child.slice_bytes = ffn_slice_bytes
    return model.eval()
