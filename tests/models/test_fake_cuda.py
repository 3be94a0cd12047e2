"""What can be checked about CUDA without a GPU: the model's forward on fake tensors of device "cuda".

FakeTensorMode runs every operator's shape and device logic without data, and raises on any read of a value
on the host (`.item()`, `nonzero`, a data-dependent branch): so a forward that completes here has no device
mismatch and no host synchronisation on a GPU. The backward needs a real CUDA context (the autograd engine
asks for one), so the training step is checked up to its loss. In eager mode DCConv runs as its two custom
ops, so what is checked of them here is their fake (shape) functions; their CUDA kernels' own freedom
from host reads is checked on a GPU (benchmarks/gpu_check.py, section sync).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from dccnext_cli.models.dccnext import create_dccnext
from dccnext_cli.models.settings import use_operator_settings


def _forward_loss(kernels: str, train: bool, **settings) -> torch.Tensor:
    with FakeTensorMode(allow_non_fake_inputs=False), torch.device("cuda"):
        model = create_dccnext("b0", drop_path_rate=0.1).train(train)
        images = torch.randn(2, 3, 64, 64)
        labels = torch.randint(0, 1000, (2,))
        with use_operator_settings(backend=kernels, **settings):
            logits = model(images)
        assert logits.device.type == "cuda" and logits.shape == (2, 1000)
        loss = F.cross_entropy(logits, labels)
        assert loss.device.type == "cuda"
        return loss


@pytest.mark.parametrize("kernels", ["reference", "inductor", "triton"])
@pytest.mark.parametrize("train", [True, False])
def test_forward_and_loss_on_fake_cuda_read_nothing_on_the_host(kernels, train):
    _forward_loss(kernels, train)


def test_the_check_sees_a_host_read():
    """A forward that branches on a value, as a host read slipped into the model would, is refused."""
    with FakeTensorMode(allow_non_fake_inputs=False), torch.device("cuda"):
        x = torch.randn(4)
        with pytest.raises(DataDependentOutputException):
            bool(x.sum() > 0)
